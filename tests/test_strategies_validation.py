"""Bad strategy parameters fail at construction, before any request runs; user strategies load."""
import pytest

from core_api.strategy import StrategyError, build, resolve
from sim.cluster import SimCluster
from tests.helpers import small_cluster
from tests.test_strategies_harness import make_cluster, mixed_workload, run_checked

PD_LIKE = ["pd", "pd_prefix_aware", "balanced_pd", "adaptive"]


def _build(name, params, n=4):
    return SimCluster(small_cluster(n, name, params))


@pytest.mark.parametrize("ratio", [1.0, 1.5, -0.1])
def test_ratio_outside_0_1_is_rejected(ratio):
    with pytest.raises(StrategyError, match="ratio"):
        _build("balanced_pd", {"ratio": ratio})
    with pytest.raises(StrategyError, match="max_ratio"):
        _build("adaptive", {"max_ratio": ratio})


@pytest.mark.parametrize("name", PD_LIKE)
def test_roles_must_name_existing_engines_and_be_non_empty(name):
    with pytest.raises(StrategyError, match="no engine 'e9'.*engines are"):
        _build(name, {"prefill": ["e9"]})
    with pytest.raises(StrategyError, match="no engine 'gpu1'"):
        _build(name, {"decode": ["gpu1"]})
    with pytest.raises(StrategyError, match="prefill set is empty"):
        _build(name, {"prefill": []})
    with pytest.raises(StrategyError, match="decode set is empty"):
        _build(name, {"decode": []})


@pytest.mark.parametrize("name", PD_LIKE)
def test_disaggregation_on_one_engine_is_rejected(name):
    with pytest.raises(StrategyError, match="at least 2 engines"):
        _build(name, {}, n=1)


@pytest.mark.parametrize("name", PD_LIKE + ["prefix_aware", "prefix_migration"])
def test_unknown_or_mistyped_parameters_are_rejected(name):
    with pytest.raises(StrategyError, match="bad parameters: ratoi: Extra inputs are not permitted") as e:
        _build(name, {"ratoi": 0.3})
    assert "pydantic" not in str(e.value), "one plain line, no library URLs or class names"


def test_bad_thresholds_are_rejected():
    with pytest.raises(StrategyError, match="max_local_tokens"):
        _build("pd_prefix_aware", {"max_local_tokens": -1})
    with pytest.raises(StrategyError, match="max_imbalance"):
        _build("prefix_aware", {"max_imbalance": -3})
    with pytest.raises(StrategyError, match="interval"):
        _build("adaptive", {"interval": 0})


def test_explicit_roles_are_used():
    cluster = _build("balanced_pd", {"prefill": ["e3"], "decode": ["e0", "e1"], "ratio": 0.5})
    assert [e.id for e in cluster.strategy.prefill] == ["e3"]
    assert [e.id for e in cluster.strategy.decode] == ["e0", "e1"]


def test_a_user_strategy_loads_by_module_path_and_by_name_and_runs():
    cls = resolve("experiments.custom_strategy_example:MyStrategy")
    assert cls.name == "long_prompt_pd" and resolve("long_prompt_pd") is cls
    cluster, log, _counters = make_cluster("experiments.custom_strategy_example:MyStrategy",
                                          {"long_prompt": 500}, n=2, num_pages=2048)
    workload = mixed_workload()
    result = run_checked(cluster, workload)
    remote = [r for r in result.records if r.tags["remote_prefill"]]
    assert remote and all(r.prompt_len > 500 for r in remote)
    assert len([c for c in log if c.method == "remote_send"]) == len(remote)
    with pytest.raises(StrategyError, match="needs 2 engines"):
        one = SimCluster(small_cluster(1))
        build("long_prompt_pd", list(one.engines.values()), one.runtime)


def test_user_strategy_from_the_command_line(capsys):
    from microserving.cli import main

    rc = main(["sim", "--strategy", "experiments.custom_strategy_example:MyStrategy",
               "--param", "long_prompt=1024", "--num-requests", "30", "--rate", "10"])
    assert rc == 0
    assert "Serving Benchmark Result" in capsys.readouterr().out
