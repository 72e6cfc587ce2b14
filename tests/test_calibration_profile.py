"""calibration.profile: the in-process step profiler puts the shapes it claims on a real engine."""
import pytest

from calibration.profile import (
    GridSpec,
    ProfileSettings,
    _idle,
    _stream,
    grid_points,
    idle_points,
    profile_steps,
    sim_model,
    stream_points,
)
from calibration.step_profiler import StepProfiler
from real.config import EngineSpec
from real.model_config import LlamaConfig
from sim.hardware import MODEL_PRESETS

SMALL = EngineSpec(num_pages=256, max_num_batched_tokens=128, max_num_seqs=8)


def test_real_tiny_model_is_the_sims_tiny_llama():
    assert sim_model(LlamaConfig.preset("tiny")) == "tiny-llama"
    spec = sim_model(LlamaConfig.preset("smollm2-135m"))
    assert spec == "SmolLM2-135M" or spec.name == "smollm2-135m"
    assert MODEL_PRESETS["tiny-llama"].head_dim == LlamaConfig.preset("tiny").head_dim


def test_grid_skips_shapes_the_engine_cannot_run():
    s = ProfileSettings(engine=SMALL)
    for kind, args in grid_points(s):
        if kind == "prefill":
            n, c, k, _ = args
            assert k * n <= 128 and k * (c + n + 1) <= 256 * 16
        elif kind == "decode":
            assert args[0] <= 8
        else:
            b, _, n, _, _ = args
            assert b + n <= 128 and b + 1 <= 8
    kinds = {k for k, _ in grid_points(s)}
    assert kinds == {"prefill", "decode", "mixed"}


def test_profiled_steps_have_the_requested_features():
    p = StepProfiler(SMALL, seed=0)
    try:
        seqs = [p.add(32, 16) for _ in range(2)]
        t = p.step(budget=32)
        p.release(seqs)
        f = t.features
        assert (f.prefill_tokens, f.prefill_seqs, f.prefill_attn, f.sampled) == (32, 2, 2 * 16 * (32 + 8), 2)
        assert f.prefill_context == 2 * (32 + 16)
        assert t.seconds > 0
        seq = p.add(0, 40)  # a chunk of 24 that does not reach the prompt's end: no sample
        t = p.step(budget=24)
        p.release([seq])
        assert (t.features.prefill_tokens, t.features.sampled) == (24, 0)
        decoders = [p.add(64, 1, max_tokens=4) for _ in range(3)]
        p.step()
        t = p.step()
        p.release(decoders)
        assert (t.features.decode_seqs, t.features.decode_context, t.features.prefill_tokens) == (3, 3 * 66, 0)
        assert p.idle() and p.sched.kv.stats().used == 0
    finally:
        p.close()


def test_profile_steps_covers_every_kind():
    grid = GridSpec(prefill_tokens=[8, 32], prefill_context=[0, 64], prefill_seqs=[1, 2], decode_seqs=[1, 4],
                    decode_context=[32], mixed_decode=[(2, 32)], mixed_prefill=[(16, 0)], transfer_pages=[])
    samples = profile_steps(ProfileSettings(engine=SMALL, grid=grid, warmup=0, repeats=2, rounds=2, transfers=False))
    by_kind = {k: [s for s in samples if s.kind == k] for k in ("prefill", "decode", "mixed")}
    assert all(by_kind.values())
    assert all(len(s.times_s) == 4 and s.time_s > 0 for s in samples)
    nosample = next(s for s in samples if s.label == "prefill n=8 ctx=64 x1 nosample")
    assert nosample.features == pytest.approx({"prefill_tokens": 8, "prefill_seqs": 1, "prefill_attn": 8 * 68,
                                               "prefill_context": 64 + 8})


def test_step_samples_send_no_stream_message_and_stream_samples_measure_them():
    """Streaming is timed apart from steps (the simulator charges it per message, sim.stream_cost):
    a step sample sends nothing to the router, a stream sample sends exactly its messages."""
    p = StepProfiler(SMALL, seed=0)
    out = p.worker.stream_out
    try:
        seqs = [p.add(32, 1, max_tokens=6) for _ in range(2)]
        for _ in range(4):
            p.step()
        p.release(seqs)
        assert (out.messages, out.tokens) == (0, 0)
        sample = _stream(p, 2, 2, repeats=2)
        m = 8  # messages per streaming block: 16 timed steps / 2 steps per message
        # per repeat: the first tokens' message, then m messages of 2 tokens x 2 steps
        assert out.messages == 2 * (1 + m) and out.tokens == 2 * (2 + 2 * m * 2)
        assert (sample.seqs, sample.steps, sample.tokens, len(sample.extras_s)) == (2, 2, 4, 2)
        assert out.interval_s == SMALL.stream_interval_s  # restored
        assert p.idle() and p.sched.kv.stats().used == 0
    finally:
        p.close()


def test_stream_points_fit_the_engine():
    s = ProfileSettings(engine=SMALL, grid=GridSpec(stream_seqs=[1, 8, 64], stream_steps=[1, 4]))
    assert stream_points(s) == [(1, 1), (1, 4), (8, 1), (8, 4)]  # 64 > max_num_seqs


def test_idle_samples_time_a_step_after_the_engines_poll_waited_against_one_after_a_step():
    p = StepProfiler(SMALL, seed=0)
    try:
        sample = _idle(p, 16, 2, repeats=2)
        assert (sample.idle_s, sample.tokens, len(sample.extras_s)) == (0.002, 16, 2)
        assert sample.extra_s == pytest.approx(sum(sample.extras_s) / 2)
        assert p.idle() and p.sched.kv.stats().used == 0
    finally:
        p.close()


def test_idle_points_fit_the_engine():
    s = ProfileSettings(engine=SMALL, grid=GridSpec(idle_ms=[1, 30], idle_tokens=[16, 10_000]))
    assert idle_points(s) == [(16, 1), (16, 30)]  # 10k tokens exceed the engine's token budget
