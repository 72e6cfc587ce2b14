"""CurveZMQ keys of a cluster: who may talk to an engine, and how each side proves it.

Engine sockets use CURVE (elliptic-curve encryption and authentication built into ZeroMQ, RFC 26)
with a ZAP authenticator, rather than anything home-made. A cluster's keys live in one directory:

    engine.key / engine.key_secret   the engines' keypair: each engine's server key, and its client
                                     key when it ships KV to a peer engine
    router.key / router.key_secret   the router's keypair (its client key)
    *.key                            every public key in the directory may connect to the engines

An engine serves only clients whose public key is in its directory; an unauthenticated peer
completes no handshake and gets nothing, not even `hello`. `microserving keys DIR` makes such a
directory (mode 0700, secrets 0600); copy it to every host, or only the public files plus each
party's own secret. Rotation: make a new directory, restart engines and routers with it.
RealCluster makes fresh keys for the engines it starts when none are given (EphemeralKeys), so
local clusters are authenticated too: any local user can reach a loopback port.
"""
from __future__ import annotations

import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import zmq
import zmq.auth

ENGINE, ROUTER = "engine", "router"


@dataclass(frozen=True)
class CurveKeys:
    """One party's keypair, the engines' public key (the server key to connect to) and the
    directory of public keys an engine admits."""

    public: bytes
    secret: bytes
    server_public: bytes
    directory: str

    def client(self, sock: zmq.Socket) -> None:
        """Make `sock` a CURVE client of the cluster's engines (before connect)."""
        sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = self.public, self.secret, self.server_public

    def server(self, sock: zmq.Socket) -> None:
        """Make `sock` a CURVE server (before bind): ZAP then decides who may connect."""
        sock.curve_publickey, sock.curve_secretkey, sock.curve_server = self.public, self.secret, True


def generate_keys(directory: str | Path) -> Path:
    """A new key directory; refuses to overwrite an existing keypair."""
    d = Path(directory)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    for name in (ENGINE, ROUTER):
        if (d / f"{name}.key_secret").exists():
            raise FileExistsError(f"{d / name}.key_secret exists: keys are never overwritten, use a new directory")
        _, secret = zmq.auth.create_certificates(d, name)
        os.chmod(secret, 0o600)
    return d


class EphemeralKeys:
    """Keys made for one local cluster, on disk only while engines start.

    An engine reads its keys once, at start-up; the router keeps its own in memory. So the secret
    files exist only between `directory()` and the end of that block (written 0600 into a 0700
    temporary directory), and a router killed with SIGKILL leaves no key behind.
    """

    def __init__(self) -> None:
        tmp = tempfile.mkdtemp(prefix="microserving-keys-")
        try:
            generate_keys(tmp)
            self._files = {f.name: f.read_bytes() for f in Path(tmp).iterdir()}
            self.router = replace(load_keys(tmp, ROUTER), directory="keys made for this cluster")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @contextmanager
    def directory(self):
        """A key directory holding these keys, removed when the block ends."""
        tmp = Path(tempfile.mkdtemp(prefix="microserving-keys-"))
        try:
            for name, data in self._files.items():
                fd = os.open(tmp / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
            yield str(tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def load_keys(directory: str | Path, role: str) -> CurveKeys:
    """The keys of `role` (engine or router) from a key directory, with errors that name the file."""
    d = Path(directory)
    if not d.is_dir():
        raise ValueError(f"key directory {d} does not exist (make one with `microserving keys {d}`)")
    secret_file = d / f"{role}.key_secret"
    if not secret_file.is_file():
        raise ValueError(f"{secret_file} is missing: {d} is not a key directory made by `microserving keys`")
    mode = stat.S_IMODE(secret_file.stat().st_mode)
    if mode & 0o077:
        raise ValueError(f"{secret_file} is readable by other users (mode {mode:o}); chmod 600 it")
    try:
        public, secret = zmq.auth.load_certificate(secret_file)
        server_public, _ = zmq.auth.load_certificate(d / f"{ENGINE}.key")
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the keys in {d}: {exc}") from None
    if not secret:
        raise ValueError(f"{secret_file} holds no secret key")
    return CurveKeys(public, secret, server_public, str(d))


def start_authenticator(ctx: zmq.Context, keys: CurveKeys):
    """The ZAP handler of `ctx` (a thread): admits clients whose public key is in the directory."""
    from zmq.auth.thread import ThreadAuthenticator

    auth = ThreadAuthenticator(ctx, log=_quiet_log())
    auth.start()
    auth.configure_curve(domain="*", location=keys.directory)
    return auth


def _quiet_log():
    """The logger of refused handshakes (pyzmq logs each at DEBUG): `microserving.zap`, so an
    operator can turn them on without pyzmq's other messages."""
    import logging

    return logging.getLogger("microserving.zap")


def is_loopback(address: str) -> bool:
    """True for tcp:// on `localhost` or a loopback IP literal, and for inproc://; ipc://, `*` and
    every other host (including names that merely start like one) are not."""
    import ipaddress

    if address.startswith("inproc://"):
        return True
    if not address.startswith("tcp://"):
        return False
    host = address[len("tcp://"):].rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
