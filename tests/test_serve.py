"""`microserving serve` end to end: a server on a free loopback port over 2 tiny-model engine
processes, driven with the official `openai` client (and raw httpx where the client would hide the
wire: malformed JSON, disconnects, admin headers). One server for the module keeps it fast.

Greedy decoding in batch-invariant mode is deterministic whatever the strategy, so the same prompt
gives the same text streamed or not, under round_robin or pd: the tests compare texts exactly.
"""
from __future__ import annotations

import time

import httpx
import openai
import pytest

from core_api.strategy import Strategy
from tests.serve_helpers import TOKEN, admin, no_leaks, openai_client, serving, stream_text

LIMIT = 256 * 16  # num_pages * page_size (= the tiny model's 4096 positions): each engine's context limit
PROMPTS = ["Hello, world", "The capital of France is", "a", "0123456789" * 7, "naïve café ✓"]


@pytest.fixture(scope="module")
def srv():
    with serving(strategy_modules=[__name__]) as server:  # this module's FailingStrategy
        yield server


@pytest.fixture(scope="module")
def client(srv):
    with openai_client(srv) as c:
        yield c


# -- the happy paths --------------------------------------------------------------------------------
def test_models_health_metrics(srv, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"
    health = httpx.get(srv.url + "/health").json()
    assert health["status"] == "ok" and set(health["engines"]) == {"e0", "e1"}
    text = httpx.get(srv.url + "/metrics").text
    for family in ("microserving_requests_total", 'vllm:time_to_first_token_seconds_bucket{le="0.001",model_name="tiny"}',
                   "vllm:inter_token_latency_seconds_bucket", "vllm:e2e_request_latency_seconds_count",
                   'vllm:num_requests_running{model_name="tiny"}', 'vllm:kv_cache_usage_perc{model_name="tiny"}',
                   'microserving_engine_pages_used{engine="e0"}', 'microserving_engine_waiting{engine="e1"}',
                   "microserving_requests_in_flight 0.0"):
        assert family in text, family


def test_completions_streamed_equals_whole(srv, client):
    for i, prompt in enumerate(PROMPTS):
        n = 8 + 9 * i
        whole = client.completions.create(model="tiny", prompt=prompt, max_tokens=n, temperature=0)
        text, reason, use = stream_text(client.completions.create(
            model="tiny", prompt=prompt, max_tokens=n, temperature=0, stream=True,
            stream_options={"include_usage": True}))
        assert text == whole.choices[0].text and reason == whole.choices[0].finish_reason == "length"
        prompt_tokens = len(prompt.encode())  # the tiny model's tokens are UTF-8 bytes
        assert whole.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"}) == \
            use.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"}) == \
            {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n}
    no_leaks(srv)


def test_token_id_prompt_matches_text_prompt(client):
    a = client.completions.create(model="tiny", prompt="Hello", max_tokens=6, temperature=0)
    b = client.completions.create(model="tiny", prompt=list(b"Hello"), max_tokens=6, temperature=0)
    assert a.choices[0].text == b.choices[0].text


def test_chat_streamed_equals_whole(srv, client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=24, temperature=0)
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=24, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert whole.choices[0].message.role == "assistant" and whole.choices[0].finish_reason == "length"
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens == whole.usage.prompt_tokens + 24
    # The tiny model's template is plain ChatML over bytes.
    rendered = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    assert whole.usage.prompt_tokens == len((rendered + "<|im_start|>assistant\n").encode())
    # max_completion_tokens is the newer name of max_tokens
    newer = client.chat.completions.create(model="tiny", messages=messages, max_completion_tokens=24, temperature=0)
    assert newer.choices[0].message.content == whole.choices[0].message.content
    no_leaks(srv)


def test_stop_string_cuts_the_text_and_frees_the_engine(srv, client):
    full = client.completions.create(model="tiny", prompt="stop here", max_tokens=40, temperature=0).choices[0].text
    stop = full[10:12]
    cut = full[:full.index(stop)]
    whole = client.completions.create(model="tiny", prompt="stop here", max_tokens=40, temperature=0, stop=[stop])
    text, reason, _ = stream_text(client.completions.create(
        model="tiny", prompt="stop here", max_tokens=40, temperature=0, stop=stop, stream=True))
    assert whole.choices[0].text == text == cut and whole.choices[0].finish_reason == reason == "stop"
    no_leaks(srv)


