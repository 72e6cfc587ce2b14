"""Attacks on the HTTP edge of `microserving serve`, each performed against a running server: an
oversized body (declared or chunked) is refused before parsing while a stream in flight keeps its
exact text; numbers the engines cannot represent and lone surrogates are 400s, not 500s; the admin
route imports no module off the operator's allowlist."""
from __future__ import annotations

import time

import httpx
import pytest

from tests.serve_helpers import BODY_LIMIT, admin, no_leaks, openai_client, serving, stream_text


@pytest.fixture(scope="module")
def srv():
    with serving() as server:
        yield server


@pytest.fixture(scope="module")
def client(srv):
    with openai_client(srv) as c:
        yield c


def _raw_http(url: str, head: bytes, body: bytes = b"") -> tuple[bytes, float]:
    """Send a request by hand on a fresh connection; (the response, seconds it took)."""
    import socket
    from urllib.parse import urlparse

    u = urlparse(url)
    t0 = time.monotonic()
    with socket.create_connection((u.hostname, u.port), timeout=10) as sock:
        sock.sendall(head + body)
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data, time.monotonic() - t0


def test_oversized_bodies_get_413_before_parsing_and_others_stream_on(srv, client):
    """The attack: a 50 MB body parsed on the shared loop froze every stream for seconds. A
    declared size over the limit is refused without reading the body; a chunked body is cut off at
    the limit; a stream in flight is unchanged."""
    reference = client.completions.create(model="tiny", prompt="bystander", max_tokens=200, temperature=0)
    running = client.completions.create(model="tiny", prompt="bystander", max_tokens=200, temperature=0, stream=True)
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 52428800\r\n\r\n")
    response, seconds = _raw_http(srv.url, head, b'{"model": "tiny", "prompt": "')  # and never the other 50 MB
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert b'"code":"request_too_large"' in response.replace(b" ", b"") and seconds < 5

    def chunks():
        yield b'{"model": "tiny", "prompt": "'
        for _ in range(BODY_LIMIT // 1024 + 8):
            yield b"x" * 1024
        yield b'"}'

    r = httpx.post(srv.url + "/v1/completions", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] is None and "limit" in r.json()["error"]["message"]
    ok = httpx.post(srv.url + "/v1/completions", json={"model": "tiny", "prompt": "y" * 1000, "max_tokens": 2})
    assert ok.status_code == 200, "a body under the limit is served"
    text, reason, _ = stream_text(running)
    assert text == reference.choices[0].text and reason == "length"
    no_leaks(srv)


@pytest.mark.parametrize("body, param", [
    ({"prompt": "x", "seed": 2**64}, "seed"),
    ({"prompt": "x", "seed": -(2**63) - 1}, "seed"),
    ({"prompt": "x", "stop_token_ids": [2**64]}, "stop_token_ids"),
    ({"prompt": "x", "stop_token_ids": [-1]}, "stop_token_ids"),
    ({"prompt": [1, 2**64]}, "prompt"),
    ({"prompt": "x", "temperature": 1e-40, "max_tokens": 2}, None),  # greedy, not a failure
])
def test_out_of_range_numbers_are_400_not_500(srv, body, param):
    r = httpx.post(srv.url + "/v1/completions", json={"model": "tiny", "max_tokens": 2, **body})
    if param is None:
        assert r.status_code == 200, r.text
        return
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"].startswith(param) and r.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("route, body", [
    ("/v1/completions", b'{"model": "tiny", "prompt": "a\\ud800b", "max_tokens": 2}'),
    ("/v1/completions", b'{"model": "tiny", "prompt": ["\\udfff"], "max_tokens": 2}'),
    ("/v1/chat/completions", b'{"model": "tiny", "messages": [{"role": "user", "content": "\\ud83d"}]}'),
    ("/v1/completions", b'{"model": "tiny", "prompt": "x", "stop": ["\\ud800"], "max_tokens": 2}'),
])
def test_lone_surrogates_are_400(srv, route, body):
    r = httpx.post(srv.url + route, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert "surrogate" in r.json()["error"]["message"]


def test_admin_cannot_import_a_module_off_the_allowlist(srv):
    """The attack: the authenticated admin route imported any module named in a switch."""
    import sys

    module = "experiments.custom_strategy_example"
    assert module not in sys.modules
    r = admin(srv, {"name": f"{module}:MyStrategy"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "strategy_not_allowed", r.text
    assert module not in sys.modules, "refused before import"
    assert admin(srv).json()["current"]["name"] == "round_robin"


def test_the_operator_allowlist_and_registered_names_pass():
    from real.serve.app import check_strategy_allowed
    from real.serve.errors import APIError

    check_strategy_allowed("pd", [], "round_robin")
    check_strategy_allowed("mine:Custom", [], "mine:Custom")  # the operator's own start-up choice
    check_strategy_allowed("mine:Custom", ["mine"], "round_robin")
    for name, modules in (("mine:Custom", []), ("mine:Custom", ["mine.sub"]), ("os:system", ["mine"])):
        with pytest.raises(APIError) as e:
            check_strategy_allowed(name, modules, "round_robin")
        assert e.value.status == 403
