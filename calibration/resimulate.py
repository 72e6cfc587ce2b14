"""Simulate a stored validation again, against the real runs it recorded.

A change to the simulator or a new profile deserves the error it gives on real runs already
made: real runs take minutes, drift with the machine and spread from run to run, while a stored
report holds each real run's metrics, its engines' step totals and settings. Resimulating
builds the same simulated cluster (the real engines' settings as the report recorded them, the
same seeded workload), with the report's profile or another one of the same engine, and compares
again: plainly and at the step speeds measured anew against that profile. Reports written before
they recorded step totals and engine settings still resimulate with their own profile (their
stored step speeds are against it); with another profile, they give the plain comparison only.
"""
from __future__ import annotations

import os
from pathlib import Path

from pydantic import ValidationError

from calibration.validate import RealSide, SimSide, compared, real_engine_spec
from calibration.validation_report import ValidationReport
from core_api.config_file import parse_json
from core_api.validation_errors import format_validation_error
from sim.profile import CostProfile


class ReportError(ValueError):
    """A stored validation report that cannot be resimulated."""


def load_reports(path: str | Path) -> list[ValidationReport]:
    """The reports of a `calibrate validate --out` file, or a clear error naming what is wrong."""
    path = Path(path)
    try:
        data = parse_json(path.read_text())
    except OSError as exc:
        raise ReportError(f"{path}: cannot read the report ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise ReportError(f"{path}: not JSON ({exc})") from None
    if not isinstance(data, list) or not data:
        raise ReportError(f"{path}: expected the list of reports `calibrate validate --out` writes")
    reports = []
    for i, item in enumerate(data):
        try:
            reports.append(ValidationReport.model_validate(item))
        except ValidationError as exc:
            raise ReportError(f"{path}: report {i}: {format_validation_error(exc)}") from None
    return reports


def relative_to_report(profile: str | Path, report_path: Path) -> str:
    """A profile path as a report file records it: relative to the report's folder."""
    return os.path.relpath(Path(profile).resolve(), Path(report_path).resolve().parent)


def report_profile(report: ValidationReport, report_path: Path) -> Path:
    """The profile the report was validated with: its path relative to the report's folder (as
    `validate --out` writes it), else as recorded relative to here (older reports kept the path
    validate was given), else the file's name alone in the report's folder."""
    recorded = Path(report.case.profile)
    for candidate in (report_path.parent / recorded, recorded, report_path.parent / recorded.name):
        if candidate.is_file():
            return candidate
    raise ReportError(f"{report_path}: the report's profile {report.case.profile} is neither there nor next to "
                      f"the report; give --profile")


def real_side(report: ValidationReport) -> RealSide:
    """The real runs as the report recorded them."""
    runs = max((len(m.real_runs) for m in report.metrics.values()), default=0)
    if runs:
        metrics = [{m: c.real_runs[i] for m, c in report.metrics.items() if len(c.real_runs) == runs}
                   for i in range(runs)]
    else:  # a report from before the runs were kept one by one: their mean stands for them
        metrics = [{m: c.real for m, c in report.metrics.items()}]
    return RealSide(metrics=metrics, failed=report.real_failed, wall_s=report.real_wall_s, pinned=report.pinned,
                    foreign_share=report.foreign_cpu_share, cpu_s=report.real_cpu_s, wait_s=report.real_wait_s,
                    run_steps=report.run_steps, probe_steps=report.probe_steps, engine=report.real_engine,
                    boot_id=report.real_boot_id)


def real_engine(report: ValidationReport, report_path: Path, case, own_profile: CostProfile | None):
    """The real engines' settings: as the report recorded them, else (a report from before it
    did) built from the report's own profile as validate built them."""
    from real.config import EngineSpec

    if report.real_engine is not None:
        try:
            return EngineSpec(**report.real_engine)
        except ValidationError as exc:
            raise ReportError(f"{report_path}: the real engines' settings: {format_validation_error(exc)}") from None
    if own_profile is None:
        try:
            own_profile = CostProfile.load(report_profile(report, report_path))
        except ReportError:
            raise ReportError(f"{report_path}: the report does not record its real engines' settings (it is older "
                              f"than that), and its own profile {report.case.profile}, which they came from, is "
                              f"not found") from None
    return real_engine_spec(case, own_profile)


def resimulate(report: ValidationReport, report_path: str | Path, profile: str | Path | None = None) -> ValidationReport:
    """The report again, its simulated side run anew (with `profile`, else the report's own)."""
    report_path = Path(report_path)
    profile_path = report_profile(report, report_path) if profile is None else Path(profile)
    own = profile is None or _is_own_profile(report, report_path, profile_path)
    case = report.case.model_copy(update={"profile": str(profile_path)})
    loaded = CostProfile.load(profile_path)
    spec = real_engine(report, report_path, case, loaded if own else None)
    real = real_side(report)
    speeds = probe_speeds = None
    if not real.run_steps and own:  # no step totals recorded: the speeds measured against this very profile stand
        speeds, probe_speeds = report.step_speed, report.probe_step_speed
    return compared(case, loaded, SimSide.run(case, loaded, spec), real, speeds, probe_speeds)


def _is_own_profile(report: ValidationReport, report_path: Path, profile: Path) -> bool:
    """The profile named holds what the report's own profile holds (a copy of it counts)."""
    try:
        return report_profile(report, report_path).read_bytes() == profile.read_bytes()
    except (ReportError, OSError):
        return False
