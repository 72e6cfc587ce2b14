"""Sweep runner: expansion of a spec, parallel run, resume, failures recorded, plots."""
import json

import pytest
import yaml

from experiments.plots import plot_sweep
from experiments.sweep import read_results, run_sweep
from experiments.sweep_spec import SweepSpec, load_spec

TINY = {
    "name": "tiny",
    "base": {
        "cluster": {"engines": [{"count": 2, "num_pages": 1024}]},
        "workload": {"num_requests": 12, "prompt_len": {"kind": "uniform", "low": 16, "high": 200},
                     "output_len": {"kind": "uniform", "low": 2, "high": 12}},
    },
    "strategies": [{"name": "round_robin"}, {"name": "pd"}],
    "rates": [5.0, 50.0],
    "seeds": [0, 1],
    "warmup_requests": 2,
    "slos": {"ttft_ms": 200},
}


def test_spec_expansion_grid_clusters_workloads(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(
        f"2023-11-16 18:15:{s:02d}.5,{30 + s},{2 + s % 3}\n" for s in range(10)))
    data = {**TINY, "strategies": [{"name": "pd", "label": "PD", "grid": {"prefill": [["e0"], ["e1"]]}}],
            "clusters": [{"label": "two"},
                         {"label": "one", "set": {"engines": [{"count": 1, "num_pages": 512}]},
                          "strategies": [{"name": "round_robin"}]}],
            "workloads": [{"label": "syn"}, {"label": "azure", "trace": {"format": "azure", "path": "t.csv"},
                                            "rates": [3.0]}]}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    runs = load_spec(path).runs()
    # two: 2 PD variants x (syn: 2 rates + azure: 1 rate) x 2 seeds; one: 1 x 3 x 2
    assert len(runs) == 2 * 3 * 2 + 1 * 3 * 2
    assert len({r.key for r in runs}) == len(runs)
    labels = {r.labels["strategy"] for r in runs}
    assert labels == {"PD[prefill=['e0']]", "PD[prefill=['e1']]", "round_robin"}
    azure = [r for r in runs if r.labels["workload"] == "azure"]
    assert all(r.trace.path == str(trace) and r.trace.options.rate == 3.0 for r in azure)
    syn = next(r for r in runs if r.labels["workload"] == "syn" and r.labels["rate"] == 50.0 and r.seed == 1)
    assert syn.workload.arrival.rate == 50.0 and syn.workload.seed == 1
    assert syn.cluster.strategy.params == {"prefill": ["e0"]} or syn.labels["cluster"] == "one"
    with pytest.raises(ValueError, match="unknown SLO keys"):
        SweepSpec.model_validate({**TINY, "slos": {"ttft": 1}})


def test_a_misspelled_strategy_is_refused_before_any_run(tmp_path):
    spec = SweepSpec.model_validate({**TINY, "strategies": TINY["strategies"] + [{"name": "round_robbin"}]})
    out = tmp_path / "r.jsonl"
    with pytest.raises(ValueError, match="unknown strategy 'round_robbin'"):
        run_sweep(spec, out, jobs=1)
    assert not out.exists()
    with pytest.raises(ValueError, match="bogus"):
        SweepSpec.model_validate({**TINY, "strategies": [{"name": "pd", "params": {"bogus": 1}}]}).runs()


def test_sweep_runs_in_parallel_resumes_and_records_failures(tmp_path):
    # A strategy that validates but fails when built on the cluster: found only when it runs.
    wrong_engine = {"name": "pd", "label": "pd_e9", "params": {"prefill": ["e0"], "decode": ["e9"]}}
    spec = SweepSpec.model_validate({**TINY, "strategies": TINY["strategies"] + [wrong_engine]})
    out = tmp_path / "r.jsonl"
    state = run_sweep(spec, out, jobs=2)
    assert state.done == 12 and state.failed == 4
    lines = read_results(out)
    assert len(lines) == 12
    bad = [ln for ln in lines if ln["status"] == "error"]
    assert len(bad) == 4 and all("no engine 'e9'" in ln["error"] for ln in bad)
    good = [ln for ln in lines if ln["status"] == "ok"]
    assert all(ln["measured_requests"] == 10 and ln["metrics"]["completed"] == 10 for ln in good)
    assert all(len(ln["samples"]["e2el_ms"]) == 10 and "slo_attainment" in ln["metrics"] for ln in good)

    text = out.read_text()
    again = run_sweep(spec, out, jobs=2, resume=True)
    assert again.done == 0 and again.skipped == 12 and out.read_text() == text  # nothing reran

    out.write_text(text + text.splitlines()[0][:40])  # a line cut off by a crash
    more = SweepSpec.model_validate({**TINY, "seeds": [0, 1, 2]})
    third = run_sweep(more, out, jobs=1, resume=True)
    assert third.done == 4 and third.skipped == 8  # only seed 2 was new
    assert len(read_results(out)) == 16

    retry = run_sweep(spec, out, jobs=1, resume=True, retry_failed=True)
    assert retry.done == 4 and retry.failed == 4  # errors rerun on request, and fail again


