"""`microserving run`: serve a prompt or a workload on real engines through a strategy.

    microserving run --prompt "The capital of France is" --model smollm2 --strategy pd
    microserving run --engines 2 --strategy balanced_pd --param ratio=0.3 --num-requests 16 --out run.json
    microserving run --connect tcp://10.0.0.2:5555 --connect tcp://10.0.0.3:5555 --strategy pd

Engines are started on this host (`--engines N`, one process each) and/or reached at addresses
of engines started with `microserving engine` (`--connect`), or all of it comes from `--config`
(a RealRunConfig: cluster, workload, seed). With `--prompt` the generated text is streamed to
stdout; otherwise the workload (same spec as `microserving sim`, small CPU-sized defaults) runs
at its arrival times and the metrics table is printed; `--out` writes the run's JSON.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from pydantic import ValidationError

from core_api.strategy import params_from_cli
from core_api.validation_errors import error_text
from real.engine_args import add_engine_arguments, engines_from_args, print_ready


def add_parser(sub) -> None:
    p = sub.add_parser("run", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, help="RealRunConfig file (YAML or JSON): cluster, workload, seed")
    p.add_argument("--strategy", help="strategy name or module:Class (default pd, or the config's)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=JSON", help="strategy parameter (repeatable)")
    add_engine_arguments(p)
    g = p.add_argument_group("one prompt")
    g.add_argument("--prompt", help="generate from this text and print it")
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    g.add_argument("--max-tokens", type=int, default=32)
    g.add_argument("--temperature", type=float, default=0.0)
    g = p.add_argument_group("workload")
    g.add_argument("--num-requests", type=int)
    g.add_argument("--rate", type=float, help="requests per second")
    g.add_argument("--seed", type=int)
    p.add_argument("--out", type=Path, help="write the run's JSON here")
    p.add_argument("--out-vllm", type=Path, metavar="PATH",
                   help="also write the results as `vllm bench serve --save-result` does (with generated texts)")
    p.add_argument("--faults", type=Path, help="fault schedule (YAML/JSON, core_api.faults) applied to the engine "
                   "processes during the workload: crash, restart, stall, slow")


def build_config(args: argparse.Namespace):
    """The config file (or flags) plus command-line overrides, validated."""
    from real.config import RealRunConfig, default_workload, load_run_config

    if args.config:
        data = load_run_config(args.config).model_dump(mode="json")
    else:
        engines = engines_from_args(args)
        data = {"cluster": {"engines": engines, "strategy": {"name": "pd"}, "start_timeout_s": args.connect_timeout}}
    if args.keys:
        data["cluster"]["keys"] = str(Path(args.keys).resolve())
    strategy = data["cluster"]["strategy"]
    if args.strategy:
        strategy.update(name=args.strategy, params={})
    strategy.setdefault("params", {}).update(params_from_cli(args.param))
    if not data.get("workload"):
        data["workload"] = default_workload().model_dump(mode="json")
    workload = data["workload"]
    if args.num_requests is not None:
        workload["num_requests"] = args.num_requests
    if args.rate is not None:
        workload.setdefault("arrival", {})["rate"] = args.rate
    if args.seed is not None:
        data["seed"] = args.seed
    return RealRunConfig.model_validate(data)


def run(args: argparse.Namespace) -> int:
    from core_api import strategy as registry
    from core_api.kv_cache import KVLeakError
    from core_api.strategy import StrategyError
    from real.cluster import RealCluster

    try:
        config = build_config(args)
        faults = None
        if args.faults is not None:
            from core_api.faults import load_faults

            faults = load_faults(args.faults)
            faults.check_engines([eid for eid, _ in config.cluster.expanded()])
    except (ValidationError, ValueError) as exc:
        print(f"error: {error_text(exc)}", file=sys.stderr)
        return 2
    try:  # a typo in the strategy or its parameters fails before any engine starts
        s = config.cluster.strategy
        registry.resolve(s.name).Params(**s.params)
    except (StrategyError, ValidationError) as exc:
        print(f"error: {error_text(exc)}", file=sys.stderr)
        return 2
    entries = [e for _, e in config.cluster.expanded()]
    local, remote = sum(e.address is None for e in entries), sum(e.address is not None for e in entries)
    what = ", ".join(x for x in (f"starting {local} engine(s)" if local else "",
                                 f"connecting to {remote} engine(s)" if remote else "") if x)
    print(f"{what}; strategy {config.cluster.strategy.name}", file=sys.stderr)
    try:
        with RealCluster(config.cluster, on_ready=print_ready) as cluster:
            if args.prompt is not None:
                return asyncio.run(_prompt(cluster, args))
            return asyncio.run(_workload(cluster, config, args, faults))
    except (StrategyError, RuntimeError, ValueError, KVLeakError) as exc:
        print(f"error: {error_text(exc)}", file=sys.stderr)
        return 2


async def _prompt(cluster, args: argparse.Namespace) -> int:
    """Stream one prompt's continuation to stdout."""
    from core_api import strategy as registry
    from core_api.types import Request, SamplingParams
    from real.loading import load_tokenizer
    from real.runtime import AsyncioRuntime

    spec = cluster.specs[0][0]
    tok = load_tokenizer(spec.model_name if spec is not None else args.model)
    text = args.prompt
    if args.chat:
        text = tok.apply_chat_template([{"role": "user", "content": text}])
    ids = tok.encode(text)
    req = Request("prompt", ids, SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature))
    async with cluster.session() as engines:
        runtime = AsyncioRuntime()
        strat = registry.build(cluster.config.strategy.name, list(engines.values()), runtime,
                               cluster.config.strategy.params)
        out: list[int] = []
        shown = ""
        t0 = time.perf_counter()
        ttft = None
        async for chunk in strat.generate(req):
            ttft = ttft if ttft is not None else time.perf_counter() - t0
            out += chunk.token_ids
            decoded = tok.decode(out, skip_special_tokens=True)
            sys.stdout.write(decoded[len(shown):])
            sys.stdout.flush()
            shown = decoded
        total = time.perf_counter() - t0
    print()
    print(f"[{len(ids)} prompt tokens, {len(out)} generated; TTFT {1000 * (ttft or 0):.0f} ms, "
          f"{len(out) / total:.1f} tok/s; route {strat.pop_tags(req.id)}]", file=sys.stderr)
    return 0


