"""A ModelSpec from a Hugging Face `config.json`, so users can name the model they serve.

Dense decoder families with the shape the simulator models (GQA attention, gated MLP,
RMSNorm): Llama 2/3.x, Mistral, Qwen2 and Qwen3 (QK-norm). Mixture-of-experts and other
architectures are refused by name rather than priced as if they were dense.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sim.hardware import ModelSpec

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
_DTYPES = {"bfloat16": "bf16", "float16": "bf16", "float32": "bf16"}  # priced at 16-bit serving precision
_MOE_KEYS = ("num_experts", "num_local_experts", "n_routed_experts")


class HFConfigError(ValueError):
    """A config.json the simulator cannot turn into a model spec; the message names the field."""


def model_spec_from_hf(config: dict[str, Any], name: str, source: str = "config.json") -> ModelSpec:
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise HFConfigError(f"{source}: model_type {model_type!r} is not supported; "
                            f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    if any(config.get(k) for k in _MOE_KEYS):
        raise HFConfigError(f"{source}: mixture-of-experts models are not supported")
    required = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "vocab_size")
    missing = [k for k in required if k not in config]
    if missing:
        raise HFConfigError(f"{source}: missing field(s) {', '.join(missing)}")
    dtype = config.get("torch_dtype") or config.get("dtype") or "bfloat16"
    if dtype not in _DTYPES:
        raise HFConfigError(f"{source}: torch_dtype {dtype!r} not understood; one of {', '.join(_DTYPES)}")
    fields = {
        "name": name,
        "num_layers": config["num_hidden_layers"],
        "hidden_size": config["hidden_size"],
        "num_heads": config["num_attention_heads"],
        "num_kv_heads": config.get("num_key_value_heads") or config["num_attention_heads"],
        "head_dim": config.get("head_dim"),
        "ffn_size": config["intermediate_size"],
        "vocab_size": config["vocab_size"],
        "max_context": config.get("max_position_embeddings", 131072),
        "tied_embeddings": bool(config.get("tie_word_embeddings", False)),
        "qk_norm": model_type == "qwen3",
        "dtype": _DTYPES[dtype],
    }
    try:
        return ModelSpec.model_validate(fields)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise HFConfigError(f"{source}: {problems}") from None


def load_hf_config(path: str | Path) -> ModelSpec:
    """A config.json file, or a model directory holding one; the model is named after the directory."""
    from sim.profile import read_json

    path = Path(path)
    file = path / "config.json" if path.is_dir() else path
    data = read_json(file, "model config", HFConfigError)
    if not isinstance(data, dict):
        raise HFConfigError(f"{file}: expected a JSON object")
    name = data.get("_name_or_path") or file.resolve().parent.name
    return model_spec_from_hf(data, str(name).rstrip("/").split("/")[-1], source=str(file))
