"""Reads for analytics: the model inputs as DataFrames, and the risk-ordered worklist.

`feature_inputs_load` maps the database onto the tables `analytics.core.features`
expects (the ``export_measurements`` / ``export_responses`` layouts of DESIGN.md for
imaging). `worklist` gives one typed row per patient with the latest risk score of the
current model version and the flags a triage nurse acts on, in a fixed number of queries
whatever the number of patients.
"""

from __future__ import annotations

import datetime as dt
import enum
import math
from collections.abc import Collection, Iterable
from dataclasses import dataclass

import pandas as pd
from django.db.models import (
    CharField,
    DateField,
    Exists,
    F,
    FilteredRelation,
    FloatField,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
    Window,
)
from django.db.models.functions import Coalesce, RowNumber

from analytics.core.features import DemographicFeatures, ImagingFeatures, LabFeatures
from analytics.core.units import ANALYTES
from analytics.core.volumetric import EXPORT_RESPONSE_COLUMNS
from analytics.models import UNSCORED_RANK, ResponseAssessment, RiskModelVersion, RiskScore
from imaging.models import LesionMeasurement, Series, Study
from imaging.selectors import MEASUREMENT_COLUMNS as _MEASUREMENT_COLUMNS
from patients.models import ClinicalEvent, LabResult, Patient
from patients.selectors import _search_filter

__all__ = [
    "EVENT_COLUMNS",
    "FLAG_NAMES",
    "LAB_COLUMNS",
    "MARKER_RULES",
    "MEASUREMENT_COLUMNS",
    "PATIENT_COLUMNS",
    "RESPONSE_COLUMNS",
    "STUDY_COLUMNS",
    "FeatureInputs",
    "MarkerChange",
    "MarkerRule",
    "WorklistOrder",
    "WorklistPage",
    "WorklistRow",
    "current_model_version",
    "feature_inputs_load",
    "marker_change",
    "worklist",
    "worklist_page",
    "cohort_survival",
    "model_metric_lines",
    "pipeline_overview",
]

# --------------------------------------------------------------------------------------
# Model inputs
# --------------------------------------------------------------------------------------
LAB_COLUMNS = ("patient_id", "loinc_code", "value", "unit", "observed_at")
PATIENT_COLUMNS = ("patient_id", "birth_date", "sex")
EVENT_COLUMNS = ("patient_id", "kind", "date")
STUDY_COLUMNS = ("patient_id", "study_instance_uid", "study_date")
# DESIGN.md's `export_measurements` and `export_responses` layouts, defined once.
MEASUREMENT_COLUMNS = _MEASUREMENT_COLUMNS
RESPONSE_COLUMNS = EXPORT_RESPONSE_COLUMNS


@dataclass(frozen=True)
class FeatureInputs:
    """Everything the feature blocks and outcomes read, keyed by MRN (``patient_id``).

    - ``labs``: `LAB_COLUMNS`, values in the canonical unit, ``observed_at`` tz-aware UTC.
    - ``patients``: `PATIENT_COLUMNS` (``sex`` F/M/O or blank).
    - ``events``: `EVENT_COLUMNS` (progression / death / censor).
    - ``studies``: `STUDY_COLUMNS`, every dated CT study (processed or not).
    - ``measurements``: `MEASUREMENT_COLUMNS`, one row per lesion per study.
    - ``responses``: `RESPONSE_COLUMNS`, one row per assessed study.
    """

    labs: pd.DataFrame
    patients: pd.DataFrame
    events: pd.DataFrame
    studies: pd.DataFrame
    measurements: pd.DataFrame
    responses: pd.DataFrame

    def blocks(self, *, lookback_days: float = 365.0) -> list:
        """The feature blocks over these inputs: labs, age and sex, imaging."""
        return [
            LabFeatures(self.labs, lookback_days=lookback_days),
            DemographicFeatures(self.patients),
            ImagingFeatures(self.measurements, self.responses),
        ]


