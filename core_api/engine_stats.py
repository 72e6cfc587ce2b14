"""The engine figures both backends report, under the same keys, so a simulated run's
`engine_stats` and a real run's compare one to one (a real engine adds its process's own figures:
loop and CPU time, KV traffic, the leak check)."""
from __future__ import annotations

from core_api.scheduler import Scheduler


def common_engine_stats(sched: Scheduler, steps: int, busy_s: float) -> dict:
    kv = sched.kv
    st = kv.stats()
    return {"steps": steps, "busy_s": busy_s, "preemptions": sched.num_preemptions, "prefix_hit_tokens": kv.hits,
            "evictions": kv.evictions,
            "pages": {"total": st.total, "free": st.free, "used": st.used, "cached": st.cached,
                      "reserved": st.reserved}}
