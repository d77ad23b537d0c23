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
    Case,
    CharField,
    DateField,
    Exists,
    F,
    FloatField,
    IntegerField,
    OuterRef,
    QuerySet,
    Subquery,
    Value,
    When,
    Window,
)
from django.db.models.functions import Coalesce, RowNumber

from analytics.core.features import DemographicFeatures, ImagingFeatures, LabFeatures
from analytics.core.units import ANALYTES
from analytics.core.volumetric import EXPORT_RESPONSE_COLUMNS
from analytics.models import ResponseAssessment, RiskModelVersion, RiskScore
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
    "WorklistRow",
    "current_model_version",
    "feature_inputs_load",
    "marker_change",
    "worklist",
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


def _tier_rank() -> Case:
    return Case(
        When(risk_tier=RiskScore.Tier.HIGH, then=Value(0)),
        When(risk_tier=RiskScore.Tier.INTERMEDIATE, then=Value(1)),
        When(risk_tier=RiskScore.Tier.LOW, then=Value(2)),
        default=Value(3),
        output_field=IntegerField(),
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
    order = WorklistOrder(order)
    wanted = set(flags or ())
    unknown = wanted - set(FLAG_NAMES)
    if unknown:
        raise ValueError(f"unknown flags {sorted(unknown)}; known: {', '.join(FLAG_NAMES)}")
    if tier is not None and tier not in RiskScore.Tier.values:
        raise ValueError(f"tier must be one of {RiskScore.Tier.values}, not {tier!r}")
    version = model_version if model_version is not None else current_model_version()

    patients = Patient.objects.filter(_search_filter(search))
    rows = patients
    if version is not None:
        scores = RiskScore.objects.filter(patient=OuterRef("pk"), model_version=version).order_by(
            "-landmark_date", "-computed_at", "-pk"
        )
        rows = rows.annotate(
            risk_score_id=Subquery(scores.values("pk")[:1]),
            risk_score=Subquery(scores.values("score")[:1]),
            risk_tier=Subquery(scores.values("tier")[:1]),
            risk_landmark=Subquery(scores.values("landmark_date")[:1]),
        )
    else:
        rows = rows.annotate(
            risk_score_id=Value(None, output_field=IntegerField()),
            risk_score=Value(None, output_field=FloatField()),
            risk_tier=Value(None, output_field=CharField()),
            risk_landmark=Value(None, output_field=DateField()),
        )
    assessments = ResponseAssessment.objects.filter(
        patient=OuterRef("pk"), study__study_date__isnull=False
    ).order_by("-study__study_date", "-pk")
    rows = rows.annotate(
        tier_rank=_tier_rank(),
        last_recist=Subquery(assessments.values("recist_response")[:1]),
        last_new_lesions=Subquery(assessments.values("new_lesions")[:1]),
        last_assessment_date=Subquery(assessments.values("study__study_date")[:1]),
        last_study_date=Subquery(
            Study.objects.filter(patient=OuterRef("pk"), study_date__isnull=False)
            .order_by("-study_date")
            .values("study_date")[:1]
        ),
        processing_failed=Exists(
            Series.objects.filter(study__patient=OuterRef("pk"), state=Series.State.FAILED)
        ),
        awaiting_review=Exists(
            LesionMeasurement.objects.filter(
                lesion__patient=OuterRef("pk"), review_state=LesionMeasurement.Review.PENDING
            )
        ),
    )
    if tier is not None:
        rows = rows.filter(risk_tier=tier)
    if order is WorklistOrder.RISK:
        rows = rows.order_by("tier_rank", F("risk_score").desc(nulls_last=True), "patient_id")
    elif order is WorklistOrder.LAST_STUDY:
        rows = rows.order_by(F("last_study_date").desc(nulls_last=True), "patient_id")
    else:
        rows = rows.order_by("patient_id")

    markers = _rising_markers(patients)
    out = []
    for p in rows:
        row = WorklistRow(
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
        if all(getattr(row, name) for name in wanted):
            out.append(row)
    return out
