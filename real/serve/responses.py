"""The OpenAI response bodies: completions and chat, whole or as server-sent-event chunks.

One `Shape` per request knows its endpoint's object names, so the generation code is the same for
both endpoints. `system_fingerprint` names the strategy object that served the request
(`<name>-v<version>`), which is what the field is for: a change of backend configuration that can
change outputs. The same is in the `x-microserving-strategy` response headers.
"""
from __future__ import annotations

import json


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def sse(data: dict) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


class Shape:
    def __init__(self, kind: str, id: str, model: str, created: int, fingerprint: str) -> None:
        self.chat = kind == "chat"
        self.head = {"id": id, "created": created, "model": model, "system_fingerprint": fingerprint}

    def whole(self, text: str, finish_reason: str | None, use: dict) -> dict:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": finish_reason}
            return {**self.head, "object": "chat.completion", "choices": [choice], "usage": use}
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        return {**self.head, "object": "text_completion", "choices": [choice], "usage": use}

    def chunk(self, text: str, finish_reason: str | None, role: bool = False, use: dict | None = None) -> dict:
        if self.chat:
            delta = {"role": "assistant", "content": text} if role else ({"content": text} if text else {})
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return {**self.head, "object": "chat.completion.chunk", "choices": [choice], "usage": use}
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        return {**self.head, "object": "text_completion", "choices": [choice], "usage": use}

    def usage_chunk(self, use: dict) -> dict:
        """The extra last chunk of `stream_options: {"include_usage": true}`: no choices, the usage."""
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self.head, "object": obj, "choices": [], "usage": use}
