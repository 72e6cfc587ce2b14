"""Where shared KV pool files live and who may remove them; torch-free, so a router can clean up
after an engine it launched without loading torch.

A pool file is /dev/shm/microserving-kv-<32 hex>: 128 random bits, so no other user can predict a
pool's name and pre-create it (or a symlink under it) before the engine does.
"""
from __future__ import annotations

import os
import re
import socket

SHM_DIR = "/dev/shm"
SHM_PREFIX = "microserving-kv-"
POOL_PATH = re.compile(re.escape(f"{SHM_DIR}/{SHM_PREFIX}") + r"[0-9a-f]{32}")


def unlink_pool(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def host_key() -> str:
    """Identifies this host (and boot), so engines know when shared memory can reach a peer."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = "?"
    return f"{socket.gethostname()}/{boot}"
