"""OpenAI request -> core Request: the model check, the prompt's token ids, sampling, limits.

The context limit is checked here, before any engine sees the request, because the OpenAI API
promises a 400 naming the limit, and because a request no engine can ever hold would otherwise
fail deep inside a strategy (after a prefill engine has already worked on it). An engine holds
`min(max_model_len, num_pages * page_size)` tokens (prompt + max_tokens, as the shared scheduler
counts them); a request is refused only when it fits no live engine.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from core_api.types import Request, SamplingParams
from real.serve.errors import APIError
from real.serve.schemas import ChatCompletionRequest, CompletionRequest, SamplingFields


def engine_context_limit(engine) -> int:
    """Tokens (prompt + output) one engine can hold: its context length and its KV pages."""
    load = engine.load()
    limit = load.total_pages * load.page_size
    max_len = (getattr(engine, "info", None) or {}).get("max_model_len")
    return min(limit, max_len) if max_len else limit


@dataclass(slots=True)
class Prepared:
    """An accepted request in engine terms, plus what the response needs."""

    req: Request
    stop: list[str]
    model: str
    arrival: float  # time.monotonic() when the HTTP request arrived
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def prompt_tokens(self) -> int:
        return self.req.prompt_len


class Frontend:
    """The served model as clients see it: its names, its tokenizer, its context limit."""

    def __init__(self, tokenizer, served_name: str, engines: list, aliases: tuple[str, ...] = (),
                 default_max_tokens: int = 512, vocab_size: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.served_name = served_name
        self.names = {served_name, *aliases}
        self.engines = engines
        self.default_max_tokens = default_max_tokens
        self.vocab_size = vocab_size or getattr(tokenizer, "vocab_size", None)
        self.eos_token_id = getattr(tokenizer, "eos_token_id", None)

    def check_model(self, name: str) -> None:
        if name not in self.names:
            raise APIError(404, f"The model `{name}` does not exist; this server serves `{self.served_name}`.",
                           param="model", code="model_not_found")

    def context_limit(self) -> int:
        live = [e for e in self.engines if getattr(e, "down", None) is None] or self.engines
        return max(engine_context_limit(e) for e in live)

    # -- prompts ----------------------------------------------------------------------------
    def completion_ids(self, body: CompletionRequest) -> list[int]:
        if isinstance(body.prompt, str):
            return self.tokenizer.encode(body.prompt)
        ids = list(body.prompt)
        bad = [t for t in ids if not 0 <= t < (self.vocab_size or 2**31)]
        if bad:
            raise APIError(400, f"token ids outside the vocabulary (size {self.vocab_size}): {bad[:5]}",
                           param="prompt", code="invalid_value")
        return ids

    def chat_ids(self, body: ChatCompletionRequest) -> list[int]:
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        return self.tokenizer.encode(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True))

    # -- sampling and limits ----------------------------------------------------------------
    def prepare(self, body: SamplingFields, ids: list[int], arrival: float, kind: str) -> Prepared:
        """Check the context limit and build the Request (id `cmpl-...` or `chatcmpl-...`)."""
        param = "messages" if kind == "chat" else "prompt"
        if not ids:
            raise APIError(400, "the prompt is empty after tokenization", param=param, code="invalid_value")
        limit, n = self.context_limit(), len(ids)
        if body.max_tokens is not None:
            max_tokens = body.max_tokens
        elif kind == "chat":  # OpenAI: as much as fits; here also at most the operator's default
            max_tokens = min(self.default_max_tokens, limit - n)
        else:
            max_tokens = 16  # the completions API's documented default
        if n + max(max_tokens, 1) > limit:
            raise APIError(400, f"This model's maximum context length is {limit} tokens. However, you requested "
                           f"{n + max(max_tokens, 1)} tokens ({n} in the {param}, {max(max_tokens, 1)} in the "
                           "completion). Please reduce the length of the prompt or of max_tokens.",
                           param=param, code="context_length_exceeded")
        stop_ids = list(body.stop_token_ids)
        sampling = SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            seed=body.seed, stop_token_ids=tuple(stop_ids), ignore_eos=body.ignore_eos)
        prefix = "chatcmpl" if kind == "chat" else "cmpl"
        req = Request(f"{prefix}-{uuid.uuid4().hex}", np.asarray(ids, dtype=np.int32), sampling)
        return Prepared(req=req, stop=list(body.stop or []), model=body.model, arrival=arrival)
