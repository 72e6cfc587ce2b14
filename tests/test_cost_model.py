"""Roofline and fitted cost models, and the calibration profile schema."""
import json
import time

import pytest

from core_api.step import StepFeatures
from sim.cost_model import CostModel, FittedCostModel, RooflineCostModel
from sim.hardware import get_gpu, get_model, weight_bytes_per_gpu
from sim.profile import KNOWN_COEFFICIENTS, CostProfile, ProfileError


def prefill(tokens, ctx=0, seqs=1):
    return StepFeatures(prefill_tokens=tokens, prefill_seqs=seqs, prefill_attn=tokens * (ctx + tokens / 2),
                        sampled=seqs)


def decode(seqs, ctx_each):
    return StepFeatures(decode_seqs=seqs, decode_context=seqs * ctx_each, sampled=seqs)


@pytest.fixture
def h100_8b():
    return RooflineCostModel("H100-SXM", "Llama-3.1-8B")


def test_protocol_and_empty_step(h100_8b):
    assert isinstance(h100_8b, CostModel)
    assert h100_8b.step_time(StepFeatures()) == 0.0
    d = h100_8b.describe()
    assert (d["kind"], d["gpu"], d["model"], d["tp"]) == ("roofline", "H100-SXM", "Llama-3.1-8B", 1)
    json.dumps(d)


def test_monotonic_in_tokens_and_context(h100_8b):
    pre = [h100_8b.step_time(prefill(n)) for n in (1, 16, 128, 512, 2048, 8192)]
    assert pre == sorted(pre) and len(set(pre)) == len(pre)
    ctx = [h100_8b.step_time(prefill(256, c)) for c in (0, 1000, 10000, 100000)]
    assert ctx == sorted(ctx) and len(set(ctx)) == len(ctx)
    dec = [h100_8b.step_time(decode(b, 2000)) for b in (1, 8, 64, 256)]
    assert dec == sorted(dec) and len(set(dec)) == len(dec)
    dctx = [h100_8b.step_time(decode(16, c)) for c in (100, 1000, 10000)]
    assert dctx == sorted(dctx) and len(set(dctx)) == len(dctx)


def test_small_decode_is_memory_bound(h100_8b):
    gpu, model = get_gpu("H100-SXM"), get_model("Llama-3.1-8B")
    # Every weight a decode step reads, once, at peak bandwidth (of the embedding table only a row).
    floor = (weight_bytes_per_gpu(model) - model.embedding_params * 2) / gpu.hbm_bandwidth_Bps
    t1 = h100_8b.step_time(decode(1, 512))
    fixed = model.num_layers * h100_8b.eff.layer_overhead_s + h100_8b.eff.step_overhead_s
    # Beyond the fixed per-layer costs, reading the weights at the achieved bandwidth is the step.
    assert floor < t1 - fixed < 1.1 * floor / h100_8b.eff.memory
    # Memory bound: 8 sequences cost barely more than one.
    assert h100_8b.step_time(decode(8, 512)) < 1.1 * t1


def test_long_prefill_is_compute_bound(h100_8b):
    model = get_model("Llama-3.1-8B")
    n = 8192
    linear = 2 * model.num_layers * model.linear_params_per_layer * n / (989.4e12 * h100_8b.eff.compute)
    t = h100_8b.step_time(prefill(n))
    assert linear < t < 1.6 * linear  # GEMMs dominate; attention and elementwise add the rest
    assert h100_8b.step_time(prefill(2 * n)) > 1.9 * t


def test_fp8_faster_than_bf16():
    bf16 = RooflineCostModel("H100-SXM", "Llama-3.1-8B")
    fp8 = RooflineCostModel("H100-SXM", get_model("Llama-3.1-8B", dtype="fp8"))
    for f in (decode(1, 512), decode(64, 2000), prefill(4096), prefill(512, 4096)):
        assert fp8.step_time(f) < 0.8 * bf16.step_time(f)
    # A100 has no FP8 tensor cores: compute-bound prefill gains only from the lighter memory traffic.
    a_bf16 = RooflineCostModel("A100-80G", "Llama-3.1-8B")
    a_fp8 = RooflineCostModel("A100-80G", get_model("Llama-3.1-8B", dtype="fp8"))
    assert a_fp8.step_time(prefill(8192)) > 0.9 * a_bf16.step_time(prefill(8192))


