"""What benchmark clients need besides completions: the served model's tokenizer as a Hugging Face
directory (encoding exactly like the engines' tokenizer), and vLLM's /tokenize and /detokenize."""
from __future__ import annotations

import json

import httpx
import pytest
from tokenizers import Tokenizer

from microserving.cli import main
from real.hf_tokenizer_export import export_hf_tokenizer
from real.tokenizer import ByteTokenizer

TEXTS = ["hello world", "naïve café ✓ 日本語 🙂", "12345 <|im_start|>user\nhi<|im_end|>", "  spaces\n\ttabs", ""]


def _same(ours, directory) -> None:
    hf = Tokenizer.from_file(str(directory / "tokenizer.json"))
    for text in TEXTS:
        ids = ours.encode(text)
        assert hf.encode(text, add_special_tokens=False).ids == ids, text
        assert hf.decode(ids, skip_special_tokens=False) == ours.decode(ids)
    config = json.loads((directory / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast" and "chat_template" in config


def test_the_byte_tokenizer_exports_as_an_identical_hf_tokenizer(tmp_path):
    export_hf_tokenizer(ByteTokenizer(), tmp_path, 4096)
    _same(ByteTokenizer(), tmp_path)


@pytest.mark.slow
def test_smollm2s_tokenizer_exports_from_the_command_line(tmp_path, capsys):
    from real.tokenizer import smollm2_tokenizer

    assert main(["serve", "--model", "smollm2", "--export-tokenizer", str(tmp_path)]) == 0
    _same(smollm2_tokenizer(), tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["eos_token"] == "<|im_end|>" and config["bos_token"] == "<|im_start|>"


def test_tokenize_detokenize_and_continuous_usage(srv_tiny):
    url = srv_tiny.url
    r = httpx.post(url + "/tokenize", json={"model": "tiny", "prompt": "héllo"})
    assert r.status_code == 200 and r.json()["tokens"] == list("héllo".encode()) and r.json()["count"] == 6
    assert r.json()["max_model_len"] > 0
    chat = httpx.post(url + "/tokenize", json={"messages": [{"role": "user", "content": "hi"}]}).json()
    assert bytes(chat["tokens"]).decode() == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert httpx.post(url + "/detokenize", json={"tokens": list(b"back")}).json() == {"prompt": "back"}
    bad = httpx.post(url + "/detokenize", json={"tokens": [70000]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"
    assert httpx.post(url + "/tokenize", json={"prompt": "x", "messages": []}).status_code == 400
    assert httpx.post(url + "/tokenize", json={"model": "gpt-4", "prompt": "x"}).status_code == 404

    body = {"model": "tiny", "prompt": "count me", "max_tokens": 6, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    chunks = []
    with httpx.stream("POST", url + "/v1/completions", json=body) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: {"):
                chunks.append(json.loads(line[6:]))
    seen = [c["usage"]["completion_tokens"] for c in chunks]
    assert all(c["usage"] is not None and c["usage"]["prompt_tokens"] == 8 for c in chunks)
    assert seen == sorted(seen) and seen[-1] == 6, seen


@pytest.fixture(scope="module")
def srv_tiny():
    from real.cluster import RealCluster
    from real.serve.config import ServeConfig
    from real.serve.server import BackgroundServer

    with BackgroundServer(RealCluster.local(1, num_pages=64), ServeConfig(port=0)) as server:
        yield server


def test_vllm_named_metrics_count_what_ran(srv_tiny):
    """vLLM's families and labels, so its dashboards read this server: after one 6-token request
    that hit its length limit, the counters and the inter-token histogram say exactly that."""
    from prometheus_client.parser import text_string_to_metric_families

    url = srv_tiny.url

    def samples() -> dict:
        text = httpx.get(url + "/metrics").text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(text) for s in f.samples}

    before = samples()
    r = httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": "abc", "max_tokens": 6, "ignore_eos": True})
    assert r.status_code == 200
    after = samples()
    m = (("model_name", "tiny"),)

    def grew(name: str, labels=m) -> float:
        return after[(name, labels)] - before.get((name, labels), 0.0)

    assert grew("vllm:generation_tokens_total") == 6 and grew("vllm:prompt_tokens_total") == 3
    assert grew("vllm:request_success_total", (("finished_reason", "length"), *m)) == 1
    assert grew("vllm:inter_token_latency_seconds_count") == 5  # gaps between 6 tokens
    assert grew("vllm:time_to_first_token_seconds_count") == 1
    assert ("vllm:kv_cache_usage_perc", m) in after and ("vllm:num_requests_waiting", m) in after
