"""`calibrate resimulate`: a stored validation's real runs against a fresh simulation, with its own
profile or another one, and clear errors for reports that cannot be resimulated."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from calibration.interval import run_scaled
from calibration.resimulate import ReportError, load_reports, resimulate
from calibration.step_speed import step_speed
from calibration.validate import RealSide, SimSide, compared, real_engine_spec
from calibration.validation_report import ERROR_METRICS, RunSteps, ValidationCase
from core_api.workload import WorkloadSpec
from microserving.cli import main
from sim.profile import CostProfile

PROFILES = Path(__file__).resolve().parents[1] / "calibration" / "profiles"
SHIPPED = PROFILES / "cpu-tiny.json"
REAL_SCALE = (1.2, 1.3)  # the made-up real runs: the simulation's metrics times these
STATS = {"e0": {"steps": 400, "loop_s": 0.9, "step_features": {"prefill_tokens": 3000.0, "decode_seqs": 600.0,
                                                                "decode_context": 90_000.0}},
         "e1": {"steps": 300, "loop_s": 0.7, "step_features": {"prefill_tokens": 2000.0, "decode_seqs": 500.0,
                                                                "decode_context": 70_000.0}}}


def stored_report(tmp_path: Path, profile: Path = SHIPPED) -> Path:
    """A report as validate writes it, its real side made up: two runs at 1.2x and 1.3x the
    simulation's metrics, with step totals (no real engine runs in this file)."""
    case = ValidationCase(profile=str(profile), strategy="round_robin", interval=False, probe_s=0.0,
                          workload=WorkloadSpec(num_requests=12, arrival={"process": "poisson", "rate": 30.0},
                                                prompt_len={"kind": "uniform", "low": 16, "high": 64},
                                                output_len={"kind": "uniform", "low": 4, "high": 12}, seed=4))
    loaded = CostProfile.load(profile)
    spec = real_engine_spec(case, loaded)
    sim = SimSide.run(case, loaded, spec)
    metrics = sim.result.metrics()
    real = RealSide(metrics=[{m: metrics[m] * f for m in ERROR_METRICS} for f in REAL_SCALE], failed=0, wall_s=1.0,
                    pinned={}, foreign_share=0.0, cpu_s={"e0": 0.9, "e1": 0.7, "router": 0.1},
                    wait_s={"e0": 0.0, "e1": 0.0}, run_steps=[RunSteps.of(STATS, {"e0": 0.0, "e1": 0.0})],
                    probe_steps=[], engine=spec.model_dump(mode="json"), boot_id="the-real-runs-boot")
    path = tmp_path / "validation.json"
    path.write_text(json.dumps([compared(case, loaded, sim, real).model_dump(mode="json")]))
    return path


def test_resimulating_with_the_reports_own_profile_gives_its_comparison_back_exactly(tmp_path):
    path = stored_report(tmp_path)
    (stored,) = load_reports(path)
    again = resimulate(stored, path)
    for m in ERROR_METRICS:
        assert again.metrics[m].sim == stored.metrics[m].sim  # the simulation is deterministic
        assert again.metrics[m].real_runs == stored.metrics[m].real_runs
        assert again.metrics[m].rel_error == pytest.approx(1 / 1.25 - 1, abs=1e-12)
        assert again.at_run_speed[m] == stored.at_run_speed[m]
    assert again.step_speed == stored.step_speed and set(again.step_speed) == {"e0", "e1"}
    assert again.real_boot_id == "the-real-runs-boot" and again.real_engine == stored.real_engine


def test_another_profile_is_compared_at_the_step_speed_measured_against_it(tmp_path):
    path = stored_report(tmp_path)
    (stored,) = load_reports(path)
    slower = json.loads(SHIPPED.read_text())
    slower["coefficients"] = {k: 2 * v for k, v in slower["coefficients"].items()}
    other = tmp_path / "slower.json"
    other.write_text(json.dumps(slower))
    again = resimulate(stored, path, other)
    assert again.case.profile == str(other)
    for m in ("mean_ttft_ms", "mean_e2el_ms"):
        assert again.metrics[m].sim > stored.metrics[m].sim  # priced by the slower profile
        assert again.metrics[m].real == stored.metrics[m].real
    # Each engine's measured steps against the doubled prediction: half the speed ratio.
    expected = step_speed(CostProfile.load(other), [STATS])
    assert again.step_speed == {eid: round(s, 4) for eid, s in expected.items()}
    for eid in ("e0", "e1"):
        assert again.step_speed[eid] == pytest.approx(stored.step_speed[eid] / 2, rel=1e-3)
    side = SimSide.run(again.case, CostProfile.load(other), real_engine_spec(again.case, CostProfile.load(SHIPPED)))
    scaled = run_scaled(side.cluster, side.workload, expected, again.case.seed).metrics()
    assert again.at_run_speed["mean_ttft_ms"].sim == scaled["mean_ttft_ms"]


