"""Attacks on an engine's socket and its shared-memory pool, performed against the engine:

- a client without the cluster's keys gets nothing at all, not even `hello`;
- an engine refuses to listen beyond loopback without keys;
- KV written into a reservation needs the capability the receiver issued with it (a forged or
  guessed one is refused), and a chunk may not name the engine's own pool as its source (the old
  path to copy another request's KV into one's own reservation);
- only the client that created a request may release or continue it;
- a symlink or a planted file under a pool's name is never mapped (the old way to read any file);
- a router killed with SIGKILL leaves no engine process and no pool file behind.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
import zmq.auth
from pydantic import ValidationError

from real import protocol as p
from real.config import EngineSpec
from real.keys import ENGINE, ROUTER, generate_keys, is_loopback, load_keys
from real.pool_files import SHM_DIR, SHM_PREFIX
from tests.inproc_engine import InProcEngine

PROMPT = np.arange(40, 88, dtype=np.int32)  # 48 tokens: 3 pages of 16


@pytest.fixture
def keydir(tmp_path) -> Path:
    d = generate_keys(tmp_path / "keys")
    zmq.auth.create_certificates(d, "router2")  # a second, legitimate router of the same cluster
    os.chmod(d / "router2.key_secret", 0o600)
    return d


@pytest.fixture
def engine(keydir):
    eng = InProcEngine(keys=str(keydir), page_size=16)
    yield eng
    eng.close()


def _client(engine: InProcEngine, keydir: Path, role: str | None) -> zmq.Socket:
    """A DEALER to the engine as `role` (router, router2), with a stranger's keys ("stranger"),
    or in the clear (None)."""
    if role is None:
        return engine.connect()
    if role == "stranger":
        public, secret = zmq.curve_keypair()
        return engine.connect(CURVE_PUBLICKEY=public, CURVE_SECRETKEY=secret,
                              CURVE_SERVERKEY=load_keys(keydir, ENGINE).public)
    public, secret = zmq.auth.load_certificate(keydir / f"{role}.key_secret")
    return engine.connect(CURVE_PUBLICKEY=public, CURVE_SECRETKEY=secret,
                          CURVE_SERVERKEY=load_keys(keydir, ENGINE).public)


def _wire(req_id: str, max_tokens: int = 4) -> p.WireRequest:
    return p.WireRequest(id=req_id, prompt=PROMPT.astype("<i4").tobytes(),
                         sampling=p.WireSampling(max_tokens=max_tokens, ignore_eos=True))


# -- authentication ------------------------------------------------------------------------------
@pytest.mark.parametrize("role", [None, "stranger"])
def test_clients_without_the_clusters_keys_get_nothing_not_even_hello(engine, keydir, role):
    intruder = _client(engine, keydir, role)
    engine.send(p.Hello(op="hello", id=0), sock=intruder)
    engine.send(p.Stats(op="stats", id=0), sock=intruder)
    assert engine.answers(intruder, wait_s=1.5) == [], "an unauthenticated peer was answered"
    # The cluster's own router (and a second router whose key is in the directory) are served.
    for role_ok in ("router", "router2"):
        hello = engine.call(p.Hello(op="hello", id=0), sock=_client(engine, keydir, role_ok))
        assert isinstance(hello, p.Reply) and hello.result["engine_id"] == "e0"


def test_an_engine_beyond_loopback_needs_keys(keydir):
    with pytest.raises(ValidationError, match="needs keys"):
        EngineSpec(listen="tcp://0.0.0.0:5555")
    with pytest.raises(ValidationError, match="needs keys"):
        EngineSpec(listen="tcp://10.1.2.3:5555")
    assert EngineSpec(listen="tcp://0.0.0.0:5555", keys=str(keydir)).keys == str(keydir)
    assert all(map(is_loopback, ["tcp://127.0.0.1:1", "tcp://localhost:1", "tcp://[::1]:1", "inproc://x"]))
    assert not any(map(is_loopback, ["tcp://0.0.0.0:1", "tcp://192.168.0.1:1", "ipc:///tmp/x", "tcp://*:1",
                                     "tcp://localhost.example.com:1", "tcp://127.example.com:1", "tcp://eth0:1"]))


def test_key_files_readable_by_others_are_refused(keydir):
    os.chmod(keydir / "router.key_secret", 0o644)
    with pytest.raises(ValueError, match="readable by other users"):
        load_keys(keydir, ROUTER)


# -- capabilities ------------------------------------------------------------------------------------
def _reserve(engine: InProcEngine, sock: zmq.Socket, req_id: str) -> p.WireKVAddr:
    reply = engine.call(p.PrepRecv(op="prep_recv", id=0, req=_wire(req_id), end=None), sock=sock)
    assert isinstance(reply, p.Reply), reply
    return p.WireKVAddr(**reply.result["kv_addr"])


def _zmq_chunk(engine: InProcEngine, addr: p.WireKVAddr, token: str, value: float) -> tuple[p.KVChunk, bytes]:
    pool = engine.worker.pool
    shape = [pool.shape[0], len(addr.page_ids), *pool.shape[2:]]
    data = np.full(shape, value, dtype=np.float32)
    msg = p.KVChunk(op="kv", id=1, req_id="victim", token_begin=addr.begin,
                    token_end=addr.end, page_ids=addr.page_ids, last=True, mode="zmq",
                    meta={"shape": shape, "dtype": "float32"}, token=token)
    return msg, data.tobytes()


def _pages(engine: InProcEngine, ids: list[int]) -> np.ndarray:
    return engine.worker.pool[:, ids].numpy().copy()


def test_kv_writes_without_the_reservations_capability_are_refused(engine, keydir):
    router, peer = _client(engine, keydir, "router"), _client(engine, keydir, "router2")
    addr = _reserve(engine, router, "victim")
    assert len(addr.token) >= 20
    before = _pages(engine, addr.page_ids)
    for forged in ("", secrets.token_urlsafe(16), addr.token[:-1] + ("A" if addr.token[-1] != "A" else "B")):
        msg, data = _zmq_chunk(engine, addr, forged, 13.0)
        engine.send(msg, [data], sock=peer)
        (ack,) = engine.answers(peer)
        assert isinstance(ack, p.KVAck) and not ack.ok and "capability" in ack.error
    assert np.array_equal(_pages(engine, addr.page_ids), before), "a refused chunk wrote KV"
    # The capability the receiver issued works (so the check is not refusing everything).
    msg, data = _zmq_chunk(engine, addr, addr.token, 13.0)
    engine.send(msg, [data], sock=peer)
    (ack,) = engine.answers(peer)
    assert ack.ok and ack.done and (_pages(engine, addr.page_ids) == 13.0).all()
    engine.call(p.Release(op="release", id=0, req_id="victim"), sock=router)
    engine.worker.sched.kv.check_no_leaks()


def test_a_chunk_naming_the_engines_own_pool_is_refused(engine, keydir):
    """The old attack: reserve pages, then have the engine copy a victim's cached pages from its
    own pool into them. Even holding its own reservation's capability, the attacker gets nothing."""
    router = _client(engine, keydir, "router")
    victim_pages = list(range(engine.worker.sched.kv.num_pages - 3, engine.worker.sched.kv.num_pages))
    engine.worker.pool[:, victim_pages] = 42.0  # "another client's KV"
    addr = _reserve(engine, router, "attacker")
    own = engine.worker.shared.path
    msg = p.KVChunk(op="kv", id=1, req_id="attacker", token_begin=addr.begin, token_end=addr.end,
                    page_ids=addr.page_ids, last=True, mode="shm", token=addr.token,
                    meta={"shm_name": own, "src_pages": victim_pages, "pool_shape": list(engine.worker.pool.shape),
                          "dtype": "float32"})
    engine.send(msg, sock=router)
    (ack,) = engine.answers(router)
    assert not ack.ok and "own pool" in ack.error
    assert not (_pages(engine, addr.page_ids) == 42.0).any()