def _frame(rows: Iterable[tuple], columns: tuple[str, ...]) -> pd.DataFrame:
    return pd.DataFrame.from_records(list(rows), columns=list(columns))


def feature_inputs_load(*, patient_ids: Collection[str] | None = None) -> FeatureInputs:
    """Load the model inputs of the patients with these MRNs (all patients when None).

    Six queries. Imaging follows the export layouts of DESIGN.md, with each
    measurement's values in force (a radiologist's override, else the automated value):

    - a measurement a radiologist rejected (a false positive) is left out;
    - a lesion resolved at a study keeps its row there, with volume and diameters 0;
    - studies without a study date are left out (they cannot be placed in time).
    """
    patients = Patient.objects.all()
    if patient_ids is not None:
        patients = patients.filter(patient_id__in=list(patient_ids))
    within = patients.values("pk")

    labs = _frame(
        LabResult.objects.filter(patient__in=within)
        .order_by("patient__patient_id", "loinc_code", "observed_at")
        .values_list("patient__patient_id", "loinc_code", "value", "unit", "observed_at"),
        LAB_COLUMNS,
    )
    if not labs.empty:
        labs["observed_at"] = pd.to_datetime(labs["observed_at"], utc=True)
    people = _frame(patients.order_by("patient_id").values_list(*PATIENT_COLUMNS), PATIENT_COLUMNS)
    events = _frame(
        ClinicalEvent.objects.filter(patient__in=within)
        .order_by("patient__patient_id", "date", "kind")
        .values_list("patient__patient_id", "kind", "date"),
        EVENT_COLUMNS,
    )
    studies = _frame(
        Study.objects.filter(patient__in=within, study_date__isnull=False)
        .order_by("patient__patient_id", "study_date", "study_time", "pk")
        .values_list("patient__patient_id", "study_instance_uid", "study_date"),
        STUDY_COLUMNS,
    )
    measurements = _frame(
        LesionMeasurement.objects.filter(study__patient__in=within, study__study_date__isnull=False)
        .exclude(review_state=LesionMeasurement.Review.REJECTED)
        .annotate(
            volume_in_force=Coalesce("override_volume_ml", "volume_ml"),
            longest_in_force=Coalesce("override_longest_diameter_mm", "longest_diameter_mm"),
            short_in_force=Coalesce("override_short_axis_mm", "short_axis_mm"),
        )
        .order_by("study__patient__patient_id", "study__study_date", "study_id", "lesion__label")
        .values_list(
            "study__patient__patient_id",
            "study__study_instance_uid",
            "study__study_date",
            "lesion__tracking_uid",
            "lesion__label",
            "lesion__organ",
            "status",
            "volume_in_force",
            "longest_in_force",
            "short_in_force",
            "centroid_x_mm",
            "centroid_y_mm",
            "centroid_z_mm",
            "is_target",
            "review_state",
        ),
        MEASUREMENT_COLUMNS,
    )
    if not measurements.empty:
        resolved = measurements["status"] == LesionMeasurement.Status.RESOLVED
        measurements.loc[resolved, ["volume_ml", "longest_diameter_mm", "short_axis_mm"]] = 0.0
    responses = _frame(
        ResponseAssessment.objects.filter(patient__in=within, study__study_date__isnull=False)
        .order_by("patient__patient_id", "study__study_date", "pk")
        .values_list(
            "patient__patient_id",
            "study__study_instance_uid",
            "study__study_date",
            "sum_diameters_mm",
            "total_volume_ml",
            "pct_change_baseline",
            "pct_change_nadir",
            "recist_response",
            "volumetric_response",
            "new_lesions",
        ),
        RESPONSE_COLUMNS,
    )
    return FeatureInputs(
        labs=labs,
        patients=people,
        events=events,
        studies=studies,
        measurements=measurements,
        responses=responses,
    )


