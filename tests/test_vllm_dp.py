"""vllm_dp routes as vLLM's API server balances data-parallel engines: lowest 4 x waiting +
running, ties to the lowest rank, from counts at most `stats_interval_s` old plus what it routed since."""
from __future__ import annotations

import pytest

from core_api.engine import EngineLoad
from core_api.strategy import StrategyError, build


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t


class CountingEngine:
    """Only what routing reads: an id, health, and the counts load() reports."""

    def __init__(self, engine_id: str, waiting: int, running: int) -> None:
        self.id, self.healthy, self.waiting, self.running = engine_id, True, waiting, running

    def load(self) -> EngineLoad:
        return EngineLoad(self.id, self.waiting, self.running, 0, 0, 100, 0, 100, 16)


def picks(strategy, n: int) -> list[str]:
    return [strategy._pick(strategy.live()).id for _ in range(n)]


def test_lowest_score_wins_ties_go_to_the_lowest_rank_and_each_pick_counts_as_waiting():
    engines = [CountingEngine("e0", 1, 0), CountingEngine("e1", 0, 3), CountingEngine("e2", 0, 4)]
    strategy = build("vllm_dp", engines, Clock())
    # scores 4, 3, 4 -> e1 (then 7); e0 and e2 tie at 4 -> e0 (then 8); e2 (then 8); e1 (7 -> 11) ...
    assert picks(strategy, 4) == ["e1", "e0", "e2", "e1"]


def test_counts_are_read_again_only_once_they_are_stats_interval_old():
    engines = [CountingEngine("e0", 0, 0), CountingEngine("e1", 0, 0)]
    clock = Clock()
    strategy = build("vllm_dp", engines, clock, {"stats_interval_s": 0.1})
    assert picks(strategy, 3) == ["e0", "e1", "e0"]  # from the reading at 0 plus its own picks
    engines[0].waiting = 10  # e0 fills up; the router does not see it yet
    clock.t = 0.05
    assert picks(strategy, 1) == ["e1"]  # e0 4+4 = 8 vs e1 4: own counts still
    clock.t = 0.1
    assert picks(strategy, 2) == ["e1", "e1"]  # read again: e0 at 40, e1 at 0, then 4
    fresh = build("vllm_dp", engines, clock, {"stats_interval_s": 0.0})
    engines[0].waiting = 0
    engines[1].running = 3
    assert picks(fresh, 3) == ["e0", "e0", "e0"]  # every pick reads the engines: e0 stays at 0 < 3


def test_dead_engines_are_skipped_and_bad_parameters_named():
    engines = [CountingEngine("e0", 0, 0), CountingEngine("e1", 0, 5)]
    engines[0].healthy = False
    assert picks(build("vllm_dp", engines, Clock()), 2) == ["e1", "e1"]
    with pytest.raises(StrategyError, match="stats_interval_s"):
        build("vllm_dp", engines, Clock(), {"stats_interval_s": -1})


def test_counts_never_read_again_make_it_round_robin():
    engines = [CountingEngine("e0", 0, 9), CountingEngine("e1", 0, 0), CountingEngine("e2", 0, 0)]
    clock = Clock()
    strategy = build("vllm_dp", engines, clock, {"stats_interval_s": float("inf")})
    first = picks(strategy, 2)
    engines[0].running = 0  # e0 frees up, but the first reading (e0 at 9) is the only one it takes
    clock.t = 1e6
    # Its own picks only (4 each): e1 and e2 until they pass e0's stale 9, then all three in turn.
    assert first + picks(strategy, 7) == ["e1", "e2", "e1", "e2", "e1", "e2", "e0", "e1", "e2"]
