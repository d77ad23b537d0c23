"""The worklist's rising-marker flag: a rule per lab test, and the patients who break one.

A marker is flagged when its two latest results moved the wrong way (CEA, LDH, CRP up;
albumin, haemoglobin down) by more than its `MarkerRule` allows; `rising_markers_load`
finds them for many patients in one query.

A censored result (a ``comparator``: "< 0.5" is below the assay's limit, "> 1000" above
it) is a bound, not a value, and a flag must be a proven move (`proven_change`): the
change is taken at its smallest the bounds allow, so a rise is flagged only when even
the lowest the latest can be passes the highest the previous can be by the thresholds.
For CEA, "< 0.5" then 0.6 is a rise of at least 0.1 from at most 0.5, under the
thresholds (+30 % and +1 ng/mL): not flagged; 0.6 then "> 1000" is a rise of at least 999: flagged; 0.6 then "< 2" proves nothing
(the latest may be below 0.6): never flagged. A fall (albumin, haemoglobin) is read the
same way round.
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
    """A marker moving the wrong way between its two latest results (see `MARKER_RULES`).

    ``previous_comparator`` and ``latest_comparator``: "" for an exact value, else the
    bound a censored result gives (the value is then that bound)."""

    key: str
    previous: float
    latest: float
    unit: str
    previous_at: dt.datetime
    latest_at: dt.datetime
    previous_comparator: str = ""
    latest_comparator: str = ""

    @property
    def relative_change(self) -> float:
        return (self.latest - self.previous) / self.previous if self.previous else math.inf

    def __str__(self) -> str:
        before = f"{self.previous_comparator} " if self.previous_comparator else ""
        now = f"{self.latest_comparator} " if self.latest_comparator else ""
        return f"{self.key} {before}{self.previous:g} → {now}{self.latest:g} {self.unit}"


#: The side a comparator bounds: "<" and "<=" give an upper bound, ">" and ">=" a lower.
_UPPER, _LOWER = frozenset({"<", "<="}), frozenset({">", ">="})


def _bound(value: float, comparator: str, *, upper: bool) -> float | None:
    """The highest (``upper``) or lowest value a result can be: the value itself when
    exact or bounded on that side, None when the comparator leaves that side open."""
    if not comparator:
        return value
    return value if comparator in (_UPPER if upper else _LOWER) else None


def proven_change(
    *,
    direction: int,
    previous: float,
    latest: float,
    previous_comparator: str = "",
    latest_comparator: str = "",
) -> tuple[float, float] | None:
    """The smallest change in ``direction`` (+1 a rise, -1 a fall) the two results allow,
    with the previous value it is measured from; None when the bounds allow none at all
    (module docstring)."""
    rising = direction > 0
    # A rise at its smallest: the lowest the latest can be over the highest before.
    before = _bound(previous, previous_comparator, upper=rising)
    now = _bound(latest, latest_comparator, upper=not rising)
    if before is None or now is None:
        return None
    return (now - before) * direction, before


def marker_change(
    rule: MarkerRule,
    *,
    previous: float,
    latest: float,
    previous_at: dt.datetime,
    latest_at: dt.datetime,
    previous_comparator: str = "",
    latest_comparator: str = "",
) -> MarkerChange | None:
    """The change if it passes ``rule``'s thresholds (both of them) as a proven change
    (`proven_change`: a censored result counts at its least favourable bound), else None."""
    if (latest_at - previous_at).days > rule.max_interval_days:
        return None
    proven = proven_change(
        direction=rule.direction,
        previous=previous,
        latest=latest,
        previous_comparator=previous_comparator,
        latest_comparator=latest_comparator,
    )
    if proven is None:
        return None
    change, reference = proven
    # A hair of tolerance: lab values are decimals, and 4.0 -> 3.6 is a 10% fall.
    if change < rule.min_absolute - _TOLERANCE:
        return None
    if reference > 0 and change / reference < rule.min_relative - _TOLERANCE:
        return None
    return MarkerChange(
        rule.key,
        previous,
        latest,
        rule.unit,
        previous_at,
        latest_at,
        previous_comparator,
        latest_comparator,
    )


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
        .values_list("patient_id", "loinc_code", "value", "observed_at", "comparator", "recency")
    )
    latest: dict[tuple[int, str], dict[int, tuple[float, dt.datetime, str]]] = {}
    for patient_pk, code, value, observed_at, comparator, recency in ranked:
        latest.setdefault((patient_pk, code), {})[recency] = (value, observed_at, comparator)
    out: dict[int, list[MarkerChange]] = {}
    for (patient_pk, code), results in latest.items():
        if 1 not in results or 2 not in results:
            continue
        (now, now_at, now_bound), (before, before_at, before_bound) = results[1], results[2]
        change = marker_change(
            _RULE_BY_CODE[code],
            previous=before,
            latest=now,
            previous_at=before_at,
            latest_at=now_at,
            previous_comparator=before_bound or "",
            latest_comparator=now_bound or "",
        )
        if change is not None:
            out.setdefault(patient_pk, []).append(change)
    order = {rule.key: i for i, rule in enumerate(MARKER_RULES)}
    return {pk: tuple(sorted(c, key=lambda m: order[m.key])) for pk, c in out.items()}