# --------------------------------------------------------------------------------------
# Rising markers
# --------------------------------------------------------------------------------------
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


def _rising_markers(patients: QuerySet) -> dict[int, tuple[MarkerChange, ...]]:
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


# --------------------------------------------------------------------------------------
# Worklist
# --------------------------------------------------------------------------------------
FLAG_NAMES = (
    "new_progression",
    "new_lesion",
    "rising_marker",
    "processing_failed",
    "awaiting_review",
)


class WorklistOrder(enum.StrEnum):
    RISK = "risk"  # tier high -> intermediate -> low -> unscored, then score, highest first
    PATIENT = "patient"  # MRN
    LAST_STUDY = "last_study"  # most recent CT study first


@dataclass(frozen=True)
class WorklistRow:
    """One patient on the worklist.

    Risk: the latest `RiskScore` (by landmark date) of the model version the list was
    built for; ``score``, ``tier`` and ``landmark_date`` are None when unscored.

    Flags:

    - ``new_progression``: the patient's latest response assessment is RECIST PD;
    - ``new_lesion``: the latest response assessment found a lesion absent at baseline;
    - ``rising_markers``: markers whose two latest results moved the wrong way by more
      than `MARKER_RULES` allows (CEA, LDH, CRP up; albumin, haemoglobin down);
    - ``processing_failed``: a series of the patient is in state failed;
    - ``awaiting_review``: a lesion measurement still awaits a radiologist's review.
    """

    pk: int
    patient_id: str
    display_name: str
    model_version_id: int | None
    risk_score_id: int | None
    score: float | None
    tier: str | None
    landmark_date: dt.date | None
    last_recist: str
    last_assessment_date: dt.date | None
    last_study_date: dt.date | None
    new_progression: bool
    new_lesion: bool
    rising_markers: tuple[MarkerChange, ...]
    processing_failed: bool
    awaiting_review: bool

    @property
    def rising_marker(self) -> bool:
        return bool(self.rising_markers)

    @property
    def tier_label(self) -> str:
        return str(RiskScore.Tier(self.tier).label) if self.tier else "Not scored"

    @property
    def flags(self) -> tuple[str, ...]:
        """The names (`FLAG_NAMES`) of the flags raised, in that order."""
        return tuple(name for name in FLAG_NAMES if getattr(self, name))


def current_model_version() -> RiskModelVersion | None:
    """The most recently fitted model version, whose scores the worklist shows."""
    return RiskModelVersion.objects.order_by("-created_at", "-pk").first()


def _risk_columns(rows: QuerySet, version: RiskModelVersion | None) -> QuerySet:
    """Annotate the version's latest score of each patient, joined from `LatestRiskScore`.

    One LEFT JOIN on the (model version, patient) key: ordering every patient by tier
    and score needs no lookup per patient before the page is cut.
    """
    if version is None:
        return rows.annotate(
            risk_score_id=Value(None, output_field=IntegerField()),
            risk_score=Value(None, output_field=FloatField()),
            risk_tier=Value(None, output_field=CharField()),
            risk_landmark=Value(None, output_field=DateField()),
            tier_rank=Value(UNSCORED_RANK, output_field=IntegerField()),
        )
    return rows.annotate(
        current_risk=FilteredRelation(
            "latest_risk_scores", condition=Q(latest_risk_scores__model_version=version)
        )
    ).annotate(
        risk_score_id=F("current_risk__risk_score_id"),
        risk_score=F("current_risk__score"),
        risk_tier=F("current_risk__tier"),
        risk_landmark=F("current_risk__landmark_date"),
        tier_rank=Coalesce(
            F("current_risk__tier_rank"), Value(UNSCORED_RANK), output_field=IntegerField()
        ),
    )


def _last_assessments() -> QuerySet:
    return ResponseAssessment.objects.filter(
        patient=OuterRef("pk"), study__study_date__isnull=False
    ).order_by("-study__study_date", "-pk")