# -- switching the strategy at run time ----------------------------------------------------------------
def test_admin_switch_mid_run_keeps_in_flight_requests(srv, client):
    prompt, n = "switch me", 1000
    assert admin(srv).json()["current"]["name"] == "round_robin"
    before = [client.completions.with_raw_response.create(
        model="tiny", prompt=prompt, max_tokens=n, temperature=0, stream=True, stream_options={"include_usage": True})
        for _ in range(2)]
    assert [r.headers["x-microserving-strategy"] for r in before] == ["round_robin"] * 2
    try:
        switched = admin(srv, {"name": "pd", "params": {"prefill": ["e0"], "decode": ["e1"]}})
        assert switched.status_code == 200, switched.text
        body = switched.json()
        assert body["previous"]["name"] == "round_robin" and body["previous"]["in_flight"] == 2
        assert body["current"] == {"name": "pd", "params": {"prefill": ["e0"], "decode": ["e1"]},
                                   "version": body["previous"]["version"] + 1, "in_flight": 0, "served": 0}
        after = client.completions.with_raw_response.create(model="tiny", prompt=prompt, max_tokens=n, temperature=0)
        assert after.headers["x-microserving-strategy"] == "pd"
        new = after.parse()
        assert new.system_fingerprint == f"pd-v{body['current']['version']}"
        for raw in before:  # the in-flight requests finish, whole, under the strategy they started with
            chunks = list(raw.parse())
            assert {c.system_fingerprint for c in chunks} == {f"round_robin-v{body['previous']['version']}"}
            text = "".join(c.choices[0].text for c in chunks if c.choices)
            assert chunks[-1].usage.completion_tokens == n
            assert text == new.choices[0].text  # same greedy tokens under both strategies
        metrics = httpx.get(srv.url + "/metrics").text
        assert 'microserving_requests_total{endpoint="completions",status="ok",strategy="pd"}' in metrics
        assert admin(srv).json()["current"]["served"] >= 1
    finally:
        admin(srv, {"name": "round_robin"})
    no_leaks(srv)


def test_admin_params_only_and_bad_strategy(srv):
    try:
        r = admin(srv, {"name": "balanced_pd", "params": {"ratio": 0.3}})
        assert r.status_code == 200 and r.json()["current"]["params"] == {"ratio": 0.3}
        r = admin(srv, {"params": {"ratio": 0.5}})
        assert r.json()["current"] == {**r.json()["current"], "name": "balanced_pd", "params": {"ratio": 0.5}}
        bad = admin(srv, {"name": "no_such_strategy"})
        assert bad.status_code == 400 and "unknown strategy" in bad.json()["error"]["message"]
        bad = admin(srv, {"params": {"ratio": 7}})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_strategy"
        assert admin(srv).json()["current"]["params"] == {"ratio": 0.5}  # a failed switch changes nothing
    finally:
        admin(srv, {"name": "round_robin"})