def test_a_report_older_than_its_step_totals_keeps_its_stored_speeds(tmp_path):
    path = stored_report(tmp_path)
    data = json.loads(path.read_text())
    for field in ("run_steps", "probe_steps", "real_engine", "real_boot_id"):
        del data[0][field]
    path.write_text(json.dumps(data))
    (old,) = load_reports(path)
    again = resimulate(old, path)
    assert again.step_speed == old.step_speed and again.at_run_speed is not None
    assert "the report does not say which machine its real runs ran on" in again.untrusted
    copy = tmp_path / "copy.json"  # its own profile by another name: its speeds still hold
    copy.write_text(SHIPPED.read_text())
    assert resimulate(old, path, copy).step_speed == old.step_speed
    # Against another profile its stored speeds mean nothing: the plain comparison only.
    slower = json.loads(SHIPPED.read_text())
    slower["coefficients"]["const"] *= 2
    other = tmp_path / "slower.json"
    other.write_text(json.dumps(slower))
    plain = resimulate(old, path, other)
    assert plain.at_run_speed is None and plain.step_speed == {}
    assert plain.metrics["mean_ttft_ms"].sim > old.metrics["mean_ttft_ms"].sim


def test_the_command_prints_the_table_and_writes_only_where_told(tmp_path, capsys):
    path = stored_report(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["calibrate", "resimulate", str(path)]) == 0
    captured = capsys.readouterr()
    assert "median |error| of mean_ttft_ms" in captured.out and "simulated again" in captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    out = tmp_path / "sub" / "again.json"
    assert main(["calibrate", "resimulate", str(path), "--out", str(out)]) == 0
    (report,) = json.loads(out.read_text())
    assert report["metrics"]["mean_ttft_ms"]["rel_error"] == pytest.approx(1 / 1.25 - 1, abs=1e-12)


@pytest.mark.parametrize("recorded", ["profile.json", "results/loop7/profile.json"])
def test_a_reports_profile_is_found_next_to_it_when_validate_ran_elsewhere(tmp_path, monkeypatch, recorded):
    folder = tmp_path / "loop"
    folder.mkdir()
    (folder / "profile.json").write_text(SHIPPED.read_text())
    path = stored_report(folder, folder / "profile.json")
    data = json.loads(path.read_text())
    data[0]["case"]["profile"] = recorded  # relative to where validate ran, not to here
    path.write_text(json.dumps(data))
    decoy = json.loads(SHIPPED.read_text())
    decoy["coefficients"]["const"] *= 3
    (tmp_path / "profile.json").write_text(json.dumps(decoy))  # another profile by that name here
    monkeypatch.chdir(tmp_path)
    (stored,) = load_reports(path)
    assert resimulate(stored, path).metrics["mean_ttft_ms"].sim == stored.metrics["mean_ttft_ms"].sim


@pytest.mark.parametrize("content, needle", [
    (None, "cannot read the report"),
    ("{not json", "not JSON"),
    ('{"case": {}}', "expected the list of reports"),
    ("[]", "expected the list of reports"),
    ('[{"rate": 1.0}]', "report 0: case: Field required"),
])
def test_reports_that_cannot_be_read_are_named(tmp_path, capsys, content, needle):
    path = tmp_path / "bad.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ReportError, match=needle):
        load_reports(path)
    assert main(["calibrate", "resimulate", str(path)]) == 2
    assert needle in capsys.readouterr().err


def test_a_missing_or_mismatched_profile_is_named(tmp_path, capsys):
    path = stored_report(tmp_path)
    data = json.loads(path.read_text())
    data[0]["case"]["profile"] = "gone.json"
    path.write_text(json.dumps(data))
    assert main(["calibrate", "resimulate", str(path)]) == 2
    assert "the report's profile gone.json is neither there nor next to the report; give --profile" in \
        capsys.readouterr().err
    other_model = json.loads(SHIPPED.read_text())
    other_model["model"] = "Llama-3.1-8B"
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(other_model))
    assert main(["calibrate", "resimulate", str(path), "--profile", str(wrong)]) == 2
    assert "Llama-3.1-8B" in capsys.readouterr().err


def test_several_reports_give_a_line_each_and_their_median(tmp_path, capsys):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    paths = [str(stored_report(first)), str(stored_report(second))]
    assert main(["calibrate", "resimulate", *paths]) == 0
    out = capsys.readouterr().out
    error = f"{abs(1 / 1.25 - 1) * 100:.1f}%"
    assert all(f"{p}: median |error| {error} (as stored {error})" in out for p in paths)
    assert "2 reports: median of their median |error| 20.00% (as stored 20.00%)" in out
    assert main(["calibrate", "resimulate", *paths, "--out", str(tmp_path / "x.json")]) == 2
    assert "--out takes one report" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("shipped", ["loops-*/*/validation.json", "smollm2-*/validation.json"])
def test_a_shipped_loop_resimulates_to_its_stored_comparison(shipped):
    """A real calibration loop of this project's engines (calibration/profiles/loops-*, and one of
    SmolLM2-135M with a token-curve profile): the simulator gives the comparison it stored, so a
    change to what the simulator does on real runs shows here (rerun `calibrate resimulate ...
    --out` to store a deliberate one)."""
    path = min(PROFILES.glob(shipped))
    stored = load_reports(path)
    for old, new in zip(stored, (resimulate(r, path) for r in stored)):
        assert new.metrics == old.metrics and new.at_run_speed == old.at_run_speed
        assert new.sim_busy_s == old.sim_busy_s and new.step_speed == old.step_speed