def _last_study_date() -> Subquery:
    return Subquery(
        Study.objects.filter(patient=OuterRef("pk"), study_date__isnull=False)
        .order_by("-study_date")
        .values("study_date")[:1]
    )


def _processing_failed() -> Exists:
    return Exists(Series.objects.filter(study__patient=OuterRef("pk"), state=Series.State.FAILED))


def _awaiting_review() -> Exists:
    return Exists(
        LesionMeasurement.objects.filter(
            lesion__patient=OuterRef("pk"), review_state=LesionMeasurement.Review.PENDING
        )
    )


def _detail_columns(rows: QuerySet) -> QuerySet:
    """Annotate the latest response, the latest study and the flags kept in SQL.

    Correlated lookups per patient: `worklist_page` runs them on the page's rows only.
    """
    assessments = _last_assessments()
    return rows.annotate(
        last_recist=Subquery(assessments.values("recist_response")[:1]),
        last_new_lesions=Subquery(assessments.values("new_lesions")[:1]),
        last_assessment_date=Subquery(assessments.values("study__study_date")[:1]),
        last_study_date=_last_study_date(),
        processing_failed=_processing_failed(),
        awaiting_review=_awaiting_review(),
    )


def _ordered(rows: QuerySet, order: WorklistOrder, last_study: str) -> QuerySet:
    """Rows in the worklist's order; ``last_study`` names the latest study's column.
    MRNs are unique, so the order is total and the same in every query that applies it."""
    if order is WorklistOrder.RISK:
        if isinstance(rows.query.annotations.get("tier_rank"), Value):
            # No model yet, nobody scored: constants cannot be ordered on (PostgreSQL
            # refuses them in ORDER BY) and would not change the order anyway.
            return rows.order_by("patient_id")
        return rows.order_by("tier_rank", F("risk_score").desc(nulls_last=True), "patient_id")
    if order is WorklistOrder.LAST_STUDY:
        return rows.order_by(F(last_study).desc(nulls_last=True), "patient_id")
    return rows.order_by("patient_id")


def _worklist_query(
    *,
    tier: str | None,
    search: str,
    flags: Collection[str] | None,
    order: WorklistOrder | str,
    model_version: RiskModelVersion | None,
) -> tuple[QuerySet, QuerySet, RiskModelVersion | None, set[str]]:
    """The matching patients in order, with the risk columns only (filters and order
    use what else they need as aliases); the unfiltered search; the version; the flags
    still to check in Python (rising markers are computed outside SQL)."""
    order = WorklistOrder(order)
    wanted = set(flags or ())
    unknown = wanted - set(FLAG_NAMES)
    if unknown:
        raise ValueError(f"unknown flags {sorted(unknown)}; known: {', '.join(FLAG_NAMES)}")
    if tier is not None and tier not in RiskScore.Tier.values:
        raise ValueError(f"tier must be one of {RiskScore.Tier.values}, not {tier!r}")
    version = model_version if model_version is not None else current_model_version()

    patients = Patient.objects.filter(_search_filter(search))
    rows = _risk_columns(patients, version)
    if tier is not None:
        rows = rows.filter(risk_tier=tier)
    # Every flag but the rising markers is SQL, so the database filters on it and a page
    # of the list can be cut there.
    if wanted & {"new_progression", "new_lesion"}:
        assessments = _last_assessments()
        rows = rows.alias(
            filter_recist=Subquery(assessments.values("recist_response")[:1]),
            filter_new_lesions=Subquery(assessments.values("new_lesions")[:1]),
        )
        if "new_progression" in wanted:
            rows = rows.filter(filter_recist="PD")
        if "new_lesion" in wanted:
            rows = rows.filter(filter_new_lesions=True)
    if "processing_failed" in wanted:
        rows = rows.filter(_processing_failed())
    if "awaiting_review" in wanted:
        rows = rows.filter(_awaiting_review())
    if order is WorklistOrder.LAST_STUDY:
        rows = rows.alias(order_last_study=_last_study_date())
    return _ordered(rows, order, "order_last_study"), patients, version, wanted & {"rising_marker"}