def test_fp8_weights_beside_16_bit_kv_read_and_attend_in_16_bits():
    fp8 = RooflineCostModel("H100-SXM", get_model("Llama-3.1-8B", dtype="fp8"))
    kv16 = RooflineCostModel("H100-SXM", get_model("Llama-3.1-8B", dtype="fp8").model_copy(update={"kv_dtype": "bf16"}))
    bf16 = RooflineCostModel("H100-SXM", "Llama-3.1-8B")
    short, long_ctx = decode(64, 128), decode(64, 8000)
    # The weights are read in FP8 either way; the long contexts' KV reads cost twice as much in 16 bits.
    assert kv16.step_time(short) < 1.1 * fp8.step_time(short) < 1.1 * 0.8 * bf16.step_time(short)
    assert kv16.step_time(long_ctx) > 1.3 * fp8.step_time(long_ctx)
    # A long prompt's attention runs at the 16-bit peak: slower than all-FP8, faster than all-16-bit.
    assert fp8.step_time(prefill(8192, 8192)) < kv16.step_time(prefill(8192, 8192)) < bf16.step_time(prefill(8192, 8192))


def test_tensor_parallel_all_reduce_cost():
    f = prefill(1024)
    L, h = 32, 4096
    base = RooflineCostModel("H100-SXM", "Llama-3.1-8B", tp=2)
    slow = RooflineCostModel("H100-SXM", "Llama-3.1-8B", tp=2, efficiency={"allreduce_latency_s": 1e-4})
    assert slow.step_time(f) - base.step_time(f) == pytest.approx(2 * L * (1e-4 - 20e-6))
    nbytes = 1024 * h * 2
    ring = 2 * (2 - 1) / 2 * nbytes / (450e9 * 0.7)
    assert base.allreduce_time(nbytes) == pytest.approx(20e-6 + ring)
    free = RooflineCostModel("H100-SXM", "Llama-3.1-8B", tp=2, efficiency={"allreduce_latency_s": 0, "network": 1})
    assert base.step_time(f) - free.step_time(f) == pytest.approx(
        2 * L * (20e-6 + ring) - 2 * L * ring * 0.7, rel=1e-9)
    # TP halves the per-GPU work but pays the all-reduce: faster, not twice as fast, for prefill.
    tp1 = RooflineCostModel("H100-SXM", "Llama-3.1-8B").step_time(f)
    assert tp1 / 2 < base.step_time(f) < tp1
    assert RooflineCostModel("H100-SXM", "Llama-3.1-8B").allreduce_time(nbytes) == 0.0


def test_classic_roofline_is_a_lower_bound(h100_8b):
    classic = RooflineCostModel("H100-SXM", "Llama-3.1-8B", efficiency={"overlap": 1.0})
    for f in (decode(1, 512), decode(256, 2000), prefill(300), prefill(4096)):
        assert classic.step_time(f) <= h100_8b.step_time(f)


COEF = {"const": 1e-3, "prefill_tokens": 2e-5, "prefill_seqs": 3e-4, "prefill_attn": 1e-9,
        "prefill_context": 4e-8, "decode_seqs": 5e-5, "decode_context": 2e-8, "sampled": 1e-6}


def profile_dict(**over):
    d = {"hardware": "cpu: test", "model": "tiny-llama", "dtype": "fp32", "tp": 1, "page_size": 16,
         "engine_version": "0.1.0", "coefficients": dict(COEF), "transfer": {"latency_s": 1e-4, "bandwidth_Bps": 1e9},
         "fit_error": {"prefill": 0.03, "decode": 0.05}, "sample_count": 120, "created": "2025-01-31",
         "environment": {"torch": "2.x", "threads": 1}}
    d.update(over)
    return d