# -- ownership -------------------------------------------------------------------------------------
def test_only_the_client_that_created_a_request_may_release_or_continue_it(engine, keydir):
    owner, other = _client(engine, keydir, "router"), _client(engine, keydir, "router2")
    call = engine.send(p.StartGenerate(op="start_generate", id=0, req=_wire("victim", max_tokens=40)), sock=owner)
    # The engine reads its sockets in no fixed order: the request exists once its stream has begun.
    first = engine.answers(owner, wait_s=20, until=lambda answers: any(
        isinstance(m, p.Chunks) and call in m.ids for m in answers))
    for msg in (p.Release(op="release", id=0, req_id="victim"),
                p.StartGenerate(op="start_generate", id=0, req=_wire("victim")),
                p.PrepRecv(op="prep_recv", id=0, req=_wire("victim"))):
        refused = engine.call(msg, sock=other)
        assert isinstance(refused, p.Error) and "belongs to another connection" in refused.error, refused
    got = first + engine.answers(owner, wait_s=20, until=lambda answers: any(
        isinstance(m, p.Chunks) and call in m.finished for m in first + answers))
    tokens = [t for m in got if isinstance(m, p.Chunks) for cid, t in zip(m.ids, m.tokens) if cid == call]
    assert len(tokens) == 40 and not any(isinstance(m, p.Error) for m in got), "the victim's stream was cut"
    engine.worker.sched.kv.check_no_leaks()