def _worklist_row(
    p: Patient, version: RiskModelVersion | None, markers: dict[int, tuple[MarkerChange, ...]]
) -> WorklistRow:
    return WorklistRow(
        pk=p.pk,
        patient_id=p.patient_id,
        display_name=p.display_name,
        model_version_id=version.pk if version is not None else None,
        risk_score_id=p.risk_score_id,
        score=p.risk_score,
        tier=p.risk_tier,
        landmark_date=p.risk_landmark,
        last_recist=p.last_recist or "",
        last_assessment_date=p.last_assessment_date,
        last_study_date=p.last_study_date,
        new_progression=p.last_recist == "PD",
        new_lesion=bool(p.last_new_lesions),
        rising_markers=markers.get(p.pk, ()),
        processing_failed=p.processing_failed,
        awaiting_review=p.awaiting_review,
    )


def worklist(
    *,
    tier: str | None = None,
    search: str = "",
    flags: Collection[str] | None = None,
    order: WorklistOrder | str = WorklistOrder.RISK,
    model_version: RiskModelVersion | None = None,
) -> list[WorklistRow]:
    """The worklist: every patient matching the filters, with risk and flags.

    ``tier``: only that tier (low, intermediate or high). ``search``: words in the MRN
    or name, as the patient list. ``flags``: only patients with every one of these
    `FLAG_NAMES` raised. ``order``: a `WorklistOrder`. ``model_version``: whose scores
    to show (default `current_model_version`). Three queries, however many patients.
    """
    rows, patients, version, _ = _worklist_query(
        tier=tier, search=search, flags=flags, order=order, model_version=model_version
    )
    markers = _rising_markers(patients)
    out = [_worklist_row(p, version, markers) for p in _detail_columns(rows)]
    if flags and "rising_marker" in flags:
        out = [row for row in out if row.rising_marker]
    return out


@dataclass(frozen=True)
class WorklistPage:
    """One page of the worklist, and where it sits in the whole list."""

    rows: tuple[WorklistRow, ...]
    number: int
    per_page: int
    total: int
    model_version: RiskModelVersion | None

    @property
    def num_pages(self) -> int:
        return max(1, math.ceil(self.total / self.per_page))

    @property
    def has_previous(self) -> bool:
        return self.number > 1

    @property
    def has_next(self) -> bool:
        return self.number < self.num_pages

    @property
    def previous_page_number(self) -> int:
        return self.number - 1

    @property
    def next_page_number(self) -> int:
        return self.number + 1

    @property
    def start_index(self) -> int:
        """1-based position of the first row shown (0 on an empty list)."""
        return (self.number - 1) * self.per_page + 1 if self.rows else 0

    @property
    def end_index(self) -> int:
        return self.start_index + len(self.rows) - 1 if self.rows else 0


