"""Profile a real engine: a grid of step shapes, timed in-process, plus KV transfers between
two engine processes. Produces a ProfileSamples (JSON/CSV) for calibration.fit.

Grid (defaults keep the tiny model on one CPU core to about a minute):
- prefill: chunks of n tokens over c tokens of already-cached context, for k sequences per
  step; single chunks with and without sampling (a remote_send chunk never samples);
- decode: B sequences at context L;
- mixed: a decode batch plus one prefill chunk (what continuous batching mostly runs).
Shapes larger than the engine's own limits (token budget, max sequences, KV pages) are
skipped: they never happen on the engine the profile is for. Besides the grid: stream samples
(what sending tokens to the router costs, StreamSample) and idle samples (the slower first step
after the engine sat idle, IdleSample), each timed against the same steps without it.

Every grid point runs `warmup` untimed steps and `repeats` timed ones, and the whole grid is
measured `rounds` times over; a sample is the median time (and mean features) of all its timed
steps. Rounds matter on a shared machine: a burst of foreign load that lasts a second hits one
round of many points instead of every repeat of one point, and the median drops it. Further
noise control: see calibration.environment.
"""
from __future__ import annotations

import datetime as _dt
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from calibration import environment
from calibration.cluster_profile import profile_cluster
from calibration.fit import engine_version
from calibration.samples import IdleSample, ProfileSamples, StepSample, StreamSample
from calibration.step_profiler import ProfileError, StepProfiler, Timed
from real.config import EngineSpec
from sim.hardware import MODEL_PRESETS, ModelSpec

Progress = Callable[[int, int, str], None]  # (done, total, label of the point just measured)
DTYPE_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


class GridSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prefill_tokens: list[int] = [1, 16, 64, 128, 256, 512]
    prefill_context: list[int] = [0, 128, 512, 1536]
    prefill_seqs: list[int] = [1, 3]
    decode_seqs: list[int] = [1, 2, 4, 8, 16, 32, 64]
    decode_context: list[int] = [16, 128, 512, 2048]
    mixed_decode: list[tuple[int, int]] = [(4, 128), (16, 512), (48, 64)]  # (sequences, context)
    mixed_prefill: list[tuple[int, int]] = [(1, 256), (32, 0), (128, 256), (320, 0)]  # (tokens, context)
    transfer_pages: list[int] = [1, 4, 16, 32, 64, 128]
    stream_seqs: list[int] = [1, 4, 16, 64]  # decoding sequences streaming to the router
    stream_steps: list[int] = [1, 2, 4]  # steps per stream message
    idle_ms: list[int] = [1, 3, 10, 30, 100, 300]  # idle spells before a timed step
    idle_tokens: list[int] = [32, 256]  # prefill sizes of the step after them


class ProfileSettings(BaseModel):
    """Everything a profiling run needs; the engine is configured as the engines to simulate."""

    model_config = ConfigDict(extra="forbid")

    engine: EngineSpec = EngineSpec()
    grid: GridSpec = GridSpec()
    warmup: int = Field(2, ge=0, description="untimed steps per grid point and round")
    repeats: int = Field(5, ge=1, description="timed steps per grid point and round")
    rounds: int = Field(3, ge=1, description="passes over the whole grid; a sample is the median of all")
    transfer_repeats: int = Field(9, ge=1)
    stream_repeats: int = Field(6, ge=2, description="repeats per stream sample (fresh sequences each; pairs)")
    idle_repeats: int = Field(12, ge=1, description="pairs per idle sample (a step after the spell, one after a step)")
    seed: int = 0
    core: int | None = Field(None, description="pin the profiler to this core (default: the last one)")
    transfers: bool = True


# -- the grid ------------------------------------------------------------------------------
def grid_points(s: ProfileSettings) -> list[tuple[str, tuple]]:
    """(kind, args) per grid point, limited to what the engine can run."""
    e, g = s.engine, s.grid
    budget, max_seqs, cap = e.max_num_batched_tokens, e.max_num_seqs, e.num_pages * e.page_size
    limit = e.max_model_len - 1
    points: list[tuple[str, tuple]] = []
    for n in g.prefill_tokens:
        for c in g.prefill_context:
            for k in g.prefill_seqs:
                for sample in ((True, False) if k == 1 else (True,)):
                    if k * n <= budget and k <= max_seqs and c + n < limit and k * (c + n + 1) <= cap:
                        points.append(("prefill", (n, c, k, sample)))
    for b in g.decode_seqs:
        for ctx in g.decode_context:
            if b <= min(budget, max_seqs) and b * (ctx + 64) <= cap and ctx + 64 < limit:
                points.append(("decode", (b, ctx)))
    for b, ctx in g.mixed_decode:
        for n, c in g.mixed_prefill:
            for sample in (True, False):
                fits = b + n <= budget and b + 1 <= max_seqs and b * (ctx + 128) + c + n + 1 <= cap
                if fits and ctx + 128 < limit and c + n < limit:
                    points.append(("mixed", (b, ctx, n, c, sample)))
    return points


