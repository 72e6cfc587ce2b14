"""`microserving calibrate profile|fit|validate|import`: the calibration loop from the command line.

    microserving calibrate profile --model tiny --out samples.json      # time a real engine
    microserving calibrate fit samples.json --out profile.json          # fit the cost model
    microserving calibrate validate --profile profile.json \\
        --strategy round_robin --strategy pd --load 0.5 --load 1.5      # real vs sim, error table
    microserving calibrate resimulate validation.json [--profile P]   # stored real runs vs sim again
    microserving calibrate import BUNDLE --tp 1 --out profile.json     # public per-layer GPU profile
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from pydantic import ValidationError

from core_api.validation_errors import error_text
from experiments.arg_types import arrival_rate, positive_float


def add_parser(sub) -> None:
    p = sub.add_parser("calibrate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cmds = p.add_subparsers(dest="calibrate_command", required=True)

    pr = cmds.add_parser("profile", help="time a real engine on a grid of step shapes and KV transfers")
    _engine_args(pr)
    pr.add_argument("--grid", type=Path, help="a GridSpec file, YAML or JSON (default: the built-in grid)")
    pr.add_argument("--warmup", type=int, default=2, help="untimed steps per point and round")
    pr.add_argument("--repeats", type=int, default=5, help="timed steps per point and round")
    pr.add_argument("--rounds", type=int, default=3, help="passes over the whole grid")
    pr.add_argument("--core", type=int, help="pin the profiler to this core (default: the last one)")
    pr.add_argument("--no-transfers", action="store_true", help="skip the two-engine KV transfer profile")
    pr.add_argument("--out", type=Path, required=True, help="samples JSON")
    pr.add_argument("--csv", type=Path, help="also write the samples as CSV")

    ft = cmds.add_parser("fit", help="fit a cost profile to profiled samples")
    ft.add_argument("samples", type=Path)
    ft.add_argument("--out", type=Path, required=True, help="profile JSON (what `sim --profile` loads)")
    ft.add_argument("--report", type=Path, help="fit report JSON (default: next to --out)")
    ft.add_argument("--predictions", type=Path, help="predicted-vs-measured CSV (default: next to --out)")
    ft.add_argument("--method", choices=("nnls", "robust"), default="nnls")
    ft.add_argument("--statistic", choices=("median", "mean", "trimmed"),
                    help="which time stands for a grid point's repeats (default: calibration.fit.DEFAULT_STATISTIC, "
                         "the mean, since the simulator sums step times)")
    ft.add_argument("--holdout", type=float, default=0.25, help="share of samples held out for the error")
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--coefficients", help="comma-separated coefficient names (default: all)")
    ft.add_argument("--form", choices=("curve", "linear"), default="curve",
                    help="curve (default): the step's time by its tokens is piecewise linear (knots at powers of "
                         "two) beside the other coefficients, for matrix kernels whose cost per token changes "
                         "with the batch; linear: const + prefill_tokens instead")
    ft.add_argument("--colocated-router", action="store_true",
                    help="carry the router's measured CPU per streamed token, which the simulator takes from "
                         "every engine in equal shares (hosts where the router shares the engines' cores)")

    va = cmds.add_parser("validate", help="replay a workload on real engines and on the simulator")
    va.add_argument("--profile", type=Path, required=True)
    va.add_argument("--strategy", action="append", help="strategy name (repeatable; default round_robin)")
    va.add_argument("--param", action="append", default=[], metavar="KEY=JSON", help="strategy parameter")
    va.add_argument("--engines", type=int, default=2)
    va.add_argument("--engine-opt", action="append", default=[], metavar="KEY=JSON",
                    help="override a real engine setting (EngineSpec field), e.g. num_pages=512")
    va.add_argument("--num-requests", type=int, default=100)
    rate = va.add_mutually_exclusive_group()
    rate.add_argument("--rate", type=arrival_rate, action="append",
                      help="arrival rate in req/s (repeatable; inf: every request at once)")
    rate.add_argument("--load", type=positive_float, action="append",
                      help="arrival rate as a fraction of the simulated capacity (repeatable; default 0.5 and 1.5)")
    va.add_argument("--prompt-len", default="64:512", help="LO:HI uniform prompt tokens")
    va.add_argument("--output-len", default="16:128", help="LO:HI uniform output tokens")
    va.add_argument("--seed", type=int, default=0)
    va.add_argument("--real-repeats", type=int, default=1,
                    help="real runs per point (fresh engines each); the table shows their mean and spread")
    va.add_argument("--probe-s", type=float, default=2.0, metavar="SECONDS",
                    help="before each real run, serve this many seconds of the workload (another seed) on the same "
                         "engines to measure the machine's step speed then (0: no probe)")
    va.add_argument("--no-pin", action="store_true", help="do not pin engine processes to cores")
    va.add_argument("--no-interval", action="store_true", help="skip the error-bound reruns")
    va.add_argument("--out", type=Path, help="reports JSON")

    rs = cmds.add_parser("resimulate", help="compare a stored validation's real runs with the simulator again",
                         description="Simulate the cases of a `calibrate validate --out` report again and compare "
                                     "them with the real runs it recorded (after a change to the simulator, or "
                                     "with another profile of the same engine), without running real engines.")
    rs.add_argument("report", type=Path, nargs="+", help=(
        "reports JSON written by `calibrate validate --out`; with several, one line each and their median"))
    rs.add_argument("--profile", type=Path, help="profile to simulate with (default: each report's own)")
    rs.add_argument("--out", type=Path, help="write the resimulated reports JSON here (one report only)")

    rf = cmds.add_parser("roofline", help="fit the roofline's efficiency factors to public GPU measurements")
    rf.add_argument("--data", type=Path, required=True,
                    help="folder laid out like the project's shared/data (real_gpu/, vidur_h100_profiles/, ...)")
    rf.add_argument("--out", type=Path, required=True,
                    help="folder for roofline-<gpu>.json, roofline-any.json and roofline-report.json")

    im = cmds.add_parser("import", help="turn public GPU measurements into a cost profile")
    im.add_argument("source", type=Path, help="the measurements (for vllm-layers: a bundle with meta.yaml and tp<N>/)")
    im.add_argument("--format", choices=("vllm-layers",), default="vllm-layers",
                    help="vllm-layers: per-layer vLLM profiles in LLMServingSim's profiler layout")
    im.add_argument("--tp", type=int, default=1, help="tensor-parallel degree to import")
    im.add_argument("--out", type=Path, required=True, help="profile JSON (what `sim --profile` / `replay` load)")


def _engine_args(p) -> None:
    p.add_argument("--model", default="tiny", help="tiny | smollm2 | HF directory | .gguf")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--threads", type=int, default=1, help="torch threads (as the engine processes use)")
    p.add_argument("--page-size", type=int, default=16)
    p.add_argument("--num-pages", type=int, default=1024)
    p.add_argument("--max-num-batched-tokens", type=int, default=512)
    p.add_argument("--max-num-seqs", type=int, default=64)
    p.add_argument("--fast", action="store_true",
                   help="turn off batch-invariant mode (profile the engines `run --fast` starts)")
    p.add_argument("--stream-interval", type=float, default=0.005, metavar="SECONDS",
                   help="engines send streamed tokens to the router at most this often (first and last at "
                        "once; 0: every step). The default cuts the router's CPU, which shares the engines' "
                        "cores on a small host, about threefold")


def _kv(items: list[str]) -> dict:
    """--engine-opt KEY=VALUE items."""
    from core_api.strategy import params_from_cli

    return params_from_cli(items, flag="--engine-opt")


def _range(text: str, what: str) -> dict:
    lo, sep, hi = text.partition(":")
    try:
        lo_i, hi_i = int(lo), int(hi if sep else lo)
    except ValueError:
        raise ValueError(f"--{what} {text!r}: expected LO:HI integers") from None
    return {"kind": "uniform", "low": lo_i, "high": hi_i} if lo_i != hi_i else {"kind": "fixed", "value": lo_i}


def _progress(done: int, total: int, label: str) -> None:
    if done == total or done % max(1, total // 10) == 0:
        print(f"[{done}/{total}] {label}", file=sys.stderr, flush=True)


# -- subcommands -----------------------------------------------------------------------------
def _profile(args) -> int:
    from calibration.profile import GridSpec, ProfileSettings, run_profile
    from core_api.config_file import read_config_file
    from real.config import EngineSpec

    engine = EngineSpec(model=args.model, device=args.device, dtype=args.dtype, threads=args.threads,
                        page_size=args.page_size, num_pages=args.num_pages,
                        max_num_batched_tokens=args.max_num_batched_tokens, max_num_seqs=args.max_num_seqs,
                        batch_invariant=not args.fast, stream_interval_s=args.stream_interval)
    grid = GridSpec.model_validate(read_config_file(args.grid, "grid")) if args.grid else GridSpec()
    settings = ProfileSettings(engine=engine, grid=grid, warmup=args.warmup, repeats=args.repeats,
                               rounds=args.rounds, core=args.core, transfers=not args.no_transfers)
    samples = run_profile(settings, _progress)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    samples.save(args.out)
    if args.csv:
        samples.write_csv(args.csv)
    env = samples.environment
    print(f"{len(samples.steps)} step samples, {len(samples.transfers)} transfer samples on {samples.hardware} "
          f"in {env['step_profile_wall_s']} s of step profiling; other processes used "
          f"{env['foreign_cpu_share']} of the CPU meanwhile (load average before {env['load_average_before']}, "
          f"after {env['load_average_after']})")
    print(f"wrote {args.out}" + (f" and {args.csv}" if args.csv else ""))
    return 0


def _fit(args) -> int:
    from calibration.fit import DEFAULT_COEFFICIENTS, DEFAULT_STATISTIC, fit_samples, to_profile
    from calibration.fit_report import report, write_predictions_csv
    from calibration.samples import ProfileSamples

    samples = ProfileSamples.load(args.samples)
    names = tuple(x.strip() for x in args.coefficients.split(",")) if args.coefficients else DEFAULT_COEFFICIENTS
    statistic = args.statistic or DEFAULT_STATISTIC
    fit = fit_samples(samples, names, args.method, args.holdout, args.seed, statistic=statistic, form=args.form)
    profile = to_profile(samples, fit, colocated_router=args.colocated_router)
    stem = args.out.with_suffix("")
    report_path = args.report or Path(f"{stem}.report.json")
    pred_path = args.predictions or Path(f"{stem}.predictions.csv")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    profile.save(args.out)
    report_path.write_text(report(str(args.samples), fit, args.method, args.holdout, args.seed, statistic)
                           .model_dump_json(indent=2) + "\n")
    write_predictions_csv(pred_path, fit.predictions)
    curve = profile.token_curve
    knots = f" and a token curve of {len(curve.tokens)} knots" if curve is not None else ""
    print(f"fitted {len(fit.coefficients)} coefficients{knots} on {fit.counts['train']} step samples "
          f"({fit.counts['test']} held out):")
    if curve is not None:
        print("  token curve      " + ", ".join(f"{t:g}: {s * 1e3:.4g} ms" for t, s in zip(curve.tokens, curve.seconds)))
    for k, v in profile.coefficients.items():
        print(f"  {k:<16} {v:.4g}")
    if args.colocated_router:
        print(f"  router CPU       {profile.router_cpu_per_token_s * 1e6:.1f} us per streamed token, taken from every "
              "engine in equal shares (the router shares their cores)")
    if profile.transfer is not None:
        net = " (net of two control round trips)" if profile.rpc_latency_s is not None else ""
        print(f"  transfer         latency {profile.transfer.latency_s * 1e6:.1f} us{net}, "
              f"bandwidth {profile.transfer.bandwidth_Bps / 1e9:.3g} GB/s")
    if profile.rpc_latency_s is not None:
        print(f"  control calls    round trip {profile.rpc_latency_s * 1e6:.1f} us, sender CPU per remote_send "
              f"{(profile.send_overhead_s or 0) * 1e6:.1f} us, receiver CPU per handoff "
              f"{(profile.recv_overhead_s or 0) * 1e6:.1f} us, per start_generate "
              f"{(profile.generate_overhead_s or 0) * 1e6:.1f} us (handed off: "
              f"{(profile.handoff_generate_overhead_s or 0) * 1e6:.1f} us)")
    if profile.stream is not None:
        sc = profile.stream
        print(f"  streaming        {sc.message_s * 1e6:.1f} us per message + {sc.step_s * 1e6:.1f} us per step + "
              f"{sc.token_s * 1e6:.2f} us per token, a message every {sc.interval_s * 1e3:g} ms")
    if profile.idle is not None:
        ic = profile.idle
        print("  after idling     " + ", ".join(f"+{e * 1e6:.0f} us after {t * 1e3:g} ms" for t, e in zip(ic.idle_s, ic.extra_s))
              + " (first step)")
    print("held-out MAPE: " + ", ".join(f"{k} {v * 100:.1f}%" for k, v in fit.errors.items()
                                        if not k.startswith("feature:")))
    print(f"wrote {args.out}, {report_path}, {pred_path}")
    return 0


def _validate(args) -> int:
    from calibration.validate import estimate_capacity, real_engine_spec, sim_cluster_config, validate
    from calibration.validation_report import ValidationCase
    from calibration.validation_table import format_reports
    from core_api.strategy import params_from_cli
    from core_api.workload import WorkloadSpec
    from sim.profile import CostProfile

    profile = CostProfile.load(args.profile)
    vocab = (profile.model.vocab_size if not isinstance(profile.model, str) else None)
    if vocab is None:
        from sim.hardware import get_model

        vocab = get_model(profile.model).vocab_size
    workload = WorkloadSpec(num_requests=args.num_requests, prompt_len=_range(args.prompt_len, "prompt-len"),
                            output_len=_range(args.output_len, "output-len"), vocab_size=vocab, seed=args.seed)
    reports = []
    for strategy in args.strategy or ["round_robin"]:
        case = ValidationCase(profile=str(args.profile), strategy=strategy, params=params_from_cli(args.param),
                              engines=args.engines, engine=_kv(args.engine_opt), workload=workload, seed=args.seed,
                              pin=not args.no_pin, interval=not args.no_interval, real_repeats=args.real_repeats,
                              probe_s=args.probe_s)
        rates = args.rate
        if not rates:
            cluster = sim_cluster_config(case, profile, real_engine_spec(case, profile))
            capacity = estimate_capacity(cluster, workload)
            if not capacity > 0:
                raise ValueError(f"{strategy}: the simulated capacity is 0 req/s (no request completed in the "
                                 f"simulation of this workload), so --load has nothing to scale; give --rate instead")
            rates = [f * capacity for f in (args.load or [0.5, 1.5])]
            print(f"{strategy}: simulated capacity {capacity:.2f} req/s; rates {', '.join(f'{r:.2f}' for r in rates)}",
                  file=sys.stderr)
        for rate in rates:
            spec = workload.model_copy(update={"arrival": workload.arrival.model_copy(update={"rate": rate})})
            print(f"{strategy} at {rate:.2f} req/s: real and simulated runs...", file=sys.stderr, flush=True)
            reports.append(validate(case.model_copy(update={"workload": spec})))
    print(format_reports(reports))
    if args.out:
        _write_reports(reports, args.out)
    return 0


def _resimulate(args) -> int:
    from calibration.resimulate import load_reports, resimulate
    from calibration.validation_table import format_reports, headline_error

    if args.out and len(args.report) > 1:
        raise ValueError("--out takes one report: resimulate each report on its own to keep its reports")
    stored = {path: load_reports(path) for path in args.report}  # all read before any is simulated
    again = {}
    for path, reports in stored.items():
        again[path] = [resimulate(r, path, args.profile) for r in reports]
        if len(args.report) > 1:
            print(f"{path}: median |error| {headline_error(again[path]) * 100:.1f}% "
                  f"(as stored {headline_error(reports) * 100:.1f}%)", flush=True)
    if len(args.report) == 1:
        [(path, reports)] = again.items()
        print(f"{len(reports)} case(s) of {path} simulated again" + (f" with {args.profile}" if args.profile else "")
              + f" against the real runs it recorded; median |error| was {headline_error(stored[path]) * 100:.1f}% "
              "as stored", file=sys.stderr)
        print(format_reports(reports))
        if args.out:
            _write_reports(reports, args.out)
        return 0
    now = [headline_error(r) for r in again.values()]
    then = [headline_error(r) for r in stored.values()]
    print(f"{len(now)} reports: median of their median |error| {statistics.median(now) * 100:.2f}% "
          f"(as stored {statistics.median(then) * 100:.2f}%), mean {statistics.fmean(now) * 100:.2f}% "
          f"(as stored {statistics.fmean(then) * 100:.2f}%)")
    return 0


def _write_reports(reports, out: Path) -> None:
    """The reports as JSON, each case's profile path relative to the file (where resimulate
    looks for it first), so the two move together."""
    from calibration.resimulate import relative_to_report

    out.parent.mkdir(parents=True, exist_ok=True)
    written = [r.model_copy(update={"case": r.case.model_copy(update={
        "profile": relative_to_report(r.case.profile, out)})}) for r in reports]
    out.write_text(json.dumps([r.model_dump(mode="json") for r in written], indent=1) + "\n")
    print(f"wrote {out}")


def _roofline(args) -> int:
    from calibration.roofline_report import fit_public_rooflines

    return fit_public_rooflines(args.data, args.out, lambda msg: print(msg, file=sys.stderr, flush=True))


def _import(args) -> int:
    from calibration.importers.vllm_layers import import_bundle

    profile = import_bundle(args.source, args.tp)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    profile.save(args.out)
    worst = max(profile.fit_error.items(), key=lambda kv: kv[1])
    print(f"{profile.model_name} tp={profile.tp} on {profile.hardware}: {len(profile.dense)} dense operators, "
          f"{len(profile.attention.us)} attention shapes, {len(profile.per_sequence)} per-sequence operators; "
          f"decode skew alpha {profile.decode_skew_alpha:g}")
    print("held-out interpolation MAPE: " + ", ".join(f"{k} {v * 100:.1f}%" for k, v in profile.fit_error.items())
          + f" (worst {worst[0]})")
    print(f"wrote {args.out}")
    return 0


def run(args: argparse.Namespace) -> int:
    from calibration.fit import FitError
    from calibration.samples import SamplesError
    from sim.profile import ProfileError

    handlers = {"profile": _profile, "fit": _fit, "validate": _validate, "resimulate": _resimulate, "import": _import,
                "roofline": _roofline}
    try:
        return handlers[args.calibrate_command](args)
    except (FitError, SamplesError, ProfileError, ValidationError, ValueError, OSError, RuntimeError) as exc:
        print(f"error: {error_text(exc)}", file=sys.stderr)
        return 2
