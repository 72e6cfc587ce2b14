"""KV transports, one module each, named by its mode: `real/transports/<mode>.py` defines
`TRANSPORT`, a real.transport.Transport. The modes are the module names, listed without importing
any (torch-free, for command lines and config validation), so a new transport is one file here.
"""
from __future__ import annotations

import functools
import importlib
import pkgutil

AUTO = "auto"  # not a module: the engine picks one (real.transport.resolve_mode)


@functools.cache
def transport_modes() -> tuple[str, ...]:
    """Every transport's mode (module names, nothing imported)."""
    return tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")))


def transport_class(mode: str):
    if mode not in transport_modes():
        raise ValueError(f"unknown KV transport {mode!r}; known: {', '.join([AUTO, *transport_modes()])}")
    return importlib.import_module(f"real.transports.{mode}").TRANSPORT
