"""``manage.py fit_risk_model [--model cox|gbm]``: cross-validate, store a model version, score everyone.

See `analytics.risk.services` for the landmark policy and what is stored.
"""

from __future__ import annotations

import math
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from analytics.models import RiskModelVersion
from analytics.risk.core.estimators import DEFAULT_HORIZON_DAYS
from analytics.risk.selectors import feature_inputs_load
from analytics.risk.services import (
    LandmarkPolicy,
    RiskModelFitError,
    risk_model_fit_and_store,
    risk_scores_compute,
)


def _number(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _with_sd(metrics: dict, name: str) -> str:
    value, sd = metrics.get(name), metrics.get(f"{name}_sd")
    text = _number(value)
    return f"{text} ± {_number(sd)}" if text != "n/a" and sd is not None else text


def metrics_report(version: RiskModelVersion) -> list[str]:
    """The cross-validated figures of a stored version, as the lines the command prints."""
    m = version.metrics
    p = version.parameters
    horizon = float(m.get("horizon_days", DEFAULT_HORIZON_DAYS))
    lines = [
        f"Cross-validated {version.kind} model, {p.get('folds')} folds by patient: "
        f"{m.get('n_rows')} landmark rows of {m.get('n_patients')} patients, "
        f"{m.get('n_event_patients', '?')} patients with an event ({m.get('n_events')} rows end "
        f"in one; {p.get('endpoint')}; landmarks: {p.get('landmarks')})",
        f"  {'C-index (Harrell)':<22}{_with_sd(m, 'c_index')}   "
        f"(pooled out-of-fold {_number(m.get('c_index_pooled'))})",
        f"  {'td-AUC at 6 months':<22}{_with_sd(m, 'auc_182d')}",
        f"  {'td-AUC at 12 months':<22}{_with_sd(m, 'auc_365d')}",
        f"  {'Integrated Brier':<22}{_with_sd(m, 'ibs')}   (lower is better; 0.25 = coin toss)",
        f"Calibration at {horizon:g} days, by decile of predicted risk (out of fold):",
        f"  {'decile':>6} {'n':>5} {'predicted':>10} {'observed':>9}",
    ]
    for row in m.get("calibration", []):
        note = "" if row.get("followed_to_horizon", True) else "  (follow-up ends before)"
        lines.append(
            f"  {row['group']:>6} {row['n']:>5} {_number(row['mean_predicted']):>10} "
            f"{_number(row['observed']):>9}{note}"
        )
    dropped = p.get("dropped_features") or {}
    if dropped:
        lines.append(
            "Features not used: "
            + "; ".join(f"{name} ({why})" for name, why in sorted(dropped.items()))
        )
    return lines


class Command(BaseCommand):
    help = (
        "Fit a risk model (penalised Cox or gradient boosting) on every patient's features "
        "at landmark dates, print its cross-validated C-index, time-dependent AUC at 6 and 12 "
        "months, integrated Brier score and calibration by decile, store it as a new model "
        "version (artifact, features, training-data fingerprint, metrics, tier thresholds, "
        "library versions) and score every patient with it."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--model", choices=["cox", "gbm"], default="cox")
        parser.add_argument(
            "--penalizer", type=float, default=0.1, help="Cox ridge penalty (default 0.1)"
        )
        parser.add_argument("--folds", type=int, default=5, help="cross-validation folds")
        parser.add_argument("--seed", type=int, default=0, help="fold split and GBM seed")
        parser.add_argument("--endpoint", choices=["pfs", "os"], default="pfs")
        parser.add_argument(
            "--landmarks",
            choices=["studies", "baseline"],
            default="studies",
            help="training landmarks: every assessed CT study date (default), or one per "
            "patient at baseline + --offset-days",
        )
        parser.add_argument("--offset-days", type=int, default=0)
        parser.add_argument(
            "--horizon-days",
            type=float,
            default=DEFAULT_HORIZON_DAYS,
            help="GBM horizon and calibration time (default 365)",
        )
        parser.add_argument("--name", default="", help="a name for the stored version")
        parser.add_argument(
            "--no-score", action="store_true", help="store the model without scoring patients"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["folds"] < 2:
            raise CommandError("--folds must be at least 2")
        if options["penalizer"] < 0:
            raise CommandError("--penalizer must not be negative")
        if options["horizon_days"] <= 0:
            raise CommandError("--horizon-days must be positive")
        verbosity = options["verbosity"]

        def progress(message: str) -> None:
            if verbosity >= 1:
                self.stderr.write(f"  {message}…")

        started = time.monotonic()
        # Read once: the model is fitted on, and then scores, the same snapshot of the data.
        progress("loading patients, labs, events and measurements")
        inputs = feature_inputs_load()
        try:
            version = risk_model_fit_and_store(
                kind=options["model"],
                policy=LandmarkPolicy(options["landmarks"], options["offset_days"]),
                endpoint=options["endpoint"],
                penalizer=options["penalizer"],
                folds=options["folds"],
                seed=options["seed"],
                horizon_days=options["horizon_days"],
                name=options["name"],
                progress=progress,
                inputs=inputs,
            )
        except RiskModelFitError as exc:
            raise CommandError(f"cannot fit a {options['model']} model: {exc}") from exc
        for line in metrics_report(version):
            self.stdout.write(line)
        scored = 0
        if not options["no_score"]:
            progress("scoring every patient")
            scored = risk_scores_compute(model_version=version, inputs=inputs)
        thresholds = version.tier_thresholds
        self.stdout.write(
            f"fit_risk_model: stored {version.kind} model version {version.pk} "
            f"({version.name}; training fingerprint {version.training_fingerprint[:12]}; "
            f"tiers: low < {_number(thresholds.get('low_below'))} <= intermediate < "
            f"{_number(thresholds.get('high_from'))} <= high), scored {scored} patients "
            f"in {time.monotonic() - started:.1f} s"
        )
