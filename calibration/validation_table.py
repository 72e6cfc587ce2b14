"""A validation's reports as the table `calibrate validate` and `resimulate` print, and the
headline figure: the median |error| of the mean TTFT, TPOT and E2E over every case."""
from __future__ import annotations

from calibration.validation_report import ERROR_METRICS, HEADLINE, ValidationReport

# The comparisons rerun with the profile at a measured step speed: (report field, title, what it is).
RESCALED = (("at_probe_speed", "at the step speed probed just before each run", "a prediction"),
            ("at_run_speed", "at the run's measured step speed", "the simulator's own error"))


def format_reports(reports: list[ValidationReport], metrics=ERROR_METRICS) -> str:
    """One row per metric, one column (real / sim / error) per run; then the headline summary."""
    heads = [f"{r.case.strategy}@{r.rate:.3g}/s" for r in reports]
    lines = [f"{'metric':<22}" + "".join(f"{h:>34}" for h in heads),
             f"{'':<22}" + "".join(f"{'real':>11}{'sim':>11}{'error':>12}" for _ in heads)]
    for m in metrics:
        row = f"{m:<22}"
        for r in reports:
            c = r.metrics[m]
            row += f"{c.real:>11.3f}{c.sim:>11.3f}{c.rel_error * 100:>11.1f}%"
        lines.append(row)
        if any(r.metrics[m].real_spread is not None for r in reports):
            spreads = [r.metrics[m].real_spread for r in reports]
            lines.append(f"{'  spread of real runs':<22}" + "".join(
                f"{'' if sp is None else f'{sp * 100:.1f}%':>34}" for sp in spreads))
    lines.append(f"{'foreign CPU share':<22}" + "".join(f"{_fmt_2f(r.foreign_cpu_share):>34}" for r in reports))
    lines.append(f"{'engine CPU-s real/sim':<22}" + "".join(f"{_fmt_cpu(r):>34}" for r in reports))
    lines.append(f"{'router CPU-s real/sim':<22}" + "".join(f"{_fmt_router(r):>34}" for r in reports))
    lines.append(f"{'engines waiting, s':<22}" + "".join(f"{_fmt_waiting(r):>34}" for r in reports))
    lines.append(f"{'step speed real/profile':<22}" + "".join(
        f"{' '.join(f'{s:.2f}x' for s in r.step_speed.values()) or 'n/a':>34}" for r in reports))
    lines.append(f"{'  in the probe before':<22}" + "".join(
        f"{' '.join(f'{s:.2f}x' for s in r.probe_step_speed.values()) or 'n/a':>34}" for r in reports))
    for which, title, meaning in RESCALED:
        if all(getattr(r, which) for r in reports):
            lines.append(f"{title} ({meaning}):")
            for m in HEADLINE:
                lines.append(f"  {m:<20}" + "".join(
                    f"{r.metrics[m].real:>11.3f}{getattr(r, which)[m].sim:>11.3f}"
                    f"{getattr(r, which)[m].rel_error * 100:>11.1f}%" for r in reports))
    lines.append(f"median |error| of {', '.join(HEADLINE)}: {headline_error(reports) * 100:.1f}%")
    for which, title, _ in RESCALED:
        if all(getattr(r, which) for r in reports):
            lines.append(f"  {title}: {headline_error(reports, which) * 100:.1f}%")
    for r in reports:
        for reason in r.untrusted:
            lines.append(f"not to be trusted ({r.case.strategy}@{r.rate:.3g}/s): {reason}")
    return "\n".join(lines)


def _fmt_waiting(r: ValidationReport) -> str:
    return " ".join(f"{v:.2f}" for v in r.real_wait_s.values()) or "n/a"


def _fmt_cpu(r: ValidationReport) -> str:
    real = sum(v for k, v in r.real_cpu_s.items() if k != "router")
    return f"{real:.2f}/{sum(r.sim_busy_s.values()):.2f}"


def _fmt_router(r: ValidationReport) -> str:
    return f"{_fmt_2f(r.real_cpu_s.get('router'))}/{_fmt_2f(r.sim_router_cpu_s)}"


def _fmt_2f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def headline_error(reports: list[ValidationReport], which: str = "metrics") -> float:
    import statistics

    errors = [abs(getattr(r, which)[m].rel_error) for r in reports for m in HEADLINE]
    return statistics.median(errors) if errors else float("nan")