def test_fitted_equals_linear_combination():
    m = FittedCostModel(COEF)
    f = StepFeatures(prefill_tokens=300, prefill_seqs=2, prefill_attn=45000.0, prefill_context=700, decode_seqs=7,
                     decode_context=7000, sampled=9)
    expect = 1e-3 + 2e-5 * 300 + 3e-4 * 2 + 1e-9 * 45000 + 4e-8 * 700 + 5e-5 * 7 + 2e-8 * 7000 + 1e-6 * 9
    assert m.step_time(f) == pytest.approx(expect, rel=1e-12)
    assert m.step_time(StepFeatures()) == 0.0
    assert set(KNOWN_COEFFICIENTS) == set(COEF)
    with pytest.raises(ValueError, match="bogus"):
        FittedCostModel({"bogus": 1.0})


def test_fitted_from_profile_and_scaling(tmp_path):
    path = tmp_path / "p.json"
    CostProfile.from_dict(profile_dict()).save(path)
    f = decode(4, 100)
    base = FittedCostModel.from_profile(str(path))
    assert base.describe()["profile"] == str(path) and base.describe()["kind"] == "fitted"
    up = FittedCostModel.from_profile(CostProfile.load(path), scale=1.05)
    assert up.step_time(f) == pytest.approx(1.05 * base.step_time(f))
    only_ctx = FittedCostModel.from_profile(CostProfile.load(path), scale={"decode_context": 2.0})
    assert only_ctx.step_time(f) - base.step_time(f) == pytest.approx(2e-8 * 400)
    with pytest.raises(ValueError, match="nope"):
        FittedCostModel.from_profile(CostProfile.load(path), scale={"nope": 2.0})


def test_a_profile_older_than_a_feature_loads_with_its_coefficient_zero(tmp_path):
    coef = {k: v for k, v in COEF.items() if k != "prefill_context"}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(profile_dict(coefficients=coef)))
    old = FittedCostModel.from_profile(str(path))
    assert old.coefficients["prefill_context"] == 0.0
    f = prefill(64, ctx=1000)
    f.prefill_context = 1064
    assert old.step_time(f) == pytest.approx(FittedCostModel(coef).step_time(prefill(64, ctx=1000)), rel=1e-12)
    assert CostProfile.load(path).rpc_latency_s is None  # nor do the control-call fields need to be there


def test_roofline_reads_the_exact_prefill_context_when_given(h100_8b):
    # Two chunks (1 token over 4000 cached, 255 over 0): the aggregate estimate misplaces the KV read.
    f = StepFeatures(prefill_tokens=256, prefill_seqs=2, prefill_attn=1 * 4000.5 + 255 * 127.5, sampled=1)
    exact = StepFeatures(**{**{k: getattr(f, k) for k in f.__slots__}, "prefill_context": 4001 + 255})
    assert h100_8b.step_time(exact) != h100_8b.step_time(f)
    more = StepFeatures(**{**{k: getattr(exact, k) for k in f.__slots__}, "prefill_context": 8000})
    assert h100_8b.step_time(more) > h100_8b.step_time(exact)
    one = prefill(300, ctx=200)  # one sequence: the estimate is exact
    filled = prefill(300, ctx=200)
    filled.prefill_context = 500
    assert h100_8b.step_time(one) == pytest.approx(h100_8b.step_time(filled), rel=1e-12)


def test_fitted_never_negative():
    assert FittedCostModel({"const": -1.0, "decode_seqs": 1e-6}).step_time(decode(1, 1)) == 0.0


@pytest.mark.parametrize("over, field", [
    ({"coefficients": {"const": 1.0, "prefill_tokenz": 1.0}}, "coefficients.*prefill_tokenz"),
    ({"tp": 0}, "tp"),
    ({"created": "last tuesday"}, "created"),
    ({"transfer": {"latency_s": 0, "bandwidth_Bps": -5}}, "transfer.bandwidth_Bps"),
    ({"dtype": "int3"}, "dtype"),
    ({"extra_field": 1}, "extra_field"),
    ({"model": {"name": "m", "num_layers": "many"}}, "model"),
])
def test_profile_schema_errors_name_the_field(tmp_path, over, field):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(profile_dict(**over)))
    with pytest.raises(ProfileError, match=field):
        CostProfile.load(path)


