"""Merge the bring-up steps' exit codes and figures into OUT/bringup.json, with the headline
numbers the GPU issue asks for next to their goals."""
from __future__ import annotations

import json
import statistics
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _pytest(xml: Path) -> dict | None:
    try:
        root = ET.parse(xml).getroot()
    except (OSError, ET.ParseError):
        return None
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    failed = [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None or c.find("error") is not None]
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")} | {"failed": failed}


def headline(steps: dict, artifacts: Path) -> dict:
    out: dict = {}
    if (t := _pytest(artifacts / "gpu_tests.xml")) is not None:
        out["gpu_tests"] = t
    if (two := steps.get("two_engines")) and two.get("result"):
        out["two_engines"] = [{k: c.get(k) for k in ("model", "transport", "mode", "ok", "error")}
                              | {s: c.get(s, {}).get("tokens_equal") for s in ("pd", "balanced_pd")}
                              for c in two["result"]["cases"]]
    if (roof := steps.get("roofline")) and roof.get("result"):
        r = roof["result"]
        out["decode_fraction_of_hbm_roofline_large_batch"] = {"value": r["decode_large_batch_median_fraction"],
                                                              "goal": 0.70}
        out["prefill_fraction_of_peak_flops"] = {p["tokens"]: p["fraction_of_peak_flops"] for p in r["prefill"]}
    if (kv := steps.get("kv_transfer")) and kv.get("result"):
        r = kv["result"]
        top = max(r["memcpy_gbps"], key=lambda s: int(s))
        out["kv_transfer_fraction_of_memcpy"] = {"size_mib": int(top), "goal": 0.80, **{
            t: round(v[top] / r["memcpy_gbps"][top], 3) for t, v in r["transfer_gbps"].items()}, "errors": r["errors"]}
    for val in sorted(artifacts.glob("*.validation.json")):
        reports = _load(val) or []
        errs = [abs(r["metrics"][m]["rel_error"]) for r in reports for m in ("mean_ttft_ms", "mean_tpot_ms", "mean_e2el_ms")]
        at = [abs(r["at_run_speed"][m]["rel_error"]) for r in reports if r.get("at_run_speed")
              for m in ("mean_ttft_ms", "mean_tpot_ms", "mean_e2el_ms")]
        out["sim_vs_real"] = {"profile": val.name.replace(".validation.json", ".json"), "goal": 0.05,
                              "median_abs_error": statistics.median(errs) if errs else None,
                              "median_abs_error_at_run_speed": statistics.median(at) if at else None,
                              "untrusted": [u for r in reports for u in r.get("untrusted", [])]}
    for val in sorted(artifacts.glob("*.validation.json")):
        data = _load(val.with_name(val.name.replace(".validation.json", ".json"))) or {}
        out["step_fit_heldout_mape"] = data.get("fit_error", {}).get("overall")
    return out


def main() -> int:
    dest = Path(sys.argv[1])
    steps = {}
    for meta in sorted((dest / "steps").glob("*.meta.json")):
        m = _load(meta) or {}
        name = m.get("name", meta.name.split(".")[0])
        steps[name] = {**m, "result": _load(dest / "steps" / f"{name}.json")}
    summary = {"steps": {k: {kk: v for kk, v in s.items() if kk != "result"} for k, s in steps.items()},
               "headline": headline(steps, dest / "artifacts"), "details": {k: s["result"] for k, s in steps.items()}}
    (dest / "bringup.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary["headline"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