def test_identical_runs_share_a_key_and_results_are_deterministic(tmp_path):
    spec = SweepSpec.model_validate({**TINY, "rates": [5.0], "seeds": [0, 0]})
    state = run_sweep(spec, tmp_path / "a.jsonl", jobs=1)
    assert state.total == 2  # the repeated seed collapses
    run_sweep(spec, tmp_path / "b.jsonl", jobs=2)
    a, b = (sorted((ln["key"], json.dumps(ln["metrics"], sort_keys=True)) for ln in read_results(tmp_path / f))
            for f in ("a.jsonl", "b.jsonl"))
    assert a == b


def test_plots_from_results(tmp_path):
    out = tmp_path / "r.jsonl"
    run_sweep(SweepSpec.model_validate(TINY), out, jobs=1)
    paths = plot_sweep(read_results(out), tmp_path / "plots", slos=TINY["slos"])
    names = sorted(p.name for p in paths)
    assert names == ["cdf_e2el_synthetic.png", "cdf_ttft_synthetic.png", "latency_vs_rate_synthetic.png",
                     "slo_attainment_synthetic.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_cli_sweep_and_plot(tmp_path, capsys):
    from microserving.cli import main

    spec = tmp_path / "s.json"
    spec.write_text(json.dumps({**TINY, "seeds": [0]}))
    out = tmp_path / "r.jsonl"
    assert main(["sweep", str(spec), "-o", str(out), "--jobs", "1", "--no-plots"]) == 0
    assert main(["sweep", str(spec), "-o", str(out), "--jobs", "1"]) == 2  # exists, no --resume
    assert "--resume" in capsys.readouterr().err
    assert main(["sweep", str(spec), "-o", str(out), "--resume", "--no-plots"]) == 0
    assert "0 runs (0 failed, 4 already done)" in capsys.readouterr().out
    fig = tmp_path / "fig.png"
    assert main(["plot", str(out), "--x", "rate", "--y", "p99_e2el_ms", "-o", str(fig)]) == 0
    assert fig.stat().st_size > 1000
    assert main(["plot", str(out), "--y", "p99_nonsense_ms"]) == 2


def test_plot_refuses_what_it_cannot_draw(tmp_path, capsys):
    from microserving.cli import main

    assert main(["plot", str(tmp_path / "none.jsonl")]) == 2
    assert "no such results file" in capsys.readouterr().err
    out = tmp_path / "r.jsonl"
    run_sweep(SweepSpec.model_validate({**TINY, "seeds": [0], "rates": [5.0]}), out, jobs=1)
    assert main(["plot", str(out), "--x", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert "--x 'nosuch': not a label or metric" in err and "rate" in err


def test_a_metric_plot_has_one_panel_per_workload_and_names_the_cluster(tmp_path):
    from matplotlib import image

    from experiments.plots import cluster_title, plot_metric

    spec = {**TINY, "seeds": [0], "workloads": [{"label": "short"},
                                                {"label": "long", "set": {"prompt_len": {"kind": "uniform",
                                                                                         "low": 300, "high": 400}}}]}
    out = tmp_path / "r.jsonl"
    run_sweep(SweepSpec.model_validate(spec), out, jobs=1)
    lines = read_results(out)
    assert cluster_title(lines).startswith("2 x ")
    one = plot_metric([ln for ln in lines if ln["labels"]["workload"] == "short"], tmp_path / "one.png")
    two = plot_metric(lines, tmp_path / "two.png")
    assert image.imread(two).shape[1] > 1.6 * image.imread(one).shape[1], "one panel per workload"


def test_sweep_on_ray_without_ray_installed_says_how_to_get_it(tmp_path, capsys, monkeypatch):
    import sys

    from microserving.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if not installed
    spec = tmp_path / "s.json"
    spec.write_text(json.dumps({**TINY, "seeds": [0]}))
    out = tmp_path / "r.jsonl"
    assert main(["sweep", str(spec), "-o", str(out), "--ray", "--no-plots"]) == 2
    assert "pip install 'llm-microserving[ray]'" in capsys.readouterr().err
    assert main(["sweep", str(spec), "-o", str(out), "--ray-working-dir", ".", "--no-plots"]) == 2
    assert "--ray-working-dir goes with --ray" in capsys.readouterr().err


def test_resume_reruns_runs_whose_profile_file_changed(tmp_path):
    """A profile refitted in place (same path, new factors) must not leave results priced by the old
    one in place on --resume; an untouched profile reruns nothing."""
    import shutil

    profile = tmp_path / "roofline.json"
    shutil.copy("calibration/profiles/roofline-any.json", profile)
    spec = SweepSpec.model_validate(
        {**TINY, "base": {**TINY["base"], "cluster": {**TINY["base"]["cluster"],
                                                      "cost_model": {"kind": "roofline", "path": str(profile)}}},
         "strategies": [{"name": "round_robin"}], "seeds": [0]})
    out = tmp_path / "r.jsonl"
    assert run_sweep(spec, out, jobs=1).done == 2
    assert run_sweep(spec, out, jobs=1, resume=True).skipped == 2
    data = json.loads(profile.read_text())
    data["efficiency"]["compute"] /= 2
    profile.write_text(json.dumps(data))
    again = run_sweep(spec, out, jobs=1, resume=True)
    assert again.done == 2 and again.skipped == 0
    assert len({ln["key"] for ln in read_results(out)}) == 4  # the old results stay, under their own keys