STREAM_CONTEXT = 128  # context of the streaming sequences (the message cost does not depend on it)
STREAM_BLOCK_STEPS = 16  # timed steps per block, at least


def stream_points(s: ProfileSettings) -> list[tuple[int, int]]:
    """(sequences, steps per message) of the stream samples, limited to what the engine can run."""
    e, g = s.engine, s.grid
    points = []
    for b in g.stream_seqs:
        for k in g.stream_steps:
            steps = _stream_steps(k)
            if b <= min(e.max_num_batched_tokens, e.max_num_seqs) and b * (STREAM_CONTEXT + steps + 16) <= \
                    e.num_pages * e.page_size and STREAM_CONTEXT + steps < e.max_model_len:
                points.append((b, k))
    return points


def _stream_steps(k: int) -> int:
    """Steps one repeat of a stream point runs: two blocks of m messages of k steps, each block
    with an untimed first step and one timed step after its last message."""
    m = max(2, -(-STREAM_BLOCK_STEPS // k))
    return 2 * (m * k + 2) + 1


def _stream(p: StepProfiler, b: int, k: int, repeats: int) -> StreamSample:
    """The added time per stream message of b sequences every k steps (see StreamSample).

    Each repeat runs b fresh decoding sequences through two blocks of m*k timed steps, one
    streaming (a message at the end of every k-th step) and one not, in alternating order.
    A block's first step is untimed (it carries the previous block's after-effects) and one step
    after the last message is timed (it carries this block's), so each block holds exactly m
    messages, their tokens and the steps after them."""
    m = max(2, -(-STREAM_BLOCK_STEPS // k))
    out = p.worker.stream_out
    saved = out.interval_s
    out.interval_s = float("inf")  # messages go out exactly where the block sends them
    extras = []
    try:
        for r in range(repeats):
            seqs = [p.add(STREAM_CONTEXT, 1, max_tokens=_stream_steps(k) + 2, stream=True) for _ in range(b)]
            handles = [s.handle for s in seqs]
            p.step(flush=True)  # the one-token prefill and the first tokens' message
            total = {}
            for streaming in ((True, False) if r % 2 == 0 else (False, True)):
                for s in seqs:
                    s.handle = None
                p.step()  # untimed
                for s, h in zip(seqs, handles):
                    s.handle = h if streaming else None
                t = 0.0
                for j in range(1, m * k + 2):
                    if j == m * k + 1:
                        for s in seqs:
                            s.handle = None
                    t += p.step(flush=streaming and j % k == 0 and j <= m * k).seconds
                total[streaming] = t
            p.release(seqs)
            extras.append((total[True] - total[False]) / m)
    finally:
        out.interval_s = saved
    # The second block of a repeat runs at a longer context than the first: the mean of two
    # repeats in opposite orders cancels that.
    pairs = [(a + b) / 2 for a, b in zip(extras[::2], extras[1::2])]
    return StreamSample(seqs=b, steps=k, tokens=b * k, extra_s=statistics.median(pairs), extras_s=extras)


def _sample(kind: str, label: str, runs: list[Timed]) -> StepSample:
    keys = asdict(runs[0].features).keys()
    features = {k: float(np.mean([getattr(r.features, k) for r in runs])) for k in keys}
    return StepSample(kind=StepSample.kind_of(runs[0].features) if kind != "mixed" else "mixed", label=label,
                      features={k: v for k, v in features.items() if v}, time_s=statistics.median(r.seconds for r in runs),
                      times_s=[r.seconds for r in runs])


def _prefill(p: StepProfiler, n: int, c: int, k: int, sample: bool, warmup: int, repeats: int) -> list[Timed]:
    runs = []
    for r in range(warmup + repeats):
        seqs = [p.add(c, n if sample else n + 1) for _ in range(k)]
        t = p.step(budget=k * n)
        p.release(seqs)
        if r >= warmup:
            runs.append(t)
    return runs


def _decode(p: StepProfiler, b: int, ctx: int, warmup: int, repeats: int) -> list[Timed]:
    seqs = [p.add(ctx, 1, max_tokens=warmup + repeats + 2) for _ in range(b)]
    p.step()  # each sequence's last prompt token (a 1-token prefill), then pure decode steps
    runs = [p.step() for _ in range(warmup + repeats)][warmup:]
    p.release(seqs)
    return runs


def _mixed(p: StepProfiler, b: int, ctx: int, chunks: list[tuple[int, int, bool]], warmup: int, repeats: int):
    """One decode batch, then for each (tokens, context, sample) chunk its timed mixed steps."""
    steps = len(chunks) * (warmup + repeats) + 2
    seqs = [p.add(ctx, 1, max_tokens=steps + 1) for _ in range(b)]
    p.step()
    out = []
    for n, c, sample in chunks:
        runs = []
        for r in range(warmup + repeats):
            new = p.add(c, n if sample else n + 1)
            t = p.step(budget=b + n)
            p.release([new])
            if r >= warmup:
                runs.append(t)
        out.append(runs)
    p.release(seqs)
    return out


def profile_steps(s: ProfileSettings, progress: Progress | None = None) -> list[StepSample]:
    points = grid_points(s)
    if not points:
        raise ProfileError("the grid has no point this engine can run (check budget, max_num_seqs, num_pages)")
    profiler = StepProfiler(s.engine, s.seed)
    runs: dict[str, tuple[str, list[Timed]]] = {}
    done, total = 0, len(points) * s.rounds

    def note(label: str) -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, total, label)

    def record(kind: str, label: str, timed: list[Timed]) -> None:
        runs.setdefault(label, (kind, []))[1].extend(timed)
        note(label)

    mixed: dict[tuple[int, int], list[tuple[int, int, bool]]] = {}
    for kind, args in points:
        if kind == "mixed":
            b, ctx, n, c, sample = args
            mixed.setdefault((b, ctx), []).append((n, c, sample))
    w, r = s.warmup, s.repeats
    try:
        _prefill(profiler, 64, 0, 2, True, 5, 0)  # warm the process: allocator, kernels, caches
        for _ in range(s.rounds):
            for kind, args in points:
                if kind == "prefill":
                    n, c, k, sample = args
                    label = f"prefill n={n} ctx={c} x{k}{'' if sample else ' nosample'}"
                    record(kind, label, _prefill(profiler, n, c, k, sample, w, r))
                elif kind == "decode":
                    b, ctx = args
                    record(kind, f"decode B={b} ctx={ctx}", _decode(profiler, b, ctx, w, r))
            for (b, ctx), chunks in mixed.items():
                for (n, c, sample), timed in zip(chunks, _mixed(profiler, b, ctx, chunks, w, r)):
                    record("mixed", f"mixed B={b} ctx={ctx} + n={n} ctx={c}{'' if sample else ' nosample'}", timed)
    finally:
        profiler.close()
    return [_sample(kind, label, timed) for label, (kind, timed) in runs.items()]


def _each_point(s: ProfileSettings, seed_offset: int, points: list[tuple], measure: Callable, label: Callable,
                progress: Progress | None):
    """measure(profiler, *point) for every point, on one fresh in-process engine warmed as the step
    profile warms its own."""
    if not points:
        return []
    profiler = StepProfiler(s.engine, s.seed + seed_offset)
    out = []
    try:
        _prefill(profiler, 64, 0, 2, True, 5, 0)  # warm the process: allocator, kernels, caches
        for i, point in enumerate(points):
            out.append(measure(profiler, *point))
            if progress:
                progress(i + 1, len(points), label(*point))
    finally:
        profiler.close()
    return out


def profile_streams(s: ProfileSettings, progress: Progress | None = None) -> list[StreamSample]:
    return _each_point(s, 3, stream_points(s), lambda p, b, k: _stream(p, b, k, s.stream_repeats),
                       lambda b, k: f"stream B={b} every {k} steps", progress)


def idle_points(s: ProfileSettings) -> list[tuple[int, int]]:
    """(prefill tokens, idle ms) of the idle samples, limited to what the engine can run."""
    e = s.engine
    sizes = [n for n in s.grid.idle_tokens
             if n <= e.max_num_batched_tokens and n + 2 < e.max_model_len and n + 2 <= e.num_pages * e.page_size]
    return [(n, ms) for n in sizes for ms in s.grid.idle_ms]


def _idle(p: StepProfiler, n: int, idle_ms: int, repeats: int) -> IdleSample:
    """The added time of an n-token prefill step after the engine's poll waited idle_ms for work,
    against the same step after another one: pairs of repeats in alternating order, each timed
    step preceded by an untimed one, so both start from a step's warm state."""
    extras = []
    for r in range(repeats):
        pair = {}
        for after_idle in ((True, False) if r % 2 == 0 else (False, True)):
            _prefill(p, n, 0, 1, True, 1, 0)
            if after_idle:
                p.worker._poll(idle_ms)  # what an idle engine loop does: block on its socket
            pair[after_idle] = _prefill(p, n, 0, 1, True, 0, 1)[0].seconds
        extras.append(pair[True] - pair[False])
    return IdleSample(idle_s=idle_ms / 1000, tokens=n, extra_s=statistics.median(extras), extras_s=extras)


def profile_idle(s: ProfileSettings, progress: Progress | None = None) -> list[IdleSample]:
    return _each_point(s, 5, idle_points(s), lambda p, n, ms: _idle(p, n, ms, s.idle_repeats),
                       lambda n, ms: f"step of {n} tokens after {ms} ms idle", progress)


# -- the whole run -------------------------------------------------------------------------
def sim_model(config) -> str | ModelSpec:
    """The simulator's name for a real LlamaConfig: a preset with the same shape, else inline."""
    spec = ModelSpec(name=config.name, num_layers=config.num_layers, hidden_size=config.hidden_size,
                     num_heads=config.num_heads, num_kv_heads=config.num_kv_heads, head_dim=config.head_dim,
                     ffn_size=config.intermediate_size, vocab_size=config.vocab_size,
                     max_context=config.max_position_embeddings, tied_embeddings=config.tie_word_embeddings)
    shape = spec.model_dump(exclude={"name", "max_context", "dtype"})
    for name, preset in MODEL_PRESETS.items():
        if preset.model_dump(exclude={"name", "max_context", "dtype"}) == shape:
            return name
    return spec


def run_profile(s: ProfileSettings, progress: Progress | None = None) -> ProfileSamples:
    core = s.core if s.core is not None else environment.default_core()
    created = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    load_before = environment.load_average()
    with environment.controlled_cpu(s.engine.threads, core) as control, environment.ForeignLoad() as foreign:
        t0 = time.perf_counter()
        steps = profile_steps(s, progress)
        step_wall = time.perf_counter() - t0
        streams = profile_streams(s, progress)
        idle = profile_idle(s, progress)
        env = environment.describe(s.engine.device)  # threads and affinity as the steps ran
    config = model_config_of(s.engine)
    kv_bytes = config.kv_bytes_per_token()
    transfers, router = profile_cluster(s, kv_bytes, config.vocab_size, progress) if s.transfers else ([], None)
    env.update({
        "control": control, "foreign_cpu_share": foreign.share, "load_average_before": load_before,
        "load_average_after": environment.load_average(), "step_profile_wall_s": round(step_wall, 2),
        "warmup": s.warmup, "repeats": s.repeats, "rounds": s.rounds, "transfer_repeats": s.transfer_repeats,
        "stream_repeats": s.stream_repeats, "idle_repeats": s.idle_repeats,
        "engine": s.engine.model_dump(exclude={"listen", "exit_with_parent"}), "grid": s.grid.model_dump(),
        "router": router,
    })
    return ProfileSamples(
        hardware=environment.device_name(s.engine.device), model=sim_model(config),
        dtype=DTYPE_NAMES[config.dtype], tp=1, page_size=s.engine.page_size, kv_bytes_per_token=kv_bytes,
        engine_version=engine_version(), created=created, environment=env, steps=steps, transfers=transfers,
        streams=streams, idle=idle)


def model_config_of(spec: EngineSpec):
    """The LlamaConfig an engine with this spec runs (without loading weights where avoidable)."""
    from real.model_config import PRESETS

    name = spec.model_name
    if name in PRESETS:
        config = PRESETS[name]
        return config.model_copy(update={"dtype": spec.dtype}) if spec.dtype else config
    from real.loading import load_model

    return load_model(name, "cpu", spec.model_seed, spec.dtype, False).config
