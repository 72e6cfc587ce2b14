"""How users name models: Hugging Face ids of fine-tunes and the local hub cache.

A run's meta.json or a user's config names a model the way its checkpoint is published
("meta-llama/Meta-Llama-3.1-8B-Instruct", "mistralai/Mistral-7B-Instruct-v0.3",
"neuralmagic/Llama-3.1-8B-Instruct-FP8"). Fine-tunes share their base model's shape, so the name
resolves to the base preset with the fine-tune's words dropped; a checkpoint whose config.json is
in the local Hugging Face hub cache (where vLLM downloaded it) is read from there exactly.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

# Words of a checkpoint name that say how it was tuned or packaged, not what shape it has.
_TUNING_WORDS = {"instruct", "chat", "hf", "it", "base", "fp8", "dynamic"}


def repo_id(name: str) -> str:
    """The Hugging Face repo id a name stands for: itself, or the `org/name` of a path into a hub
    cache (.../models--meta-llama--Llama-3.1-8B/snapshots/<hash>, as vLLM logs a local model)."""
    match = re.search(r"models--([^/]+?)--([^/]+)", name)
    return f"{match.group(1)}/{match.group(2)}" if match else name


def _words(name: str) -> list[str]:
    return [w for w in re.split(r"[-_]", name.lower()) if w]


def _checkpoint_words(name: str) -> list[str]:
    """The words of the checkpoint's own name (the repo id's last part)."""
    return _words(repo_id(name).rstrip("/").rsplit("/", 1)[-1])


def _shape_words(name: str) -> list[str]:
    words = _checkpoint_words(name)
    if words[:1] == ["meta"]:  # Meta-Llama-3.1-8B is Llama-3.1-8B
        words = words[1:]
    return [w for w in words if w not in _TUNING_WORDS]


def preset_for(name: str, presets: Iterable[str]) -> str | None:
    """The preset a (possibly fine-tuned) checkpoint name stands for, if one matches exactly
    once its tuning words are dropped."""
    wanted = _shape_words(name)
    if not wanted:
        return None
    return next((p for p in presets if _words(p) == wanted), None)


def says_fp8(name: str) -> bool:
    """The checkpoint's name marks FP8 weights (e.g. Llama-3.1-8B-Instruct-FP8)."""
    return "fp8" in _checkpoint_words(name)


def hub_cache_dir() -> Path:
    """Where the Hugging Face hub keeps downloads (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(home) / "hub"


def hub_cache_config(name: str) -> Path | None:
    """config.json of a Hugging Face repo id (or a path into a hub cache) in the local hub cache
    (newest snapshot), if there."""
    repo = repo_id(name)
    if repo.count("/") != 1 or ".." in repo:
        return None
    snapshots = hub_cache_dir() / f"models--{repo.replace('/', '--')}" / "snapshots"
    configs = sorted(snapshots.glob("*/config.json"), key=lambda p: p.stat().st_mtime) if snapshots.is_dir() else []
    return configs[-1] if configs else None
