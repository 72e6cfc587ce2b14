"""What `calibrate fit` writes besides the profile: a JSON report and predicted-vs-measured CSV."""
from __future__ import annotations

import csv
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from calibration.fit import DEFAULT_STATISTIC, FitResult, Prediction
from sim.network import LinkSpec
from sim.profile import TokenCurve


class FitReport(BaseModel):
    """What `calibrate fit` writes next to the profile (JSON)."""

    model_config = ConfigDict(extra="forbid")

    samples: str
    method: str
    statistic: str = DEFAULT_STATISTIC
    holdout: float
    seed: int
    form: str = "linear"
    coefficients: dict[str, float]
    token_curve: TokenCurve | None = None
    transfer: LinkSpec | None
    held_out_mape: dict[str, float]
    train_mape: dict[str, float]
    counts: dict[str, int]


def write_predictions_csv(path: str | Path, predictions: list[Prediction]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["kind", "label", "split", "measured_s", "predicted_s", "rel_error"])
        for p in predictions:
            w.writerow([p.kind, p.label, p.split, f"{p.measured_s:.9g}", f"{p.predicted_s:.9g}",
                        f"{p.rel_error:+.4f}"])


def report(samples_path: str, fit: FitResult, method: str, holdout: float, seed: int,
           statistic: str = DEFAULT_STATISTIC) -> FitReport:
    return FitReport(samples=samples_path, method=method, statistic=statistic, holdout=holdout, seed=seed,
                     form="curve" if fit.token_curve is not None else "linear", coefficients=fit.coefficients,
                     token_curve=fit.token_curve, transfer=fit.transfer, held_out_mape=fit.errors,
                     train_mape=fit.train_errors, counts=fit.counts)