def test_admin_refuses_without_token(srv):
    for token in (None, "wrong"):
        r = admin(srv, {"name": "pd"}, token=token)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert admin(srv, token=token).status_code == 401
        assert httpx.post(srv.url + "/admin/strategy", content=b"{bad").status_code == 401  # auth before body
    r = httpx.post(srv.url + "/admin/strategy", content=b"{bad", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = admin(srv, {"name": "pd", "colour": "blue"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "colour"
    assert admin(srv).json()["current"]["name"] == "round_robin"
    state = srv.state
    configured = state.config
    state.config = configured.model_copy(update={"admin_token": None})  # a server started without a token
    try:
        r = admin(srv, {"name": "pd"})
        assert r.status_code == 404 and "disabled" in r.json()["error"]["message"]
    finally:
        state.config = configured


class FailingStrategy(Strategy):
    """Reserves pages on an engine, then fails: the router must answer with an error and free them."""

    async def generate(self, req):
        await self.engines[0].prep_recv(req, end=-1)
        raise RuntimeError("strategy failed on purpose")
        yield  # an async generator, like every strategy


def test_strategy_failure_is_an_openai_error_and_frees_pages(srv, client):
    assert admin(srv, {"name": f"{__name__}:FailingStrategy"}).status_code == 200
    try:
        with pytest.raises(openai.InternalServerError) as e:
            client.completions.create(model="tiny", prompt="x" * 100, max_tokens=4)
        assert "failed on purpose" in e.value.body["message"] and e.value.body["type"] == "server_error"
        with pytest.raises(openai.APIError, match="failed on purpose"):  # in-band: the headers went out first
            list(client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x" * 100}],
                                                max_tokens=4, stream=True))
    finally:
        admin(srv, {"name": "round_robin"})
    no_leaks(srv)
    assert 'status="failed"' in httpx.get(srv.url + "/metrics").text


# -- bad input -----------------------------------------------------------------------------------------
def test_bad_inputs_get_openai_errors_without_disturbing_others(srv, client):
    reference = client.completions.create(model="tiny", prompt="undisturbed", max_tokens=300, temperature=0)
    running = client.completions.create(model="tiny", prompt="undisturbed", max_tokens=300, temperature=0, stream=True)

    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-4", prompt="x", max_tokens=4)
    assert e.value.body["code"] == "model_not_found" and e.value.body["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "x"}])

    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="x" * (LIMIT + 10), max_tokens=4)
    assert e.value.body["code"] == "context_length_exceeded" and str(LIMIT) in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:  # fits alone, not with the output asked for
        client.completions.create(model="tiny", prompt="x" * (LIMIT - 10), max_tokens=20)
    assert str(LIMIT) in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x" * LIMIT}])
    assert e.value.body["param"] == "messages" and str(LIMIT) in e.value.body["message"]

    for bad in (0, -1):
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model="tiny", prompt="x", max_tokens=bad)
        assert e.value.body["param"] == "max_tokens" and e.value.status_code == 400
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], max_tokens=0)

    for body, headers in ((b'{"model": "tiny", "prompt": ', {"content-type": "application/json"}),
                          (b"not json at all", {"content-type": "application/json"}),
                          (b"{bad", {}), (b"[1, 2]", {"content-type": "application/json"})):
        r = httpx.post(srv.url + "/v1/completions", content=body, headers=headers)
        assert r.status_code == 400, (body, r.text)
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
        assert r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(srv.url + "/v1/chat/completions", json={"model": "tiny", "messages": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = httpx.post(srv.url + "/v1/completions", json={"model": "tiny", "prompt": "x", "n": 3})
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"

    text, reason, _ = stream_text(running)
    assert text == reference.choices[0].text and reason == "length"
    assert "microserving_requests_rejected_total" in httpx.get(srv.url + "/metrics").text
    no_leaks(srv)


def test_too_many_concurrent_requests_get_429(srv, client):
    held = [client.completions.create(model="tiny", prompt=f"hold {i}", max_tokens=2000, temperature=0, stream=True)
            for i in range(4)]
    try:
        with pytest.raises(openai.RateLimitError) as e:
            client.completions.create(model="tiny", prompt="one too many", max_tokens=4)
        assert e.value.status_code == 429 and "limit is 4" in e.value.body["message"]
        assert httpx.get(srv.url + "/health").json()["in_flight"] == 4
    finally:
        for s in held:
            s.close()
    no_leaks(srv)
    deadline = time.monotonic() + 5
    while srv.state.router.runs and time.monotonic() < deadline:
        time.sleep(0.02)
    assert client.completions.create(model="tiny", prompt="room again", max_tokens=4).usage.completion_tokens == 4


# -- client disconnects -------------------------------------------------------------------------------
def _forward_tokens(srv) -> int:
    return sum(s["forward_tokens"] for s in no_leaks(srv).values())


@pytest.mark.parametrize("strategy", ["round_robin", "pd"])
def test_stream_disconnect_frees_every_page(srv, client, strategy):
    if strategy != "round_robin":
        assert admin(srv, {"name": strategy}).status_code == 200
    try:
        before = _forward_tokens(srv)
        stream = client.completions.create(model="tiny", prompt="x" * 200, max_tokens=3800, temperature=0,
                                           stream=True)
        for i, _ in enumerate(stream):
            if i == 3:
                break
        stream.close()
        stats = no_leaks(srv)
        assert all(s["pages"]["used"] == 0 and s["pages"]["reserved"] == 0 for s in stats.values())
        # the engines stopped early: far fewer tokens than prompt + max_tokens were computed
        assert sum(s["forward_tokens"] for s in stats.values()) - before < 2000
        assert not srv.state.router.runs
    finally:
        admin(srv, {"name": "round_robin"})


def test_non_streaming_disconnect_frees_every_page(srv):
    before = _forward_tokens(srv)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(srv.url + "/v1/completions", json={"model": "tiny", "prompt": "y" * 100, "max_tokens": 3800,
                                                      "temperature": 0}, timeout=httpx.Timeout(5.0, read=0.3))
    stats = no_leaks(srv)
    assert sum(s["forward_tokens"] for s in stats.values()) - before < 2000
    deadline = time.monotonic() + 5
    while srv.state.router.runs and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not srv.state.router.runs
    assert 'status="aborted"' in httpx.get(srv.url + "/metrics").text