def worklist_page(
    *,
    page: int = 1,
    per_page: int = 50,
    tier: str | None = None,
    search: str = "",
    flags: Collection[str] | None = None,
    order: WorklistOrder | str = WorklistOrder.RISK,
    model_version: RiskModelVersion | None = None,
) -> WorklistPage:
    """One page of `worklist` (same filters and order), cut in the database.

    Four queries (model version, count, the page's rows, their markers) whatever the
    number of patients. The list is ordered and cut on the risk columns alone (one join
    on `LatestRiskScore`); the latest response, latest study and flags are looked up
    for the page's rows only, by the query that reads them. Asked for the rising-marker
    flag, the markers of every candidate are needed before the list can be cut, so that
    filter reads them all first (still a fixed number of queries). ``page`` is clamped
    into range.
    """
    if per_page < 1:
        raise ValueError(f"per_page must be at least 1, not {per_page}")
    order = WorklistOrder(order)
    rows, patients, version, python_flags = _worklist_query(
        tier=tier, search=search, flags=flags, order=order, model_version=model_version
    )
    if python_flags:
        markers = _rising_markers(patients)
        matching = [pk for pk in rows.values_list("pk", flat=True) if pk in markers]
        total = len(matching)
        number = _page_clamp(page, total, per_page)
        start = (number - 1) * per_page
        chosen: list[int] | QuerySet = matching[start : start + per_page]
    else:
        total = rows.count()
        number = _page_clamp(page, total, per_page)
        start = (number - 1) * per_page
        chosen = rows[start : start + per_page].values("pk")  # a subquery, not a query
    shown = _ordered(
        _detail_columns(_risk_columns(Patient.objects.filter(pk__in=chosen), version)),
        order,
        "last_study_date",
    )
    cut = list(shown)
    if not python_flags:
        markers = _rising_markers(Patient.objects.filter(pk__in=[p.pk for p in cut]))
    return WorklistPage(
        rows=tuple(_worklist_row(p, version, markers) for p in cut),
        number=number,
        per_page=per_page,
        total=total,
        model_version=version,
    )


def _page_clamp(page: int, total: int, per_page: int) -> int:
    last = max(1, math.ceil(total / per_page))
    return min(max(1, page), last)


