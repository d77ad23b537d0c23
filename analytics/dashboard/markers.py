"""The worklist's rising-marker flag: a rule per lab test, and the patients who break one.

A marker is flagged when its two latest results moved the wrong way (CEA, LDH, CRP up;
albumin, haemoglobin down) by more than its `MarkerRule` allows; `rising_markers_load`
finds them for many patients in one query.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

from django.db.models import F, QuerySet, Window
from django.db.models.functions import RowNumber

from patients.models import LabResult
from patients.units import ANALYTES


@dataclass(frozen=True)
class MarkerRule:
    """When a change between a test's two latest results is flagged.

    ``direction`` +1 flags a rise, -1 a fall. Both thresholds must be passed: the
    relative one (a share of the earlier value) and the absolute one (in the test's
    canonical unit, so that noise around a tiny value does not count), and the two
    results must be at most ``max_interval_days`` apart.
    """

    key: str
    loinc_code: str
    direction: int
    min_relative: float
    min_absolute: float
    max_interval_days: int = 180

    @property
    def unit(self) -> str:
        return ANALYTES[self.loinc_code].canonical_unit


# CEA: a rise of 30% or more over the previous value is the European Group on Tumour
# Markers' threshold for a significant CEA increase in colorectal cancer follow-up.
# The others are RadTrack's attention thresholds, set above the usual short-term
# variation of each test: they prompt a look at the patient, they are not a clinical rule.
MARKER_RULES: tuple[MarkerRule, ...] = (
    MarkerRule("cea", "2039-6", +1, 0.30, 1.0),  # ng/mL
    MarkerRule("ldh", "2532-0", +1, 0.20, 25.0),  # U/L
    MarkerRule("crp", "1988-5", +1, 0.50, 5.0),  # mg/L
    MarkerRule("albumin", "1751-7", -1, 0.10, 0.3),  # g/dL
    MarkerRule("hemoglobin", "718-7", -1, 0.10, 1.0),  # g/dL
)


_RULE_BY_CODE = {rule.loinc_code: rule for rule in MARKER_RULES}


_TOLERANCE = 1e-9


@dataclass(frozen=True)
class MarkerChange:
    """A marker moving the wrong way between its two latest results (see `MARKER_RULES`)."""

    key: str
    previous: float
    latest: float
    unit: str
    previous_at: dt.datetime
    latest_at: dt.datetime

    @property
    def relative_change(self) -> float:
        return (self.latest - self.previous) / self.previous if self.previous else math.inf

    def __str__(self) -> str:
        return f"{self.key} {self.previous:g} → {self.latest:g} {self.unit}"


def marker_change(
    rule: MarkerRule,
    *,
    previous: float,
    latest: float,
    previous_at: dt.datetime,
    latest_at: dt.datetime,
) -> MarkerChange | None:
    """The change if it passes ``rule``'s thresholds (both of them), else None."""
    if (latest_at - previous_at).days > rule.max_interval_days:
        return None
    change = (latest - previous) * rule.direction
    # A hair of tolerance: lab values are decimals, and 4.0 -> 3.6 is a 10% fall.
    if change < rule.min_absolute - _TOLERANCE:
        return None
    if previous > 0 and change / previous < rule.min_relative - _TOLERANCE:
        return None
    return MarkerChange(rule.key, previous, latest, rule.unit, previous_at, latest_at)


def rising_markers_load(*, patients: QuerySet) -> dict[int, tuple[MarkerChange, ...]]:
    """Per patient pk, the markers flagged by `MARKER_RULES`: one query (a window function)."""
    ranked = (
        LabResult.objects.filter(patient__in=patients.values("pk"), loinc_code__in=_RULE_BY_CODE)
        .annotate(
            recency=Window(
                RowNumber(),
                partition_by=[F("patient_id"), F("loinc_code")],
                order_by=F("observed_at").desc(),
            )
        )
        .filter(recency__lte=2)
        .values_list("patient_id", "loinc_code", "value", "observed_at", "recency")
    )
    latest: dict[tuple[int, str], dict[int, tuple[float, dt.datetime]]] = {}
    for patient_pk, code, value, observed_at, recency in ranked:
        latest.setdefault((patient_pk, code), {})[recency] = (value, observed_at)
    out: dict[int, list[MarkerChange]] = {}
    for (patient_pk, code), results in latest.items():
        if 1 not in results or 2 not in results:
            continue
        (now, now_at), (before, before_at) = results[1], results[2]
        change = marker_change(
            _RULE_BY_CODE[code],
            previous=before,
            latest=now,
            previous_at=before_at,
            latest_at=now_at,
        )
        if change is not None:
            out.setdefault(patient_pk, []).append(change)
    order = {rule.key: i for i, rule in enumerate(MARKER_RULES)}
    return {pk: tuple(sorted(c, key=lambda m: order[m.key])) for pk, c in out.items()}
