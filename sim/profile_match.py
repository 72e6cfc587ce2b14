"""Refuse a fitted profile measured for another setup than the engine it would time.

A profile's coefficients are only meaningful for the model shape, page size, tensor-parallel
degree and dtype it was measured with; silently using one for another setup gives numbers
that look plausible and are wrong. Models are compared by shape, not name (the real backend
calls its test model "tiny", the simulator's preset is "tiny-llama": same network). A profile
measured in fp32/fp16 (CPU) cannot clash with a sim dtype, which is only ever bf16 or fp8.
"""
from __future__ import annotations

from sim.config import EngineConfig
from sim.hardware import MODEL_PRESETS, ModelSpec

SHAPE_FIELDS = ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim", "ffn_size", "vocab_size",
                "tied_embeddings")


class ProfileMismatch(ValueError):
    """The profile was measured for a different model, page size, TP degree or dtype."""


def _profile_model(profile) -> ModelSpec | None:
    if isinstance(profile.model, ModelSpec):
        return profile.model
    return MODEL_PRESETS.get(profile.model)


def mismatches(profile, engine: EngineConfig) -> list[str]:
    """Human-readable differences between what the profile measured and what the engine runs."""
    out = []
    model = engine.model_spec()
    measured = _profile_model(profile)
    if measured is None:  # a name the simulator has no preset for: only the name can be compared
        if profile.model_name != model.name:
            out.append(f"model {profile.model_name!r} != {model.name!r}")
    else:
        diffs = [f"{f} {getattr(measured, f)} != {getattr(model, f)}" for f in SHAPE_FIELDS
                 if getattr(measured, f) != getattr(model, f)]
        if diffs:
            out.append(f"model {measured.name!r} != {model.name!r} ({', '.join(diffs)})")
    if profile.page_size != engine.page_size:
        out.append(f"page_size {profile.page_size} != {engine.page_size}")
    if profile.tp != engine.tp:
        out.append(f"tp {profile.tp} != {engine.tp}")
    if profile.dtype in ("bf16", "fp8") and profile.dtype != model.dtype:
        out.append(f"dtype {profile.dtype} != {model.dtype}")
    return out


def check_profile_matches(profile, engine: EngineConfig, source: str = "profile",
                          engine_id: str | None = None) -> None:
    """Raise ProfileMismatch naming every difference (profile value != engine value)."""
    diffs = mismatches(profile, engine)
    if diffs:
        who = f"engine {engine_id}" if engine_id else "the engine"
        raise ProfileMismatch(f"{source}: cost profile does not match {who} (profile != engine): "
                              f"{'; '.join(diffs)}")


def check_roofline_gpu(profile, engine: EngineConfig, source: str = "profile", engine_id: str | None = None) -> None:
    """A roofline fitted for one GPU prices any model and TP on that GPU, but no other GPU."""
    gpu = engine.gpu if isinstance(engine.gpu, str) else engine.gpu.name
    if profile.gpu is not None and profile.gpu != gpu:
        who = f"engine {engine_id}" if engine_id else "the engine"
        raise ProfileMismatch(f"{source}: roofline fitted for GPU {profile.gpu!r}, {who} runs on {gpu!r}")