# -- shared-memory pools ----------------------------------------------------------------------------
def test_pool_files_are_private_and_unpredictable(engine):
    path = engine.worker.shared.path
    st = os.lstat(path)
    assert oct(st.st_mode & 0o777) == "0o600" and st.st_uid == os.getuid()
    name = os.path.basename(path)
    assert name.startswith(SHM_PREFIX) and len(name) == len(SHM_PREFIX) + 32 and str(os.getpid()) not in name


@pytest.mark.parametrize("plant", ["symlink", "world_readable", "bad_name"])
def test_a_planted_pool_never_maps_another_file(engine, keydir, tmp_path, plant):
    """The old attack: a symlink named like a pool, pointing at any file, then a chunk naming it:
    the engine copied that file's bytes into a reservation the attacker could read back."""
    router = _client(engine, keydir, "router")
    addr = _reserve(engine, router, "attacker")
    before = _pages(engine, addr.page_ids)
    pool = engine.worker.pool
    secret = tmp_path / "secret"
    secret.write_bytes(b"\x7f" * (pool.numel() * 4))
    path = f"{SHM_DIR}/{SHM_PREFIX}{secrets.token_hex(16)}"
    if plant == "symlink":
        os.symlink(secret, path)
    elif plant == "world_readable":
        Path(path).write_bytes(secret.read_bytes())
        os.chmod(path, 0o644)
    else:
        path = f"{SHM_DIR}/{SHM_PREFIX}{secrets.token_hex(16)}/../../../{secret}"
    try:
        msg = p.KVChunk(op="kv", id=1, req_id="attacker", token_begin=addr.begin, token_end=addr.end,
                        page_ids=addr.page_ids, last=True, mode="shm", token=addr.token,
                        meta={"shm_name": path, "src_pages": [0, 1, 2], "pool_shape": list(pool.shape),
                              "dtype": "float32"})
        engine.send(msg, sock=router)
        (ack,) = engine.answers(router)
    finally:
        if os.path.lexists(path):
            os.unlink(path)
    assert not ack.ok and ("refusing" in ack.error or "cannot open" in ack.error), ack.error
    assert np.array_equal(_pages(engine, addr.page_ids), before), "bytes of the planted file reached the pool"


ROUTER_SCRIPT = textwrap.dedent("""
    import json, sys, time
    from real.cluster import RealCluster
    cluster = RealCluster.local(2, num_pages=64).start()
    print(json.dumps({"pids": [p.pid for p in cluster.procs.values()], "pools": list(cluster.shm_files.values())}),
          flush=True)
    time.sleep(120)
""")


def test_a_killed_router_leaves_no_engine_pool_or_key_behind():
    before = set(os.listdir("/tmp"))
    router = subprocess.Popen([sys.executable, "-c", ROUTER_SCRIPT], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[1])
    try:
        started = json.loads(router.stdout.readline())
        assert len(started["pools"]) == 2 and all(os.path.exists(f) for f in started["pools"])
        assert not [n for n in set(os.listdir("/tmp")) - before if n.startswith("microserving-keys-")], \
            "key files left on disk after the engines started"
        router.send_signal(signal.SIGKILL)
        router.wait(5)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (any(_alive(pid) for pid in started["pids"])
                                               or any(os.path.exists(f) for f in started["pools"])):
            time.sleep(0.05)
        assert not any(_alive(pid) for pid in started["pids"]), "an engine outlived its router"
        assert not any(os.path.exists(f) for f in started["pools"]), "a pool file outlived its engine"
    finally:
        if router.poll() is None:
            router.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
