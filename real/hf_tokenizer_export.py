"""Write a model's tokenizer as a Hugging Face tokenizer directory (tokenizer.json +
tokenizer_config.json + special_tokens_map.json), so benchmark clients that load the served
model's tokenizer with `AutoTokenizer.from_pretrained(DIR)` (GuideLLM, vllm bench) count tokens
exactly as the engines do.

SmolLM2's tokenizer is already a `tokenizers.Tokenizer` rebuilt from the GGUF (an HF checkpoint's
is its own tokenizer.json): it is saved as is, with the GGUF's chat template. The tiny model's byte tokenizer becomes a byte-level BPE with no
merges whose 256 ids are the byte values, which encodes and decodes exactly like it.
"""
from __future__ import annotations

import json
from pathlib import Path

from real.tokenizer import ByteTokenizer


def export_hf_tokenizer(tokenizer, directory: str | Path, model_max_length: int) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(tokenizer, ByteTokenizer):
        tk, template = _byte_level_identity(), None
    elif hasattr(tokenizer, "_tk"):  # GGUF BPE, or an HF checkpoint's own tokenizer.json
        tk, template = tokenizer._tk, getattr(tokenizer, "chat_template", None)
    else:
        raise TypeError(f"cannot export a {type(tokenizer).__name__} as a Hugging Face tokenizer")
    tk.save(str(d / "tokenizer.json"))

    def token(i: int | None) -> str | None:
        return tk.id_to_token(i) if i is not None else None

    special = {k: v for k, v in (("bos_token", token(tokenizer.bos_token_id)),
                                 ("eos_token", token(tokenizer.eos_token_id))) if v is not None}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model_max_length,
              "add_bos_token": bool(getattr(tokenizer, "add_bos", False)), "clean_up_tokenization_spaces": False,
              "chat_template": template or _chatml_template(), **special}
    (d / "tokenizer_config.json").write_text(json.dumps(config, indent=1) + "\n")
    (d / "special_tokens_map.json").write_text(json.dumps(special, indent=1) + "\n")
    return d


def _byte_level_identity():
    """A `tokenizers` BPE whose ids are the UTF-8 byte values (GPT-2's byte-to-character map)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {ch: b for b, ch in _bytes_to_unicode().items()}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    return tk


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map of the 256 bytes to printable characters (what ByteLevel uses)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    out, extra = {}, 0
    for b in range(256):
        if b in printable:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


def _chatml_template() -> str:
    """real.tokenizer.chatml (what the byte tokenizer's apply_chat_template renders) as Jinja."""
    return ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
