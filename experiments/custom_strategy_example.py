"""A complete user-written strategy (the README's example): PD only for long prompts.

Select it by name once imported (`build("long_prompt_pd", ...)`), or from the command line as
`microserving sim --strategy experiments.custom_strategy_example:MyStrategy --param long_prompt=1024`.
"""
from pydantic import BaseModel

from core_api.strategy import Strategy, StrategyError, register


class Params(BaseModel, extra="forbid"):
    long_prompt: int = 2048  # longer prompts are prefilled on a second engine


@register("long_prompt_pd")
class MyStrategy(Strategy):
    """Short prompts run whole on the least busy engine; long ones get their KV from the next one."""
    Params = Params

    def validate(self):
        if len(self.engines) < 2:
            raise StrategyError("long_prompt_pd needs 2 engines")

    async def generate(self, req):
        decode, prefill = sorted(self.engines, key=lambda e: e.load().queued_prefill_tokens)[:2]
        begin = -1 if req.prompt_len > self.params.long_prompt else 0
        if begin:
            kv_addr, matched = await decode.prep_recv(req, end=-1)
            await prefill.remote_send(req, kv_addr, decode.id, begin=matched, end=-1)
        self.tag(req, engine=decode.id, remote_prefill=bool(begin))
        async for chunk in decode.start_generate(req, begin=begin):
            yield chunk
