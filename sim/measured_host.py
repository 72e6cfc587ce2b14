"""What a fitted profile measured around the steps, as cluster settings: the simulator's model of
the real engine processes the profile was taken on, beyond their step times.

`calibrate profile` measures, besides steps, the KV handoff between two engine processes (latency
and bandwidth), the round trip of a control call and the sender's CPU per remote_send, what
streaming tokens to the router costs, the slower first step after idling, and (for a router on
the engines' own cores) the router's CPU per streamed token. `calibrate validate` simulates real
engines with all of them (sim.host), and so does a cluster config with
`measured_host: true` and such a profile as its cost model.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sim.hardware import kv_bytes_per_token
from sim.network import LinkSpec

if TYPE_CHECKING:
    from sim.config import ClusterConfig, EngineConfig
    from sim.profile import CostProfile


# The ClusterConfig fields measured_host sets: the link (profile_link) and host_effects' keys.
MEASURED_HOST_FIELDS = frozenset({"link", "rpc_latency_s", "send_overhead_s", "recv_overhead_s",
                                  "generate_overhead_s", "handoff_generate_overhead_s",
                                  "router_cpu_per_token_s", "calls_between_steps", "stream", "idle"})


def host_effects(profile: CostProfile, stream_interval_s: float | None = None) -> dict[str, Any]:
    """ClusterConfig's host effects (sim.host) as the profile measured them, for real engines
    that read calls between steps and stream every `stream_interval_s` (default: the interval the
    profiled engine streamed at)."""
    stream = profile.stream
    if stream is not None and stream_interval_s is not None:
        stream = stream.model_copy(update={"interval_s": stream_interval_s})
    return {"rpc_latency_s": profile.rpc_latency_s or 0.0, "send_overhead_s": profile.send_overhead_s or 0.0,
            "recv_overhead_s": profile.recv_overhead_s or 0.0,
            "generate_overhead_s": profile.generate_overhead_s or 0.0,
            "handoff_generate_overhead_s": profile.handoff_generate_overhead_s or 0.0,
            "router_cpu_per_token_s": profile.router_cpu_per_token_s or 0.0, "calls_between_steps": True,
            "stream": stream, "idle": profile.idle}


def profile_link(profile: CostProfile, engine: EngineConfig) -> LinkSpec:
    """The profile's fitted KV transfer model in the simulator's bytes: the simulator counts KV in
    its model's dtype (bf16 or fp8) where a CPU engine holds fp32, so bandwidth is scaled by
    simulated / real bytes per token and a transfer of N tokens takes the time measured for N
    tokens. No transfer measured: a link that costs nothing."""
    if profile.transfer is None:
        return LinkSpec(latency_s=0.0, bandwidth_Bps=1e15)
    real = float(profile.environment.get("kv_bytes_per_token", 0)) or None
    sim = kv_bytes_per_token(engine.model_spec())
    factor = sim / real if real else 1.0
    return LinkSpec(latency_s=profile.transfer.latency_s, bandwidth_Bps=profile.transfer.bandwidth_Bps * factor)


def with_measured_host(cluster: ClusterConfig) -> ClusterConfig:
    """The cluster with its fitted profile's link and host effects (ClusterConfig.measured_host),
    resolved: measured_host off and every value it took written out, so the config a result echoes
    reruns as it ran."""
    from sim.cost_models import load_profile

    profile = load_profile(cluster.cost_model.path, "fitted")
    return cluster.model_copy(update={"link": profile_link(profile, cluster.engines[0]), **host_effects(profile),
                                      "measured_host": False})
