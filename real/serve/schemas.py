"""What clients send: the OpenAI completion and chat request bodies, validated at the edge.

Fields a client may send that this server does not implement are accepted only at their neutral
value (n=1, echo off, no logprobs, zero penalties); anything else is a 400 naming the field, never a
silent change of meaning. Unknown extra fields are ignored, as most OpenAI-compatible servers do.
`ignore_eos` and `stop_token_ids` are the usual vLLM extensions (`extra_body` in the openai client).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

# What the engines can represent: seeds are 64-bit signed as in the OpenAI API, token ids 31-bit.
INT64 = 2**63
TokenId = Annotated[int, Field(ge=0, lt=2**31)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM's: every chunk carries the usage so far


def unrepresentable_text(value: Any, where: str = "") -> str | None:
    """Where in a parsed JSON value a string holds a lone surrogate (valid JSON, `"\\ud800"`, but
    not Unicode text: no tokenizer can encode it), or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where or "body"
    elif isinstance(value, dict):
        for k, v in value.items():
            found = unrepresentable_text(k, where) or unrepresentable_text(v, f"{where}.{k}" if where else str(k))
            if found:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = unrepresentable_text(v, f"{where}.{i}" if where else str(i))
            if found:
                return found
    return None


def refuse_unrepresentable_text(data: Any) -> Any:
    where = unrepresentable_text(data)
    if where:
        raise ValueError(f"{where} holds a lone surrogate (\\ud800-\\udfff), which is not valid Unicode text")
    return data


class SamplingFields(BaseModel):
    """What completion and chat requests share."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model: str
    max_tokens: int | None = None
    temperature: float | None = Field(None, ge=0, le=2)  # OpenAI's default is 1
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=-INT64, lt=INT64)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    presence_penalty: float | None = 0.0
    frequency_penalty: float | None = 0.0
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    ignore_eos: bool = False
    stop_token_ids: list[TokenId] = Field(default=[], max_length=1024)

    @model_validator(mode="before")
    @classmethod
    def _unicode_text(cls, data: Any) -> Any:
        return refuse_unrepresentable_text(data)

    @field_validator("max_tokens")
    @classmethod
    def _max_tokens(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"max_tokens must be at least 1, got {v}")
        return v

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> list[str]:
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4:
            raise ValueError(f"at most 4 stop sequences, got {len(stops)}")
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must not be empty")
        return stops

    @field_validator("n", "presence_penalty", "frequency_penalty", "logit_bias")
    @classmethod
    def _sampling_neutral(cls, v: Any, info: ValidationInfo) -> Any:
        return _unsupported_unless(v, info)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        return self.include_usage and self.stream_options.continuous_usage_stats


class CompletionRequest(SamplingFields):
    prompt: str | list[TokenId] | list[str] | list[list[TokenId]]
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: Any) -> str | list[int]:
        """One prompt per request: a string or a list of token ids (a batch of one is unwrapped)."""
        if isinstance(v, list) and v and isinstance(v[0], (str, list)):
            if len(v) != 1:
                raise ValueError(f"batched prompts are not supported: send one prompt per request, got {len(v)}")
            v = v[0]
        if len(v) == 0:
            raise ValueError("prompt is empty")
        return v

    @field_validator("echo", "logprobs", "best_of", "suffix")
    @classmethod
    def _completion_neutral(cls, v: Any, info: ValidationInfo) -> Any:
        return _unsupported_unless(v, info)


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None  # the newer name of max_tokens
    logprobs: bool = False
    tools: list[dict] | None = None
    response_format: dict | None = None

    @field_validator("max_completion_tokens")
    @classmethod
    def _max_completion_tokens(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"max_completion_tokens must be at least 1, got {v}")
        return v

    @field_validator("logprobs", "tools")
    @classmethod
    def _chat_neutral(cls, v: Any, info: ValidationInfo) -> Any:
        return _unsupported_unless(v, info)

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, v: dict | None) -> dict | None:
        if v and v.get("type", "text") != "text":
            raise ValueError(f"response_format {v.get('type')!r} is not supported by this server (only 'text')")
        return v

    @model_validator(mode="after")
    def _newer_max_tokens(self) -> ChatCompletionRequest:
        if self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        return self


_NEUTRAL_NUMBER = {"n": 1, "best_of": 1, "presence_penalty": 0, "frequency_penalty": 0}


def _unsupported_unless(value: Any, info: ValidationInfo) -> Any:
    """Accept a field this server does not implement only at the value that means 'not used'."""
    name = info.field_name
    if name in _NEUTRAL_NUMBER:
        neutral = value is None or (not isinstance(value, bool) and value == _NEUTRAL_NUMBER[name])
    else:
        neutral = value is None or value is False or value in ("", [], {})
    if not neutral:
        raise ValueError(f"{name}={value!r} is not supported by this server")
    return value


class TokenizeRequest(BaseModel):
    """POST /tokenize, as vLLM takes it: a completion `prompt` or chat `messages`."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_generation_prompt: bool = True

    @model_validator(mode="before")
    @classmethod
    def _unicode_text(cls, data: Any) -> Any:
        return refuse_unrepresentable_text(data)

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        return self


class DetokenizeRequest(BaseModel):
    """POST /detokenize: token ids back to text."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    tokens: list[TokenId] = Field(max_length=1 << 20)


class StrategyChange(BaseModel):
    """POST /admin/strategy: a new strategy (its params default to its own defaults), or new
    params for the one in force (`name` omitted). Params replace, never merge."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    params: dict[str, Any] | None = None