async def _workload(cluster, config, args: argparse.Namespace, faults=None) -> int:
    from core_api.faults import failures_by_kind
    from core_api.metrics import format_table
    from core_api.workload import generate
    from real.cluster import run_workload

    async with cluster.session() as engines:
        vocab = min(e.info["vocab_size"] for e in engines.values())
        spec = config.workload
        if spec.vocab_size > vocab:
            spec = spec.model_copy(update={"vocab_size": vocab})
        spec = spec.model_copy(update={"seed": config.seed})
        workload = generate(spec)
        s = config.cluster.strategy
        echo = config.model_dump(mode="json")
        if faults is None:
            result = await run_workload(list(engines.values()), workload, s.name, s.params, config.seed, echo)
        else:
            from real.faults import run_with_faults

            result = await run_with_faults(cluster, dict(engines), workload, s.name, s.params, faults,
                                           seed=config.seed, config_echo=echo)
            print(f"faults applied: {[f.model_dump(exclude_none=True) for f in faults.faults]}", file=sys.stderr)
        from real.cluster import check_no_leaks

        await check_no_leaks([e for e in engines.values() if e.healthy])  # raises KVLeakError naming the engine
    print(f"strategy {s.name} on {len(engines)} engines; {len(workload)} requests at {spec.arrival.rate:g} req/s "
          f"(seed {config.seed}); {result.wall_time_s:.2f} s wall")
    print(format_table(result.metrics()))
    for eid, st in result.engine_stats.items():
        if "down" in st or "error" in st:
            print(f"  {eid}: {st.get('down') or st.get('error')}")
        else:
            print(f"  {eid}: {st['steps']} steps, busy {st['busy_s']:.2f} s, {st['forward_tokens']} tokens computed, "
                  f"prefix hits {st['prefix_hit_tokens']}, KV sent {st['kv_bytes_sent'] / 2**20:.1f} MiB, "
                  f"pages used {st['pages']['used']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(result.to_json())
        print(f"wrote {args.out}")
    if args.out_vllm:
        from core_api.vllm_format import save_vllm_result, traffic_of
        from real.loading import load_tokenizer

        model = next(iter(engines.values())).info["model"]
        tokenizer = load_tokenizer(model)
        rate, burstiness = traffic_of(spec)
        save_vllm_result(args.out_vllm, result.records, result.metrics(), backend="microserving-real",
                         model_id=model, request_rate=rate, burstiness=burstiness,
                         generated_texts=[tokenizer.decode(r.token_ids) for r in result.records])
        print(f"wrote {args.out_vllm}")
    failed = [r for r in result.records if r.status != "ok"]
    if failed:
        print(f"{len(failed)} of {len(result.records)} requests failed: "
              + ", ".join(f"{n} {kind}" for kind, n in failures_by_kind(result.records).items()), file=sys.stderr)
    for r in failed[:5]:
        print(f"  failed {r.request_id}: {r.reason}", file=sys.stderr)
    # Injected faults fail requests by design: then only a run where nothing succeeded is an error.
    if faults is not None:
        return 1 if len(failed) == len(result.records) else 0
    return 1 if failed else 0
