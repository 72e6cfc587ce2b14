"""Context migration: move a prefix's KV from one engine's cache to another's, with no generation.

`migrate_context` is three sub-requests: the receiver reserves pages for the context's full pages
(minus what it caches already), the sender produces that KV (from its own prefix cache, computing
whatever it lacks) and writes it there, and the receiver releases the pseudo-request so the pages
stay only in its prefix cache. Moving KV over NVLink costs far less than recomputing a long
prefix, so migration wins whenever a long shared context must become available on another
engine: to relieve an overloaded engine, to drain one, or to place a document ahead of demand.

`prefix_migration` is prefix-aware data parallel that, instead of recomputing a hot prefix on the
least busy engine when the prefix's engine is overloaded, keeps serving from the prefix's engine
and migrates the prefix there in the background (`runtime.spawn`); once it has landed, later
requests with that prefix see two holders and go to the less busy one.
"""
from __future__ import annotations

from core_api.engine import Engine
from core_api.strategy import register
from core_api.types import Request, SamplingParams
from strategies.prefix_aware import PrefixAware


async def migrate_context(ctx: Request, sender: Engine, receiver: Engine) -> int:
    """Copy KV of ctx.prompt's full pages into receiver's prefix cache; returns the tokens it now
    caches (ctx.prompt_len rounded down to the receiver's page size). ctx.id must be unique."""
    page = receiver.load().page_size
    end = ctx.prompt_len // page * page
    if end == 0:
        return 0
    kv_addr, matched = await receiver.prep_recv(ctx, end=end)
    try:
        if end > matched:
            await sender.remote_send(ctx, kv_addr, receiver.id, begin=matched, end=end)
    except Exception:
        await sender.release(ctx.id)
        raise
    finally:
        await receiver.release(ctx.id)
    return end


def context_request(req_id: str, tokens) -> Request:
    """The pseudo-request a migration runs under: the context as prompt, never generated."""
    return Request(req_id, tokens, SamplingParams(max_tokens=1))


@register("prefix_migration")
class PrefixMigration(PrefixAware):
    def validate(self) -> None:
        self._moving: set[tuple[str, bytes]] = set()
        self.migrations = 0

    def on_overload(self, req: Request, home, least, prefix_len: int):
        key = (least.id, req.prompt[:prefix_len].tobytes())
        if key not in self._moving:
            self._moving.add(key)
            self.migrations += 1
            ctx = context_request(f"migrate-{self.migrations}", req.prompt[:prefix_len])
            self.runtime.spawn(self._migrate(ctx, home, least, key))
            self.tag(req, migration=ctx.id, migrate_to=least.id)
        return home

    async def _migrate(self, ctx: Request, home, least, key) -> None:
        try:
            await migrate_context(ctx, home, least)
        finally:
            self._moving.discard(key)
