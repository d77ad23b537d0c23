"""Reads for the cohort page: survival by risk tier after the scored landmark, and the
current model's cross-validated metrics.

`cohort_survival` gives Kaplan-Meier curves per tier (lifelines) and a log-rank test in
a fixed number of queries; `model_metric_lines` labels the metrics stored on a
`RiskModelVersion`.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import pandas as pd
from lifelines import KaplanMeierFitter
from lifelines.statistics import multivariate_logrank_test

from analytics.models import RiskModelVersion, RiskScore
from analytics.risk.core.outcomes import landmark_outcomes
from analytics.risk.selectors import EVENT_COLUMNS, rows_frame
from patients.models import ClinicalEvent

TIER_ORDER = ("high", "intermediate", "low")
ENDPOINT_LABELS = {
    "pfs": "Progression-free survival",
    "os": "Overall survival",
}


@dataclass(frozen=True)
class KMCurve:
    """A Kaplan-Meier estimate for one risk tier (lifelines `KaplanMeierFitter`).

    ``times_days`` start at 0; ``survival`` and the 95% confidence band (Greenwood,
    log(-log) transformed, lifelines' default) are the values from each time on.
    ``censored_*``: where follow-up ended without an event, for tick marks.
    """

    tier: str
    tier_label: str
    n: int
    events: int
    times_days: tuple[float, ...]
    survival: tuple[float, ...]
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    censored_days: tuple[float, ...]
    censored_survival: tuple[float, ...]
    median_days: float | None


@dataclass(frozen=True)
class CohortSurvival:
    """Outcomes after each patient's scored landmark, by the tier the score gave.

    Patients count from the landmark date of their latest score of ``model_version``
    (`analytics.risk.core.features.landmark_outcomes`): for PFS a patient who had already
    progressed by then is left out, as is anyone without follow-up past it.
    """

    model_version_id: int
    endpoint: str
    endpoint_label: str
    curves: tuple[KMCurve, ...]
    n_scored: int
    excluded: dict[str, int]
    logrank_p: float | None

    @property
    def n_included(self) -> int:
        return sum(c.n for c in self.curves)


def _km_curve(tier: str, durations: list[float], events: list[bool]) -> KMCurve:
    km = KaplanMeierFitter().fit(durations, event_observed=events)
    table = km.survival_function_
    band = km.confidence_interval_survival_function_
    times = [float(t) for t in table.index]
    censored = [d for d, e in zip(durations, events, strict=True) if not e]
    at_censor = km.survival_function_at_times(censored).tolist() if censored else []
    median = km.median_survival_time_
    return KMCurve(
        tier=tier,
        tier_label=str(RiskScore.Tier(tier).label),
        n=len(durations),
        events=int(sum(events)),
        times_days=tuple(times),
        survival=tuple(float(v) for v in table.iloc[:, 0]),
        lower=tuple(float(v) for v in band.iloc[:, 0]),
        upper=tuple(float(v) for v in band.iloc[:, 1]),
        censored_days=tuple(float(d) for d in censored),
        censored_survival=tuple(float(v) for v in at_censor),
        median_days=float(median) if math.isfinite(median) else None,
    )


def cohort_survival(*, model_version: RiskModelVersion) -> CohortSurvival:
    """Kaplan-Meier curves by risk tier for ``model_version``'s scores (three queries).

    The endpoint is the one the model was fitted for (``parameters["endpoint"]``, PFS
    by default). A multivariate log-rank test across the tiers gives ``logrank_p``
    (None with fewer than two tiers holding an event).
    """

    endpoint = str((model_version.parameters or {}).get("endpoint", "pfs"))
    latest: dict[str, tuple[str, dt.date]] = {}
    for pid, tier, landmark in (
        RiskScore.objects.filter(model_version=model_version)
        .order_by("patient__patient_id", "-landmark_date", "-computed_at", "-pk")
        .values_list("patient__patient_id", "tier", "landmark_date")
    ):
        latest.setdefault(pid, (tier, landmark))
    landmarks = pd.DataFrame(
        [(pid, landmark) for pid, (_tier, landmark) in latest.items()],
        columns=["patient_id", "landmark_date"],
    )
    events = rows_frame(
        rows=ClinicalEvent.objects.filter(
            patient__in=RiskScore.objects.filter(model_version=model_version).values("patient_id")
        )
        .order_by("patient__patient_id", "date")
        .values_list("patient__patient_id", "kind", "date"),
        columns=EVENT_COLUMNS,
    )
    outcomes = landmark_outcomes(events=events, landmarks=landmarks, endpoint=endpoint)
    excluded: dict[str, int] = {}
    for reason in outcomes.excluded.values():
        excluded[reason] = excluded.get(reason, 0) + 1
    by_tier: dict[str, tuple[list[float], list[bool]]] = {}
    for row in outcomes.table.itertuples(index=False):
        durations, flags = by_tier.setdefault(latest[row.patient_id][0], ([], []))
        durations.append(float(row.duration_days))
        flags.append(bool(row.event))
    curves = tuple(_km_curve(t, *by_tier[t]) for t in TIER_ORDER if t in by_tier)
    logrank_p = None
    if sum(1 for c in curves if c.events) >= 2:
        table = outcomes.table
        groups = [latest[pid][0] for pid in table["patient_id"]]
        result = multivariate_logrank_test(table["duration_days"], groups, table["event"])
        logrank_p = float(result.p_value)
    return CohortSurvival(
        model_version_id=model_version.pk,
        endpoint=endpoint,
        endpoint_label=ENDPOINT_LABELS.get(endpoint, endpoint),
        curves=curves,
        n_scored=len(latest),
        excluded=excluded,
        logrank_p=logrank_p,
    )


@dataclass(frozen=True)
class MetricLine:
    label: str
    value: float | None
    sd: float | None
    help: str


_METRIC_LABELS = (
    (
        "c_index",
        "C-index (Harrell), mean over folds",
        "share of comparable pairs ordered right; 0.5 is chance",
    ),
    ("c_index_pooled", "C-index, pooled out-of-fold", "all out-of-fold scores together"),
    ("auc_182d", "Time-dependent AUC at 182 days", "cumulative/dynamic, IPCW (Uno)"),
    ("auc_365d", "Time-dependent AUC at 365 days", "cumulative/dynamic, IPCW (Uno)"),
    ("ibs", "Integrated Brier score", "lower is better; 0.25 is an uninformative model"),
)


def model_metric_lines(version: RiskModelVersion) -> tuple[MetricLine, ...]:
    """The cross-validated metrics stored on ``version``, labelled, in a fixed order."""
    metrics = version.metrics or {}

    def number(key: str) -> float | None:
        value = metrics.get(key)
        return float(value) if isinstance(value, int | float) and math.isfinite(value) else None

    return tuple(
        MetricLine(label=label, value=number(key), sd=number(f"{key}_sd"), help=text)
        for key, label, text in _METRIC_LABELS
        if key in metrics
    )
