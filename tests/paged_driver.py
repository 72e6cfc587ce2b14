"""Test helper: drives sequences through one paged KV pool the way an engine would (any mix
of prefill chunks and decode steps in one forward, pages from a shuffled free list, prefix
pages shared with another sequence), recording every sampled logits row. Tests compare the
rows it records against sequences run alone."""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from real.attention import build_metadata
from real.model import LlamaModel


@dataclass
class Seq:
    prompt: list[int]
    ctx: int = 0  # tokens whose K/V are in `pages`
    pages: list[int] = field(default_factory=list)
    generated: list[int] = field(default_factory=list)
    logits: list[torch.Tensor] = field(default_factory=list)

    @property
    def known(self) -> list[int]:
        return self.prompt + self.generated


class Driver:
    def __init__(self, model: LlamaModel, page_size: int = 4, num_pages: int = 256, seed: int = 0):
        self.model, self.page_size = model, page_size
        self.pool = model.allocate_kv_pool(num_pages, page_size)
        self.free = list(range(num_pages))
        random.Random(seed).shuffle(self.free)
        self.seqs: dict[str, Seq] = {}

    def add(self, key: str, prompt: list[int], prefix_from: str | None = None, prefix_len: int = 0) -> None:
        """New sequence; with prefix_from, reuse that sequence's first prefix_len tokens of
        KV (whole pages, shared not copied), as a prefix-cache hit or received pages would."""
        seq = Seq(list(prompt))
        if prefix_from is not None:
            src = self.seqs[prefix_from]
            assert prefix_len % self.page_size == 0 and src.ctx >= prefix_len
            assert src.known[:prefix_len] == prompt[:prefix_len]
            seq.pages, seq.ctx = src.pages[: prefix_len // self.page_size], prefix_len
        self.seqs[key] = seq

    def step(self, work: dict[str, int]) -> None:
        """One forward: sequence key -> max new tokens this step (its next chunk or decode)."""
        specs, ids, sampled = [], [], []
        for key, chunk in work.items():
            s = self.seqs[key]
            new = s.known[s.ctx:][:chunk]
            ctx = s.ctx + len(new)
            while len(s.pages) * self.page_size < ctx:
                s.pages.append(self.free.pop())
            sample = ctx == len(s.known)
            specs.append((len(new), ctx, s.pages, sample))
            ids.extend(new)
            s.ctx = ctx
            if sample:
                sampled.append(s)
        meta = build_metadata(specs, self.page_size, self.model.device)
        logits = self.model(torch.tensor(ids, device=self.model.device), meta.positions, meta, self.pool)
        for s, row in zip(sampled, logits):
            s.logits.append(row.clone())
            s.generated.append(int(row.argmax()))

    def run(self, n_gen: int, chunk: dict[str, int] | None = None, big: int = 10**9) -> None:
        """Step every unfinished sequence together until each has n_gen generated tokens."""
        chunk = chunk or {}
        while True:
            work = {k: chunk.get(k, big) for k, s in self.seqs.items() if len(s.generated) < n_gen}
            if not work:
                return
            self.step(work)
