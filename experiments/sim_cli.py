"""`microserving sim`: simulate a workload on a cluster and print its metrics."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import ValidationError

from core_api.validation_errors import error_text
from experiments.trace_args import add_trace_arguments


def add_parser(sub) -> None:
    p = sub.add_parser("sim", description="Run one simulation. Without --config: a built-in default.")
    p.add_argument("--config", type=Path, help="SimConfig file (YAML or JSON): cluster, workload, seed")
    p.add_argument("--strategy", help="strategy name (see --list-strategies) or module:Class")
    p.add_argument("--param", action="append", default=[], metavar="KEY=JSON",
                   help="strategy parameter, e.g. --param ratio=0.3 (repeatable)")
    p.add_argument("--rate", type=float, help="request rate (req/s)")
    p.add_argument("--num-requests", type=int, help="number of requests")
    p.add_argument("--seed", type=int, help="workload seed")
    p.add_argument("--profile", type=Path, help="fitted cost profile JSON (instead of the roofline model)")
    p.add_argument("--no-token-times", action="store_true",
                   help="keep each request's token count and first/last token time, not every token's time "
                        "(ITL percentiles from a histogram within 0.1%%): for runs of millions of requests")
    p.add_argument("--out", type=Path, help="write the full RunResult JSON here")
    p.add_argument("--out-vllm", type=Path, metavar="PATH",
                   help="also write the results as `vllm bench serve --save-result` does (its keys and units)")
    p.add_argument("--list-strategies", action="store_true",
                   help="print the known strategies with their parameters and defaults, and exit")
    add_trace_arguments(p)


def build_config(args: argparse.Namespace):
    """Merge the config file (or default) with command-line overrides; validated."""
    from core_api.strategy import params_from_cli
    from sim.config import default_config, load_config

    config = load_config(args.config) if args.config else default_config()
    data = config.model_dump(mode="json")
    if args.strategy:
        data["cluster"]["strategy"] = {"name": args.strategy, "params": {}}
    data["cluster"]["strategy"]["params"].update(params_from_cli(args.param))
    if args.rate is not None:
        data["workload"]["arrival"]["rate"] = args.rate
    if args.num_requests is not None:
        data["workload"]["num_requests"] = args.num_requests
    if args.seed is not None:
        data["seed"] = args.seed
    if args.profile is not None:
        data["cluster"]["cost_model"] = str(args.profile)
    if getattr(args, "no_token_times", False):  # `capacity` shares this function, not the flag
        data["token_times"] = False
    return type(config).model_validate(data)


def run(args: argparse.Namespace) -> int:
    from core_api.strategy import StrategyError, known_strategies

    if args.list_strategies:  # before the simulator's imports: listing must be instant
        print(describe_strategies(known_strategies()))
        return 0
    from core_api.faults import recovery
    from core_api.metrics import format_table
    from experiments.trace_args import trace_spec_from_args
    from sim.cluster import simulate
    try:
        config = build_config(args)
        if args.out_vllm and not config.token_times:
            raise ValueError("--out-vllm writes every request's inter-token gaps: it needs token times "
                             "(drop --no-token-times, or token_times: false from the config)")
        trace = trace_spec_from_args(args, args.rate, config.seed)
        workload = trace.load() if trace is not None else None
        n = len(workload) if workload is not None else config.workload.num_requests
        result = simulate(config, workload, progress_printer() if n >= PROGRESS_FROM else None)
    except (ValidationError, ValueError, StrategyError, FileNotFoundError) as exc:
        print(f"error: {error_text(exc)}", file=sys.stderr)
        return 2
    w, c = config.workload, config.cluster
    what = (f"trace {trace.path} ({len(workload)} requests, {workload.mean_rate:.3g} req/s)" if trace is not None
            else f"{w.num_requests} requests at {w.arrival.rate:g} req/s")
    print(f"strategy {c.strategy.name} on {len(c.engine_ids())} engines; {what} (seed {config.seed}); "
          f"simulated {result.sim_time_s:.1f} s in {result.wall_time_s:.2f} s wall")
    print(format_table(result.metrics()))
    failed = result.failed_by_reason()
    if failed:
        print(f"{sum(failed.values())} of {len(result.records)} requests failed: "
              + ", ".join(f"{n} {kind}" for kind, n in failed.items()), file=sys.stderr)
    for fault in config.faults.faults:
        rec = recovery(result.records, fault.at)
        print(f"{fault.kind} of {fault.engine} at {fault.at:g} s: "
              + ("no request arriving after it completed" if rec is None else f"recovered in {rec * 1000:.0f} ms"))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(result.to_json())
        print(f"wrote {args.out}")
    if args.out_vllm:
        from core_api.vllm_format import save_vllm_result, traffic_of

        rate, burstiness = traffic_of(workload if workload is not None else config.workload)
        model = c.engines[0].model
        save_vllm_result(args.out_vllm, result.records, result.metrics(), backend="microserving-sim",
                         model_id=model if isinstance(model, str) else model.name, request_rate=rate,
                         burstiness=burstiness)
        print(f"wrote {args.out_vllm}")
    if result.records and not any(r.status == "ok" for r in result.records):
        print("error: no request completed", file=sys.stderr)
        return 1
    return 0


PROGRESS_FROM = 20_000  # requests: smaller runs end within seconds, larger ones report each tenth


def progress_printer(tag: str = "sim"):
    """A progress callback printing one plain line per tenth of the requests to stderr."""
    import time

    start = time.perf_counter()

    def report(done: int, total: int, simulated_s: float) -> None:
        print(f"[{tag}] {done}/{total} requests done, {simulated_s:.0f} s simulated, "
              f"{time.perf_counter() - start:.0f} s elapsed", file=sys.stderr, flush=True)

    return report


def describe_strategies(names: list[str]) -> str:
    """Each strategy, its first docstring line, and its parameters with their defaults."""
    from pydantic_core import PydanticUndefined

    from core_api.strategy import resolve

    out = []
    for name in names:
        cls = resolve(name)
        doc = cls.__doc__ or sys.modules[cls.__module__].__doc__ or ""
        summary = " ".join(doc.strip().split("\n\n")[0].split())  # the first paragraph, on one line
        out.append(f"{name}: {summary}".rstrip(": "))
        for field, info in cls.Params.model_fields.items():
            default = "(required)" if info.default is PydanticUndefined and info.default_factory is None else \
                f"= {info.get_default(call_default_factory=True)!r}"
            kind = getattr(info.annotation, "__name__", None) or str(info.annotation).replace("typing.", "")
            text = f"  {field}: {kind} {default}"
            out.append(text + (f"  # {info.description}" if info.description else ""))
    return "\n".join(out)
