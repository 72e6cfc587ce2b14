"""`calibrate roofline`: fit the roofline to every public measurement, write per-GPU and
typical-GPU profiles, and report the held-out errors (leave one TP degree out, leave one GPU out)."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from calibration.public_data import load_all
from calibration.roofline_fit import (
    ANY_GPU,
    fit,
    for_any_gpu,
    gpu_holdout_fits,
    mape,
    mape_by_group,
    mape_by_kind,
    to_profile,
    tp_holdout,
)


def fit_public_rooflines(data: Path, out: Path, progress: Callable[[str], None] = lambda _m: None) -> int:
    skipped: list[str] = []
    observations = load_all(data, skipped)
    for reason in skipped:
        progress(f"warning: {reason}")
    if not observations:
        raise ValueError(f"{data}: no measurements found (expected real_gpu/, vidur_h100_profiles/, ...)")
    gpus = sorted({o.gpu for o in observations})
    progress(f"{len(observations)} observations from {len({o.source for o in observations})} sources on "
             f"{', '.join(gpus)}; fitting all GPUs, each GPU left out, each TP degree left out")
    per_gpu = fit(observations)
    typical = for_any_gpu(per_gpu)
    holdout = gpu_holdout_fits(observations)
    tp_rows = tp_holdout(observations)
    out.mkdir(parents=True, exist_ok=True)
    report = {"observations": len(observations), "engines": typical.engines, "typical_gpu": typical.gpus[ANY_GPU],
              "per_gpu": per_gpu.gpus, "gpus": {}, "tp_holdout": tp_rows}
    lines = [f"{'GPU':<12}{'own fit':>9}{'typical':>10}{'GPU left out':>14}   (MAPE over measurement groups)"]
    for gpu in gpus:
        mine = [o for o in observations if o.gpu == gpu]
        row = {"per_gpu_mape": mape(mine, per_gpu), "typical_gpu_mape": mape(mine, typical),
               "gpu_holdout_mape": mape(mine, holdout[gpu]),
               "gpu_holdout_efficiency": holdout[gpu].efficiency(gpu).model_dump(),
               "groups": {"/".join(map(str, g)): m for g, m in mape_by_group(mine, holdout[gpu]).items()},
               "by_step_kind": {"own_fit": mape_by_kind(mine, per_gpu), "gpu_left_out": mape_by_kind(mine, holdout[gpu])}}
        report["gpus"][gpu] = row
        lines.append(f"{gpu:<12}{row['per_gpu_mape']:>9.1%}{row['typical_gpu_mape']:>10.1%}{row['gpu_holdout_mape']:>14.1%}")
        errors = {"in_sample": row["per_gpu_mape"], "gpu_holdout": row["gpu_holdout_mape"]}
        errors |= {f"tp_holdout.{r['source']}.{r['model']}.tp{r['tp_left_out']}": r["heldout_mape"]
                   for r in tp_rows if r["gpu"] == gpu}
        to_profile(per_gpu.efficiency(gpu), gpu, mine, errors, "fitted on this GPU's measurements, attention and fixed costs "
                   "of the vLLM engine").save(out / f"roofline-{gpu}.json")
        others = [o for o in observations if o.gpu != gpu]
        to_profile(holdout[gpu].efficiency(gpu), gpu, others, {"on_this_gpu": row["gpu_holdout_mape"]},
                   "fitted WITHOUT this GPU's measurements: what a GPU nobody profiled gets"
                   ).save(out / f"roofline-{gpu}.holdout.json")
    to_profile(typical.efficiency(), None, observations,
               {"in_sample": mape(observations, typical),
                **{f"gpu_holdout.{g}": report["gpus"][g]["gpu_holdout_mape"] for g in gpus}},
               "the typical GPU (median of the measured GPUs' own factors): the simulator's defaults").save(out / "roofline-any.json")
    lines.append("")
    lines.append("by step kind, own fit / this GPU left out (MAPE over every observation of the kind):")
    for gpu in gpus:
        kinds = report["gpus"][gpu]["by_step_kind"]
        lines.append(f"{gpu:<12}" + "  ".join(f"{k} {v:.1%} / {kinds['gpu_left_out'][k]:.1%}"
                                                for k, v in kinds["own_fit"].items()))
    lines.append("")
    lines.append(f"{'leave one TP degree out':<58}{'held out':>9}{'in sample':>10}")
    for r in tp_rows:
        name = f"{r['source']} {r['gpu']} {r['model']} tp{r['tp_left_out']} (from tp{r['trained_on']})"
        lines.append(f"{name:<58}{r['heldout_mape']:>9.1%}{r['insample_mape']:>10.1%}")
    (out / "roofline-report.json").write_text(json.dumps(report, indent=1) + "\n")
    print("\n".join(lines))
    print(f"typical GPU factors (the defaults): {json.dumps({k: round(v, 4) for k, v in typical.gpus[ANY_GPU].items()})}; "
          f"vLLM attention and fixed costs {json.dumps({k: float(f'{v:.3g}') for k, v in typical.engines.get('vllm-layers', {}).items()})}")
    print(f"wrote {out}/roofline-<gpu>.json, roofline-<gpu>.holdout.json, roofline-any.json, roofline-report.json")
    return 0
