"""Requests built from per-request lengths, a chunk at a time, so a run never holds every prompt.

A workload of a million chat requests has about a billion prompt tokens: 4 GB as int32. The
simulator needs a prompt only from its arrival until it is served, so requests are built in
arrival order, CHUNK at a time, each chunk's own tokens drawn from that chunk's own random
stream; a chunk's tokens are freed once its last request is dropped. Iterating twice gives the
same requests, and so does materializing them all (Workload.from_lengths), since chunk c's
tokens depend only on the seed and c.

Shared prefixes (``prefix_ids``: hash ids of ``block_size``-token blocks at the start of a
prompt, as in Mooncake-style traces) come from one table of blocks drawn up front: equal ids
give equal tokens, so shared blocks hit a prefix cache. Tokens past the blocks are the
request's own. Requests are named ``r0, r1, ...`` in arrival order.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import chain

import numpy as np

from core_api.types import Request, SamplingParams

CHUNK = 4096  # requests per chunk of prompt tokens


class RequestStream:
    def __init__(self, arrivals: Sequence[float], prompt_lens: Sequence[int], output_lens: Sequence[int],
                 rng: np.random.Generator, vocab_size: int = 32000,
                 prefix_ids: Sequence[Sequence[int]] | None = None, block_size: int = 512,
                 temperature: float = 0.0) -> None:
        t = np.asarray(arrivals, dtype=np.float64)
        plen = np.asarray(prompt_lens, dtype=np.int64)
        olen = np.asarray(output_lens, dtype=np.int64)
        if not t.shape == plen.shape == olen.shape or t.ndim != 1:
            raise ValueError(f"arrivals, prompt_lens, output_lens differ in shape: "
                             f"{t.shape}, {plen.shape}, {olen.shape}")
        for what, arr in (("prompt_len", plen), ("output_len", olen)):
            if arr.size and arr.min() < 1:
                raise ValueError(f"{what} must be >= 1; request {int(np.argmin(arr))} has {int(arr.min())}")
        if not np.isfinite(t).all():
            raise ValueError("arrival times must be finite")
        ids: Sequence[Sequence[int]] = prefix_ids if prefix_ids is not None else [()] * t.size
        if len(ids) != t.size:
            raise ValueError(f"prefix_ids has {len(ids)} entries for {t.size} requests")
        self.order = np.argsort(t, kind="stable")  # arrival rank -> index in the given arrays
        self.arrivals, self.prompt_lens, self.output_lens = t, plen, olen
        self.prefix_ids, self.temperature, self.vocab_size = ids, temperature, vocab_size
        index = {h: k for k, h in enumerate(dict.fromkeys(chain.from_iterable(ids)))}
        self._block_row = index
        self._blocks = rng.integers(0, vocab_size, size=(len(index), block_size), dtype=np.int32)
        self.covered = np.minimum(np.fromiter(map(len, ids), np.int64, t.size) * block_size, plen)
        self._chunk_seeds = rng.integers(0, 2**63, size=-(-t.size // CHUNK), dtype=np.int64)

    def __len__(self) -> int:
        return int(self.arrivals.size)

    @property
    def arrival_times(self) -> np.ndarray:
        """In arrival order."""
        return self.arrivals[self.order]

    def __iter__(self) -> Iterator[Request]:
        for c, seed in enumerate(self._chunk_seeds.tolist()):
            yield from self._chunk(c, seed)

    def __getitem__(self, rank: int) -> Request:
        """The request of this arrival rank (building only its chunk)."""
        if not -len(self) <= rank < len(self):
            raise IndexError(f"request {rank} of {len(self)}")
        c, k = divmod(rank % len(self), CHUNK)
        return self._chunk(c, int(self._chunk_seeds[c]))[k]

    def _chunk(self, c: int, seed: int) -> list[Request]:
        ranks = range(c * CHUNK, min((c + 1) * CHUNK, len(self)))
        idx = self.order[ranks.start: ranks.stop]
        own = self.prompt_lens[idx] - self.covered[idx]
        ends = np.cumsum(own)
        tokens = np.random.default_rng(seed).integers(0, self.vocab_size, size=int(ends[-1]), dtype=np.int32)
        tokens.flags.writeable = False
        requests = []
        for rank, i, end, n in zip(ranks, idx.tolist(), ends.tolist(), own.tolist()):
            prompt = tokens[end - n: end]
            covered = int(self.covered[i])
            if covered:
                head = self._blocks[[self._block_row[h] for h in self.prefix_ids[i]]].ravel()[:covered]
                prompt = np.concatenate([head, prompt])
                prompt.flags.writeable = False
            sampling = SamplingParams(max_tokens=int(self.output_lens[i]), temperature=self.temperature,
                                      ignore_eos=True)
            requests.append(Request(f"r{rank}", prompt, sampling, float(self.arrivals[i]),
                                    prefix_group=int(self.prefix_ids[i][0]) if covered else None,
                                    prefix_len=covered))
        return requests
