"""What the serve tests share: a server over 2 tiny-model engine processes on a free loopback port,
the admin call, the leak check and reading a stream's text."""
from __future__ import annotations

from contextlib import contextmanager

import httpx
import openai

from real.cluster import RealCluster, check_no_leaks
from real.serve.config import ServeConfig
from real.serve.server import BackgroundServer

TOKEN = "test-admin-token"
BODY_LIMIT = 256 * 1024


@contextmanager
def serving(**config):
    """A server (admin token TOKEN, 4 requests in flight, BODY_LIMIT) for one test module; on exit
    checks that no engine process is left running."""
    cluster = RealCluster.local(2, "round_robin", num_pages=256, page_size=16)
    settings = {"port": 0, "admin_token": TOKEN, "max_concurrent": 4, "max_body_bytes": BODY_LIMIT, **config}
    with BackgroundServer(cluster, ServeConfig(**settings)) as server:
        yield server
    assert not any(p.poll() is None for p in cluster.procs.values()), "engine processes left running"


@contextmanager
def openai_client(srv):
    with openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60) as c:
        yield c


def admin(srv, body: dict | None = None, token: str | None = TOKEN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if body is None:
        return httpx.get(srv.url + "/admin/strategy", headers=headers)
    return httpx.post(srv.url + "/admin/strategy", json=body, headers=headers)


def no_leaks(srv) -> dict:
    """Every engine idle with no used or reserved page (waits briefly for releases in flight)."""
    return srv.call(check_no_leaks(srv.state.router.engines, settle_s=5.0))


def stream_text(stream) -> tuple[str, str | None, object]:
    parts, reason, use = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            use = chunk.usage
        for choice in chunk.choices:
            parts.append(choice.text if hasattr(choice, "text") else (choice.delta.content or ""))
            reason = choice.finish_reason or reason
    return "".join(parts), reason, use
