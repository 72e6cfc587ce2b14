"""Per-layer vLLM profiles (LLMServingSim's profiler layout) -> layer profiles (sim.layer_profile).

Input: a bundle directory with `meta.yaml` and one `tp<N>/` folder per tensor-parallel degree
holding `dense.csv` (layer,tokens,time_us), `attention.csv`
(prefill_chunk,kv_prefill,n_decode,kv_decode,time_us) and `per_sequence.csv`
(layer,sequences,time_us). The profiler timed a one-layer model with the real layer shapes in
eager mode, so a step is composed here as the model runs it: embedding and the final norm once,
every other dense operator once per decoder layer (RMSNorm twice: before attention and before
the MLP), attention once per layer, LM head and sampler per sampled sequence.
"""
from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

from calibration.importers.holdout import curve_holdout_mape, grid_holdout_mape
from core_api.config_file import load_yaml
from sim.hardware import GPU_PRESETS, get_model, gpu_for_device
from sim.layer_profile import AttentionGrid, Curve, LayerProfile, ProfileSource
from sim.profile import ProfileError

PER_STEP_OPS = ("embedding", "final_layernorm")
OPS_TWICE_PER_LAYER = ("layernorm",)  # input_layernorm and post_attention_layernorm
SOURCE_NAME = "vLLM per-layer profile (LLMServingSim profiler layout)"
ATTENTION_COLUMNS = ("prefill_chunk", "kv_prefill", "n_decode", "kv_decode", "time_us")


def _read_csv(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise ProfileError(f"{path}: missing column(s) {', '.join(missing)}")
            rows = list(reader)
    except OSError as e:
        raise ProfileError(f"{path}: cannot read: {e.strerror}") from None
    except (csv.Error, UnicodeDecodeError) as e:
        raise ProfileError(f"{path}: not CSV text: {e}") from None
    if not rows:
        raise ProfileError(f"{path}: no rows")
    return rows


def _number(row: dict[str, str], col: str, path: Path, line: int) -> float:
    try:
        v = float(row[col])
    except (TypeError, ValueError):
        raise ProfileError(f"{path}:{line}: column {col} is not a number: {row[col]!r}") from None
    if not v >= 0:  # also rejects NaN
        raise ProfileError(f"{path}:{line}: column {col} must be >= 0, got {row[col]!r}")
    return v


def _curves(path: Path, x_col: str) -> dict[str, Curve]:
    points: dict[str, dict[float, float]] = {}
    for i, row in enumerate(_read_csv(path, ("layer", x_col, "time_us")), start=2):
        points.setdefault(row["layer"], {})[_number(row, x_col, path, i)] = _number(row, "time_us", path, i)
    return {op: Curve(x=sorted(p), us=[p[x] for x in sorted(p)]) for op, p in points.items()}


def _attention(path: Path) -> AttentionGrid:
    grid: dict[tuple[int, int, int, int], float] = {}
    for i, row in enumerate(_read_csv(path, ATTENTION_COLUMNS), start=2):
        key = tuple(int(_number(row, c, path, i)) for c in ATTENTION_COLUMNS[:4])
        grid[key] = _number(row, "time_us", path, i)
    keys = sorted(grid)
    return AttentionGrid(prefill_chunk=[k[0] for k in keys], kv_prefill=[k[1] for k in keys],
                         n_decode=[k[2] for k in keys], kv_decode=[k[3] for k in keys], us=[grid[k] for k in keys])


def _read_meta(bundle: Path) -> dict:
    path = bundle / "meta.yaml"
    try:
        meta = load_yaml(path.read_text(), path)
    except OSError as e:
        raise ProfileError(f"{path}: cannot read: {e.strerror}") from None
    except ValueError as e:  # malformed, or an alias bomb (core_api.config_file)
        raise ProfileError(str(e)) from None
    if not isinstance(meta, dict):
        raise ProfileError(f"{path}: expected a mapping")
    for key in ("model", "hardware"):
        if key not in meta:
            raise ProfileError(f"{path}: missing field {key!r}")
    return meta


def _skew_alpha(meta: dict, tp: int) -> float:
    """The profiler's default alpha for skewed decode batches at this TP (0 if it fitted none)."""
    fit = meta.get("skew_fit") or {}
    if not fit.get("enabled"):
        return 0.0
    per_tp = fit.get("per_tp") or {}
    entry = per_tp.get(tp) or per_tp.get(str(tp)) or {}
    return float(entry.get("alpha_default", 0.0))


def fit_errors(profile: LayerProfile) -> dict[str, float]:
    """Held-out interpolation error of every table (see calibration.importers.holdout)."""
    out = {}
    for group, curves in (("dense", profile.dense), ("per_sequence", profile.per_sequence)):
        for op, c in curves.items():
            e = curve_holdout_mape(c.x, c.us)
            if e is not None:
                out[f"{group}.{op}"] = e
    a = profile.attention
    grid = {k[:4]: k[4] for k in a.rows()}
    for axis, name in enumerate(ATTENTION_COLUMNS[:4]):
        e = grid_holdout_mape(grid, axis)
        if e is not None:
            out[f"attention.{name}"] = e
    return out


def import_bundle(bundle: str | Path, tp: int) -> LayerProfile:
    bundle = Path(bundle)
    meta = _read_meta(bundle)
    tp_dir = bundle / f"tp{tp}"
    if not tp_dir.is_dir():
        have = sorted(p.name for p in bundle.glob("tp*") if p.is_dir())
        raise ProfileError(f"{bundle}: no tp{tp}/ folder; measured: {', '.join(have) or 'none'}")
    dense = _curves(tp_dir / "dense.csv", "tokens")
    per_layer = {op: (2 if op in OPS_TWICE_PER_LAYER else 1) for op in dense if op not in PER_STEP_OPS}
    per_step = {op: 1 for op in PER_STEP_OPS if op in dense}
    per_sequence = _curves(tp_dir / "per_sequence.csv", "sequences") if (tp_dir / "per_sequence.csv").exists() else {}
    attention = _attention(tp_dir / "attention.csv")
    model = get_model(str(meta["model"]))
    gpu = gpu_for_device(str(meta.get("gpu", ""))) or GPU_PRESETS.get(str(meta["hardware"]))
    engine = meta.get("engine_effective") or {}
    profile = LayerProfile(
        decode_skew_alpha=_skew_alpha(meta, tp),
        source=ProfileSource(name=SOURCE_NAME, path=str(bundle.name), license="MIT (LLMServingSim, CASYS Lab KAIST)",
                             notes=f"profiled {meta.get('profiled_at', '?')} with enforce_eager="
                                   f"{engine.get('enforce_eager', '?')}, {meta.get('measurement_iterations', '?')} "
                                   f"iterations per point"),
        hardware=str(meta.get("gpu") or meta["hardware"]),
        gpu=gpu.name if gpu else None,
        model=model.name,
        dtype="bf16" if str(meta.get("variant", "bf16")) == "bf16" else str(meta["variant"]),
        tp=tp,
        page_size=int(engine.get("block_size", 16)),
        engine_version=f"vllm {meta.get('vllm_version', '?')}",
        per_layer=per_layer, per_step=per_step, dense=dense, per_sequence=per_sequence, attention=attention,
        sample_count=sum(len(c.x) for c in dense.values()) + sum(len(c.x) for c in per_sequence.values())
        + len(attention.us),
        created=dt.date.today().isoformat(),
    )
    return profile.model_copy(update={"fit_error": fit_errors(profile)})