def test_profile_load_errors(tmp_path):
    d = profile_dict()
    del d["sample_count"]
    (tmp_path / "missing.json").write_text(json.dumps(d))
    with pytest.raises(ProfileError, match="sample_count"):
        CostProfile.load(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ProfileError, match="not JSON.*line 1"):
        CostProfile.load(tmp_path / "broken.json")
    with pytest.raises(ProfileError, match="cannot read"):
        CostProfile.load(tmp_path / "absent.json")


def test_profile_with_inline_model_spec():
    spec = get_model("tiny-llama").model_dump()
    p = CostProfile.from_dict(profile_dict(model=spec))
    assert p.model_name == "tiny-llama"


def test_step_time_is_cheap(h100_8b):
    fitted = FittedCostModel(COEF)
    f = StepFeatures(prefill_tokens=512, prefill_seqs=1, prefill_attn=512 * 700.0, decode_seqs=32,
                     decode_context=32 * 900, sampled=33)
    for model in (h100_8b, fitted):
        t0 = time.perf_counter()
        for _ in range(100_000):
            model.step_time(f)
        assert time.perf_counter() - t0 < 1.0  # ~1-2 us per call; generous for slow CI


def test_decode_rows_beside_a_prefill_chunk_read_their_kv_once_per_query_head():
    """In a step that also prefills, decode rows read their KV once per query head of the group
    (Llama-3.1-8B: 4, Qwen3-32B: 8), each read after the first at mixed_kv_reread of an HBM read;
    pure decode and pure prefill steps never pay it, nor does a model without grouped heads."""
    from sim.hardware import kv_bytes_per_token_per_gpu

    decode = StepFeatures(decode_seqs=64, decode_context=64 * 2000, decode_max_context=2000, sampled=64)
    mixed = prefill(512)
    mixed.decode_seqs, mixed.decode_context, mixed.sampled = 64, 64 * 2000, 65

    def one_more_read(model: str, reread: float) -> float:
        """Memory bound either way: the step's extra time over reading the decode KV once, in reads."""
        once = RooflineCostModel("H100-SXM", model, 1, {"mixed_kv_reread": 0.0})
        more = RooflineCostModel("H100-SXM", model, 1, {"mixed_kv_reread": reread})
        assert once.step_time(decode) == more.step_time(decode)
        assert once.step_time(prefill(512)) == more.step_time(prefill(512))
        read = 64 * 2000 * kv_bytes_per_token_per_gpu(once.model, 1) / (once.gpu.hbm_bandwidth_Bps * once.eff.memory)
        return (more.step_time(mixed) - once.step_time(mixed)) / read

    assert one_more_read("Llama-3.1-8B", 1.0) == pytest.approx(3.0, rel=1e-9)  # 4 query heads: 3 more reads
    assert one_more_read("Llama-3.1-8B", 1 / 3) == pytest.approx(1.0, rel=1e-9)
    assert one_more_read("Qwen3-32B", 1.0) == pytest.approx(7.0, rel=1e-9)  # 8 query heads
    assert one_more_read("Llama-2-7B", 1.0) == 0.0  # one query head per KV head


def test_an_engines_kv_dtype_halves_its_kv_bytes_and_doubles_its_pages():
    from sim.cluster import SimCluster
    from sim.config import ClusterConfig, EngineConfig

    plain, fp8_kv = EngineConfig(), EngineConfig(kv_dtype="fp8")
    assert plain.model_spec().kv_dtype is None and fp8_kv.model_spec().kv_dtype == "fp8"
    assert fp8_kv.model_spec().dtype == "bf16"  # the weights stay as they were
    pages = {}
    for name, engine in (("plain", plain), ("fp8", fp8_kv)):
        cluster = SimCluster(ClusterConfig(engines=[engine]))
        sim_engine = next(iter(cluster.engines.values()))
        pages[name] = sim_engine.sched.kv.num_pages
        long_ctx = decode(64, 8000)
        pages[name + "_step"] = sim_engine.cost_model.step_time(long_ctx)
    assert 1.9 < pages["fp8"] / pages["plain"] < 2.1
    assert pages["fp8_step"] < 0.85 * pages["plain_step"]