# --------------------------------------------------------------------------------------
# Cohort: survival by risk tier, and the model's metrics
# --------------------------------------------------------------------------------------
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
    (`analytics.core.features.landmark_outcomes`): for PFS a patient who had already
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
    from lifelines import KaplanMeierFitter

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
    from analytics.core.features import landmark_outcomes

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
    events = _frame(
        ClinicalEvent.objects.filter(
            patient__in=RiskScore.objects.filter(model_version=model_version).values("patient_id")
        )
        .order_by("patient__patient_id", "date")
        .values_list("patient__patient_id", "kind", "date"),
        EVENT_COLUMNS,
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
        from lifelines.statistics import multivariate_logrank_test

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


# --------------------------------------------------------------------------------------
# Pipeline: ingest sessions and processing state
# --------------------------------------------------------------------------------------
_ACTIVE_SERIES = (
    Series.State.RECEIVING,
    Series.State.STORED,
    Series.State.QUEUED,
    Series.State.PROCESSING,
)


@dataclass(frozen=True)
class StepState:
    name: str
    status: str
    seconds: float | None
    error: str


@dataclass(frozen=True)
class SeriesPipeline:
    pk: int
    series_number: int | None
    description: str
    modality: str
    slice_count: int
    state: str
    state_label: str
    state_detail: str
    updated_at: dt.datetime
    run_pk: int | None
    run_status: str
    run_status_label: str
    run_error: str
    run_device: str
    run_started_at: dt.datetime | None
    run_finished_at: dt.datetime | None
    steps: tuple[StepState, ...]

    @property
    def is_active(self) -> bool:
        return self.state in _ACTIVE_SERIES

    @property
    def steps_done(self) -> int:
        return sum(1 for s in self.steps if s.status == "succeeded")

    @property
    def current_step(self) -> str:
        running = [s.name for s in self.steps if s.status == "running"]
        return running[-1] if running else ""


@dataclass(frozen=True)
class StudyPipeline:
    pk: int
    study_date: dt.date | None
    description: str
    patient_pk: int
    patient_id: str
    series: tuple[SeriesPipeline, ...]
    last_change: dt.datetime

    @property
    def is_active(self) -> bool:
        return any(s.is_active for s in self.series)


@dataclass(frozen=True)
class SessionSummary:
    pk: int
    source_label: str
    origin: str
    status: str
    status_label: str
    started_at: dt.datetime
    finished_at: dt.datetime | None
    files_seen: int
    stored: int
    duplicates: int
    conflicts: int
    rejected: int
    warnings: int


@dataclass(frozen=True)
class PipelineOverview:
    """Recent imports, the studies most recently changed, and series counts per state."""

    sessions: tuple[SessionSummary, ...]
    studies: tuple[StudyPipeline, ...]
    state_counts: tuple[tuple[str, str, int], ...]  # state, label, count

    @property
    def is_active(self) -> bool:
        return any(s.status == "running" for s in self.sessions) or any(
            s.is_active for s in self.studies
        )


def pipeline_overview(*, sessions: int = 10, studies: int = 30) -> PipelineOverview:
    """The pipeline page's data in five queries: recent sessions, state counts, the
    ``studies`` most recently changed studies with their series and latest runs."""
    from django.db.models import Count, Max

    from imaging.models import IngestSession, ProcessingRun

    session_rows = tuple(
        SessionSummary(
            pk=s.pk,
            source_label=s.get_source_display(),
            origin=s.origin,
            status=s.status,
            status_label=s.get_status_display(),
            started_at=s.started_at,
            finished_at=s.finished_at,
            files_seen=s.files_seen,
            stored=s.stored,
            duplicates=s.duplicates,
            conflicts=s.conflicts,
            rejected=s.rejected,
            warnings=s.warnings,
        )
        for s in IngestSession.objects.order_by("-started_at", "-pk")[:sessions]
    )
    labels = dict(Series.State.choices)
    counts = {
        row["state"]: row["n"]
        for row in Series.objects.values("state").annotate(n=Count("pk")).order_by()
    }
    state_counts = tuple(
        (state, str(labels[state]), counts.get(state, 0)) for state in Series.State.values
    )
    recent = list(
        Study.objects.annotate(last_change=Max("series__updated_at"))
        .filter(last_change__isnull=False)
        .select_related("patient")
        .order_by("-last_change", "-pk")[:studies]
    )
    series_rows = list(
        Series.objects.filter(study__in=[s.pk for s in recent]).order_by(
            "study_id", "series_number", "series_instance_uid"
        )
    )
    latest_runs: dict[int, ProcessingRun] = {}
    for run in ProcessingRun.objects.filter(series__in=[s.pk for s in series_rows]).order_by(
        "series_id", "-created_at", "-pk"
    ):
        latest_runs.setdefault(run.series_id, run)
    by_study: dict[int, list[SeriesPipeline]] = {}
    for s in series_rows:
        run = latest_runs.get(s.pk)
        steps = tuple(
            StepState(
                name=str(step.get("name", "")),
                status=str(step.get("status", "")),
                seconds=step.get("seconds"),
                error=str(step.get("error", "")),
            )
            for step in ((run.steps or []) if run else [])
            if isinstance(step, dict)
        )
        by_study.setdefault(s.study_id, []).append(
            SeriesPipeline(
                pk=s.pk,
                series_number=s.series_number,
                description=s.description,
                modality=s.modality,
                slice_count=s.slice_count,
                state=s.state,
                state_label=s.get_state_display(),
                state_detail=s.state_detail,
                updated_at=s.updated_at,
                run_pk=run.pk if run else None,
                run_status=run.status if run else "",
                run_status_label=run.get_status_display() if run else "",
                run_error=run.error if run else "",
                run_device=run.device if run else "",
                run_started_at=run.started_at if run else None,
                run_finished_at=run.finished_at if run else None,
                steps=steps,
            )
        )
    return PipelineOverview(
        sessions=session_rows,
        studies=tuple(
            StudyPipeline(
                pk=st.pk,
                study_date=st.study_date,
                description=st.description,
                patient_pk=st.patient_id,
                patient_id=st.patient.patient_id,
                series=tuple(by_study.get(st.pk, ())),
                last_change=st.last_change,
            )
            for st in recent
        ),
        state_counts=state_counts,
    )
