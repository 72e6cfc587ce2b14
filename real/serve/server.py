"""Run the HTTP server on a cluster session: in the foreground (the CLI) or in a thread (tests,
benchmarks).

The engines' clients, the router and uvicorn share one asyncio loop: RealEngine sockets belong to
the loop that opened them, and a strategy's awaits interleave with HTTP I/O without threads or
locks. The listening socket is bound before the loop starts (port 0 gives a free port with no
race), on loopback unless the operator asks otherwise. At shutdown uvicorn gives open streams
`graceful_shutdown_s`, then the router closes what is left and waits for the releases, then the
session closes the engine clients; the cluster (its processes) is closed by whoever started it.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import uvicorn
from typing_extensions import Self

from real.cluster import RealCluster
from real.loading import load_tokenizer
from real.serve.app import ServeState, create_app
from real.serve.config import ServeConfig
from real.serve.prompts import Frontend
from real.serve.router import Router

log = logging.getLogger(__name__)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket. proto must be IPPROTO_TCP (not 0): asyncio sets TCP_NODELAY only on
    sockets that say so, and without it Nagle holds each SSE chunk until the client's delayed ACK
    (~40 ms per response on a kept-alive connection)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(False)
    return sock


def build_state(engines: list, cluster: RealCluster, config: ServeConfig) -> ServeState:
    """The router, model and limits over connected engines. All engines must serve one model: the
    router tokenizes once, whichever engine a strategy picks."""
    models = {(e.info.get("model"), e.info.get("model_seed")) for e in engines}
    if len(models) != 1:
        raise ValueError(f"all engines must serve the same model (and seed), got {sorted(map(str, models))}")
    model = engines[0].info["model"]
    tokenizer = load_tokenizer(model)
    name = config.served_model_name or (Path(model).name if os.sep in model else model)
    aliases = tuple({model, *(k for k, v in _aliases().items() if v == model)} - {name})
    frontend = Frontend(tokenizer, name, engines, aliases, config.default_max_tokens,
                        vocab_size=engines[0].info.get("vocab_size"))
    strategy = cluster.config.strategy
    router = Router(engines, strategy.name, strategy.params, config.max_concurrent)
    return ServeState(router=router, frontend=frontend, config=config, started_strategy=strategy.name)


def _aliases() -> dict[str, str]:
    from real.config import MODEL_ALIASES

    return MODEL_ALIASES


async def serve(cluster: RealCluster, config: ServeConfig, sock: socket.socket,
                on_ready: Callable[[ServeState, uvicorn.Server], None] | None = None) -> None:
    """Serve until uvicorn is told to exit (signal in the main thread, or `server.should_exit`)."""
    async with cluster.session() as directory:
        state = build_state(list(directory.values()), cluster, config)
        server = uvicorn.Server(uvicorn.Config(
            create_app(state), log_level=config.log_level, access_log=False, lifespan="off",
            timeout_graceful_shutdown=config.graceful_shutdown_s))
        task = asyncio.ensure_future(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if server.started and on_ready is not None:
            on_ready(state, server)
        try:
            await task
        finally:
            await state.router.drain()


class BackgroundServer:
    """A server on its own thread and loop; `url` once started. For tests and benchmarks:

        with BackgroundServer(RealCluster.local(2, num_pages=64), ServeConfig(port=0)) as srv:
            openai.OpenAI(base_url=srv.url + "/v1", api_key="x")
    """

    def __init__(self, cluster: RealCluster, config: ServeConfig | None = None) -> None:
        self.cluster = cluster
        self.config = config or ServeConfig(port=0)
        self.state: ServeState | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._server: uvicorn.Server | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def start(self, timeout_s: float = 120.0) -> BackgroundServer:
        self.cluster.start()
        sock = bind(self.config.host, self.config.port)
        host, port = sock.getsockname()[:2]
        self.url = f"http://{host}:{port}"
        self._thread = threading.Thread(target=self._main, args=(sock,), name="microserving-serve", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._ready.wait(0.05):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"server did not start: {self._error!r}")
        return self

    def _main(self, sock: socket.socket) -> None:
        def ready(state: ServeState, server: uvicorn.Server) -> None:
            self.state, self._server, self.loop = state, server, asyncio.get_running_loop()
            self._ready.set()

        try:
            asyncio.run(serve(self.cluster, self.config, sock, ready))
        except BaseException as exc:  # noqa: BLE001 - reported by start() / close()
            self._error = exc
        finally:
            sock.close()

    def call(self, coro, timeout_s: float = 30.0):
        """Run a coroutine on the server's loop (engine stats, router state) and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def close(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(30.0)
        self.cluster.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
