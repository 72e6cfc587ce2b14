"""Bad input to the command line: every case exits 2 (argparse and our own checks alike) with one
plain line that says what is wrong, before any simulation runs or any engine starts."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from microserving.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("argv, says", [
    (["capacity", "--ttft-slo", "-5"], "--ttft-slo: must be a positive number, got -5"),
    (["capacity", "--ttft-slo", "100", "--target", "1.5"], "--target: must be in (0, 1], got 1.5"),
    (["capacity", "--ttft-slo", "nan"], "--ttft-slo: must be a positive number"),
    (["search", "--ttft-slo", "100", "--num-requests", "0"], "--num-requests: must be at least 1"),
    # A negative or zero rate used to run a validation (a negative rate even "succeeded").
    (["calibrate", "validate", "--profile", "p.json", "--rate", "-1"], "--rate: must be a positive number, got -1"),
    (["calibrate", "validate", "--profile", "p.json", "--rate", "nan"], "--rate: must be a positive number"),
    (["calibrate", "validate", "--profile", "p.json", "--load", "0"], "--load: must be a positive number, got 0"),
    (["replay", "run_dir", "--seed", "-1"], "--seed: must be 0 or more, got -1"),
])
def test_bad_numbers_are_argparse_errors(argv, says, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and says in capsys.readouterr().err


def _fails_with(argv: list[str], says: str, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert says in err, err
    assert "Traceback" not in err and "errors.pydantic.dev" not in err, err


@pytest.mark.parametrize("value, says", [("inf", "a finite number"), ("nan", "a finite number"),
                                         ("-1", "greater than or equal to 0")])
def test_a_bad_validation_probe_fails_before_any_engine_starts(value, says, capsys):
    _fails_with(["calibrate", "validate", "--profile", str(ROOT / "calibration/profiles/cpu-tiny.json"),
                 "--rate", "5", "--num-requests", "4", "--probe-s", value], f"probe_s: Input should be {says}", capsys)


def test_search_names_unknown_strategies(capsys):
    _fails_with(["search", "--ttft-slo", "100", "--strategies", "foo,bar"], "unknown strategies bar, foo", capsys)


@pytest.mark.parametrize("argv", [["sim", "--config", "{d}"], ["run", "--config", "{d}"], ["sweep", "{d}"],
                                  ["serve", "--config", "{d}"]])
def test_a_directory_given_as_a_file_is_one_line(argv, tmp_path, capsys):
    _fails_with([a.format(d=tmp_path) for a in argv], f"{tmp_path}: is a directory", capsys)


def test_a_missing_config_file_is_one_line(tmp_path, capsys):
    _fails_with(["sim", "--config", str(tmp_path / "nope.yaml")], "no such simulator config file", capsys)


def test_a_misspelled_strategy_in_a_sweep_spec_fails_before_any_run(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text("base: {cluster: {engines: [{count: 2}]}, workload: {num_requests: 4}}\n"
                    "strategies: [{name: round_robbin}, {name: pd}]\n")
    _fails_with(["sweep", str(spec), "--out", str(tmp_path / "r.jsonl")], "unknown strategy 'round_robbin'", capsys)
    assert not (tmp_path / "r.jsonl").exists()


def test_unknown_models_and_devices_fail_before_engines_start(capsys):
    _fails_with(["run", "--model", "llama99", "--prompt", "hi"], "unknown model 'llama99'", capsys)
    _fails_with(["engine", "--device", "cuda:0"] if not _has_cuda() else ["engine", "--device", "cuda:99"],
                "device 'cuda:", capsys)
    _fails_with(["engine", "--listen", "tcp://0.0.0.0:5555"], "needs keys", capsys)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_a_closed_pipe_ends_quietly():
    """`microserving sim | head -1`: no BrokenPipeError traceback, the SIGPIPE-like status 141. The
    reader is gone before the first line is written (sim prints only after simulating), so the
    write always meets a closed pipe, as `head` closing it does."""
    proc = subprocess.Popen([sys.executable, "-m", "microserving.cli", "sim", "--num-requests", "50"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 141 and "Traceback" not in err, err


def test_capacity_says_when_requests_fail_at_every_rate(tmp_path, capsys):
    trace = tmp_path / "t.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,374,44\nbad,line\n"
                     "2023-11-16 18:15:50.75,396,109\n2023-11-16 18:15:51.75,100000,109\n")
    assert main(["capacity", "--ttft-slo", "1000", "--trace", str(trace), "--trace-format", "azure",
                 "--skip-bad-lines"]) == 0
    err = capsys.readouterr().err
    assert "warning: " in err and "skipped 1 malformed line(s)" in err and "return build_workload" not in err
    assert "1 request(s) failed even at" in err and "exceed this engine's max context" in err


def test_an_empty_admin_token_says_so(capsys):
    _fails_with(["serve", "--admin-token", ""], "--admin-token is empty", capsys)


def test_sim_lists_strategies_with_their_parameters_and_reads_traces(tmp_path, capsys):
    assert main(["sim", "--list-strategies"]) == 0
    out = capsys.readouterr().out
    assert "balanced_pd: prep_recv(end=split)" in out and "  ratio: float = 0.2" in out
    trace = tmp_path / "t.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,374,44\n"
                     "2023-11-16 18:15:50.75,396,109\n2023-11-16 18:15:51.75,100,9\n")
    assert main(["sim", "--trace", str(trace), "--trace-format", "azure"]) == 0
    assert f"trace {trace} (3 requests" in capsys.readouterr().out


def test_search_shows_progress_on_long_work(capsys):
    assert main(["search", "--gpus", "2", "--ttft-slo", "2000", "--num-requests", "20", "--tp", "1",
                 "--strategies", "round_robin,pd", "-j", "1"]) == 0
    err = capsys.readouterr().err
    assert "[search] 0/" not in err and re.search(r"\[search\] 2/2 done", err), err


@pytest.mark.parametrize("engines,says", [
    ("[{count: 100000000}]", "engines.0.count: Input should be less than or equal to 4096"),
    ("[{count: 3000}, {count: 3000}]", "6000 engines in one cluster; at most 4096"),
    ("[{num_pages: 100000000000}]", "engines.0.num_pages: Input should be less than or equal to 16777216"),
    ("[{tp: 100000}]", "engines.0.tp: Input should be less than or equal to 1024"),
    (("[{page_size: 1, model: {name: x, num_layers: 1, hidden_size: 64, num_heads: 1, num_kv_heads: 1, "
      "ffn_size: 64, vocab_size: 100}}]"), "KV pages of 1 tokens fit in the GPU memory, more than an engine may hold")])
def test_a_config_asking_for_absurd_sizes_names_the_field_before_building_anything(tmp_path, engines, says, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(f"cluster:\n  engines: {engines}\n  strategy: {{name: round_robin}}\nworkload: {{num_requests: 4}}\n")
    _fails_with(["sim", "--config", str(config)], says, capsys)


def test_a_real_cluster_config_asking_for_absurd_sizes_is_refused():
    from pydantic import ValidationError

    from real.config import RealClusterConfig

    with pytest.raises(ValidationError, match="count"):
        RealClusterConfig(engines=[{"count": 10**8}])
    with pytest.raises(ValidationError, match="num_pages"):
        RealClusterConfig(engines=[{"num_pages": 10**11}])


def _alias_bomb(levels: int) -> str:
    """A YAML document a few lines long whose aliases expand to 9**levels strings."""
    lines = ['l0: &l0 ["x","x","x","x","x","x","x","x","x"]']
    lines += [f"l{i}: &l{i} [{','.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_or_a_self_containing_value_is_refused_at_once(tmp_path, capsys):
    from core_api.config_file import read_config_file

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("cluster:\n  engines: [{}]\n  strategy:\n    name: round_robin\n    params:\n"
                    + "".join(f"      {line}\n" for line in _alias_bomb(12).splitlines()) + "workload: {num_requests: 4}\n")
    # 9**12 strings: walking them (as validating would) would not end; counting shares the work.
    _fails_with(["sim", "--config", str(bomb)], "its aliases expand to 357,449,882,134 values", capsys)
    (tmp_path / "cycle.yaml").write_text("cluster: &c\n  engines: [{}]\n  again: *c\n")
    with pytest.raises(ValueError, match="a value contains itself"):
        read_config_file(tmp_path / "cycle.yaml")
    (tmp_path / "deep.yaml").write_text("a: " + "[" * 50000 + "]" * 50000 + "\n")
    with pytest.raises(ValueError, match="nested too deeply"):
        read_config_file(tmp_path / "deep.yaml")
    (tmp_path / "shared.yaml").write_text("base: &b {count: 2}\nmore: [*b, *b, *b]\n")  # aliases as people use them
    assert read_config_file(tmp_path / "shared.yaml")["more"] == [{"count": 2}] * 3


def test_json_nested_past_the_recursion_limit_is_malformed_json_everywhere(tmp_path, capsys):
    deep = "[" * 100_000 + "]" * 100_000
    (tmp_path / "c.json").write_text(deep)
    _fails_with(["sim", "--config", str(tmp_path / "c.json")], "nested too deeply", capsys)
    run = tmp_path / "run"
    run.mkdir()
    (run / "meta.json").write_text(deep)
    (run / "requests.jsonl").write_text("{}\n")
    _fails_with(["replay", str(run)], "meta.json: not JSON (line 1, column 1): nested too deeply", capsys)
    (tmp_path / "m.jsonl").write_text('{"timestamp": 1, "input_length": ' + deep + "}\n")
    _fails_with(["sim", "--trace", str(tmp_path / "m.jsonl"), "--trace-format", "mooncake"],
                "m.jsonl:1: not JSON: nested too deeply", capsys)
    (tmp_path / "s.json").write_text("[" + deep + "]")
    _fails_with(["sim", "--trace", str(tmp_path / "s.json"), "--trace-format", "sharegpt"],
                "s.json:1: not JSON: nested too deeply", capsys)


def test_a_profile_grid_file_is_read_as_yaml_or_json_and_its_errors_name_it(tmp_path, capsys):
    from calibration.profile import GridSpec, ProfileSettings, grid_points
    from core_api.config_file import read_config_file

    out = str(tmp_path / "s.json")
    assert main(["calibrate", "profile", "--grid", str(tmp_path / "none.yaml"), "--out", out]) == 2
    assert "none.yaml: no such grid file" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("prefill_tokens: [1, 16]\nprefil_context: [0]\n")
    assert main(["calibrate", "profile", "--grid", str(tmp_path / "bad.yaml"), "--out", out]) == 2
    assert "prefil_context: Extra inputs are not permitted" in capsys.readouterr().err
    assert not Path(out).exists()
    shipped = GridSpec.model_validate(read_config_file(ROOT / "experiments/specs/profile_grid_small.yaml", "grid"))
    assert len(grid_points(ProfileSettings(grid=shipped))) == 77
