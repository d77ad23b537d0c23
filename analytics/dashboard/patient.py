"""Reads for the patient pages: the patient list and one patient's whole timeline.

The timeline carries the whole graph the patient page draws: studies and series with
their processing state, every lesion identity with its measurement at each study, the
response assessments, the lab results and the current model's risk score.

Each selector loads what a page needs in a fixed, small number of queries and returns
frozen dataclasses, so templates, figures and exports compute on plain objects and
never query the database themselves.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from django.db.models import Count, Max, Min, Q

from analytics.dashboard.series import SeriesSummary, series_summaries
from analytics.lesions.selectors import (
    BestResponseRow,
    ResponseRow,
    best_response_of,
    irecist_of,
    response_rows,
    size_not_assessable,
    size_not_assessable_note,
)
from analytics.models import RiskScore
from analytics.risk.selectors import current_model_version
from imaging.models import LesionMeasurement, Series, Study
from patients.models import LabResult, Patient
from patients.selectors import patient_search_filter, sex_label
from patients.units import ANALYTES


@dataclass(frozen=True)
class StudySummary:
    pk: int
    study_instance_uid: str
    study_date: dt.date | None
    study_time: dt.time | None
    accession_number: str
    description: str
    series: tuple[SeriesSummary, ...]
    response: ResponseRow | None = None
    """The study's response assessment: its banner says when it is NE and why."""

    @property
    def series_count(self) -> int:
        return len(self.series)

    @property
    def instance_count(self) -> int:
        return sum(s.instance_count for s in self.series)

    @property
    def segmentation_state(self) -> str:
        """How far the study's images got, from its analysed series' state (every series'
        when none was chosen): one of `SEGMENTATION_STATES`' keys."""
        series = [s for s in self.series if s.is_chosen] or list(self.series)
        states = {s.state for s in series}
        if Series.State.PROCESSED in states:
            return "segmented"
        if Series.State.FAILED in states:
            return "failed"
        if states & _SERIES_PENDING:
            return "pending"
        return "not_analysed"


_SERIES_PENDING = {
    Series.State.RECEIVING,
    Series.State.STORED,
    Series.State.QUEUED,
    Series.State.PROCESSING,
}

#: What a study's `StudySummary.segmentation_state` is called on the page.
SEGMENTATION_STATES = {
    "segmented": "segmented",
    "failed": "failed",
    "pending": "awaiting processing",
    "not_analysed": "not analysed",
}


@dataclass(frozen=True)
class LesionPoint:
    """A lesion at one study, values in force (a radiologist's override wins).

    Sizes in ml and mm; a lesion confirmed gone or merged measures 0; one not found has
    no sizes (NaN, shown as a dash), never 0; nor has one seen but cut by the edge of
    what was imaged (finding state ``not_assessable``), whose ``size_note`` says so in
    their place. ``finding_state`` and ``state_reason``: what the rules may count it for
    and why (`analytics.lesions.core.findings`).
    """

    measurement_pk: int
    study_pk: int
    study_date: dt.date | None
    status: str
    status_label: str
    volume_ml: float
    longest_diameter_mm: float
    short_axis_mm: float
    confidence: float | None
    is_target: bool
    review_state: str
    review_label: str
    is_overridden: bool
    row: LesionMeasurement | None = field(default=None, compare=False, repr=False)
    """The loaded row (lesion, study and reviewer joined), for the review form partial."""
    finding_state: str = LesionMeasurement.FindingState.CONFIRMED
    finding_label: str = ""
    state_reason: str = ""
    link_provisional: bool = False
    too_small: bool = False
    by_hand: bool = False
    #: Proposed by a classical second reader (liver or lung), not the segmenter (`LesionMeasurement.Origin`).
    second_reader: bool = False
    #: Shown instead of the sizes of a lesion seen whose size is not assessable ("seen,
    #: size not assessable (reaches the edge of the scanned range)"); "" otherwise.
    size_note: str = ""

    @property
    def is_rejected(self) -> bool:
        return (
            self.review_state == LesionMeasurement.Review.REJECTED
            or self.finding_state == LesionMeasurement.FindingState.REJECTED
        )

    @property
    def is_not_found(self) -> bool:
        return self.status == LesionMeasurement.Status.NOT_FOUND


@dataclass(frozen=True)
class LesionTrack:
    """One lesion identity (DICOM Tracking UID) and its measurements, oldest study first."""

    pk: int
    label: str
    organ: str
    organ_label: str
    tracking_uid: str
    points: tuple[LesionPoint, ...]

    @property
    def is_target(self) -> bool:
        return any(p.is_target for p in self.points)

    @property
    def shown_points(self) -> tuple[LesionPoint, ...]:
        """What the charts draw: the measurements not rejected as false positives. A study
        where the lesion was not found, or was seen but its size is not assessable, stays
        in, with no sizes (NaN), so that a chart leaves a gap there rather than drawing a
        line through a study nothing measured (or a cut size)."""
        return tuple(p for p in self.points if not p.is_rejected)

    @property
    def has_measured_point(self) -> bool:
        """Whether any shown point has a volume to draw."""
        return any(
            p.volume_ml is not None and math.isfinite(p.volume_ml) for p in self.shown_points
        )


@dataclass(frozen=True)
class LabSeries:
    """One laboratory test's results in its canonical unit, oldest first."""

    loinc_code: str
    key: str
    display: str
    unit: str
    observed_at: tuple[dt.datetime, ...]
    values: tuple[float, ...]
    #: Per value: "" when exact, else the bound a censored result gives ("<" 0.5).
    comparators: tuple[str, ...] = ()

    @property
    def value_labels(self) -> tuple[str, ...]:
        """Each value as read: ``< 0.5 ng/mL`` for a censored one, never a bare number."""
        comparators = self.comparators or ("",) * len(self.values)
        return tuple(
            f"{c + ' ' if c else ''}{v:g} {self.unit}"
            for c, v in zip(comparators, self.values, strict=True)
        )

    @property
    def dated_labels(self) -> tuple[tuple[dt.datetime, str], ...]:
        """(observed_at, value label) pairs, oldest first, for the lab table."""
        return tuple(zip(self.observed_at, self.value_labels, strict=True))


@dataclass(frozen=True)
class RiskContribution:
    feature: str
    value: float | None
    contribution: float


@dataclass(frozen=True)
class RiskSummary:
    """The patient's latest score from the current model version, and what drives it."""

    score: float
    tier: str
    tier_label: str
    landmark_date: dt.date
    computed_at: dt.datetime
    model_version_pk: int
    model_name: str
    model_kind: str
    model_kind_label: str
    model_created_at: dt.datetime
    scale: str
    reference_score: float | None
    contributions: tuple[RiskContribution, ...]
    notes: tuple[str, ...]


@dataclass(frozen=True)
class PatientTimeline:
    """A patient and every study, series and processing state, oldest study first."""

    pk: int
    patient_id: str
    name: str
    display_name: str
    birth_date: dt.date | None
    sex: str
    sex_label: str
    studies: tuple[StudySummary, ...]
    lesions: tuple[LesionTrack, ...] = ()
    responses: tuple[ResponseRow, ...] = ()
    labs: tuple[LabSeries, ...] = ()
    risk: RiskSummary | None = None
    best_response: BestResponseRow | None = None
    irecist: bool = False
    #: Why iRECIST applies: the clinician's reason, or the EHR import's (the drug and file).
    irecist_reason: str = ""

    @property
    def study_count(self) -> int:
        return len(self.studies)

    @property
    def series_count(self) -> int:
        return sum(s.series_count for s in self.studies)

    @property
    def instance_count(self) -> int:
        return sum(s.instance_count for s in self.studies)

    @property
    def studies_not_segmented(self) -> int:
        """Studies whose images were not segmented (failed, awaiting or not analysed)."""
        return sum(s.segmentation_state != "segmented" for s in self.studies)

    @property
    def no_lesions_note(self) -> str:
        """Why the patient has no lesion, said from the studies' states: a study that was
        never segmented must not read as one where the segmentation found nothing."""
        if not self.studies:
            return "No lesions found yet. No study is stored for this patient."
        counts = Counter(s.segmentation_state for s in self.studies)
        segmented = counts.pop("segmented", 0)
        not_done = ", ".join(
            f"{counts[key]} {label}"
            for key, label in SEGMENTATION_STATES.items()
            if counts.get(key)
        )
        if not segmented:
            return f"No study has been segmented ({not_done})."
        if not not_done:
            return f"Segmentation found no lesion ({segmented} segmented {_studies(segmented)})."
        return (
            f"Segmentation found no lesion in {segmented} of {len(self.studies)} studies; "
            f"not segmented: {not_done}."
        )

    @property
    def state_counts(self) -> dict[str, int]:
        """Series per state label, for a one-line summary."""
        counts: dict[str, int] = defaultdict(int)
        for study in self.studies:
            for series in study.series:
                counts[series.state_label] += 1
        return dict(counts)


def _studies(n: int) -> str:
    return "study" if n == 1 else "studies"


def patient_timeline(*, patient_id: str | None = None, pk: int | None = None) -> PatientTimeline:
    """Load one patient's whole graph in at most ten queries, however much data there is.

    Studies, series, ingest counts and latest runs (five queries); lesions with their
    measurements, response assessments, lab results, and the latest risk score of the
    current model version (five more).

    The patient is found by MRN (``patient_id``, DICOM (0010,0020)) or by primary key;
    `Patient.DoesNotExist` is raised when there is none.
    """
    if (patient_id is None) == (pk is None):
        raise TypeError("give exactly one of patient_id or pk")
    lookup = {"patient_id": patient_id} if patient_id is not None else {"pk": pk}
    patient = Patient.objects.select_related("best_overall_response", "response_settings").get(
        **lookup
    )
    studies = list(Study.objects.filter(patient=patient).chronological())
    series_by_study = series_summaries(patient, studies)
    responses = tuple(response_rows(patient=patient))
    response_of = {r.study_pk: r for r in responses}
    return PatientTimeline(
        pk=patient.pk,
        patient_id=patient.patient_id,
        name=patient.name,
        display_name=patient.display_name,
        birth_date=patient.birth_date,
        sex=patient.sex,
        sex_label=sex_label(patient.sex),
        lesions=_lesion_tracks(patient),
        responses=responses,
        labs=_lab_series(patient),
        risk=_risk_summary(patient),
        best_response=best_response_of(patient),
        irecist=irecist_of(patient),
        irecist_reason=patient.response_settings.reason if irecist_of(patient) else "",
        studies=tuple(
            StudySummary(
                pk=study.pk,
                study_instance_uid=study.study_instance_uid,
                study_date=study.study_date,
                study_time=study.study_time,
                accession_number=study.accession_number,
                description=study.description,
                series=tuple(series_by_study.get(study.pk, ())),
                response=response_of.get(study.pk),
            )
            for study in studies
        ),
    )


def _lesion_tracks(patient: Patient) -> tuple[LesionTrack, ...]:
    """Every lesion identity of ``patient`` with its measurements (one query)."""
    rows = (
        LesionMeasurement.objects.filter(lesion__patient=patient)
        .select_related("lesion", "study", "reviewed_by")
        .order_by("lesion__organ", "lesion__label", "lesion_id", "study__study_date", "study_id")
    )
    tracks: dict[int, list[LesionPoint]] = {}
    lesions = {}
    for m in rows:
        lesions.setdefault(m.lesion_id, m.lesion)
        volume, longest, short = _point_sizes(m)
        tracks.setdefault(m.lesion_id, []).append(
            LesionPoint(
                measurement_pk=m.pk,
                study_pk=m.study_id,
                study_date=m.study.study_date,
                status=m.status,
                status_label=m.get_status_display(),
                volume_ml=volume,
                longest_diameter_mm=longest,
                short_axis_mm=short,
                confidence=m.confidence,
                is_target=m.is_target,
                review_state=m.review_state,
                review_label=m.get_review_state_display(),
                is_overridden=any(
                    v is not None
                    for v in (
                        m.override_volume_ml,
                        m.override_longest_diameter_mm,
                        m.override_short_axis_mm,
                    )
                ),
                row=m,
                finding_state=m.finding_state,
                finding_label=m.get_finding_state_display(),
                state_reason=m.state_reason,
                link_provisional=m.link_provisional,
                too_small=m.too_small,
                by_hand=m.manual_finding_id is not None,
                second_reader=m.origin == LesionMeasurement.Origin.SECOND_READER,
                size_note=size_not_assessable_note(m),
            )
        )
    return tuple(
        LesionTrack(
            pk=lesion.pk,
            label=lesion.label,
            organ=lesion.organ,
            organ_label=lesion.get_organ_display(),
            tracking_uid=lesion.tracking_uid,
            points=tuple(tracks[lesion_pk]),
        )
        for lesion_pk, lesion in lesions.items()
    )


def _point_sizes(m: LesionMeasurement) -> tuple[float, float, float]:
    """(volume, longest, short axis) shown: 0 for a lesion gone or merged, nothing (NaN)
    for one not found, too small to measure (which counts 5 mm, said beside it) or seen
    but with a size not assessable (its cut numbers are not a size)."""
    if m.status in (LesionMeasurement.Status.RESOLVED, LesionMeasurement.Status.MERGED):
        return 0.0, 0.0, 0.0
    if m.status == LesionMeasurement.Status.NOT_FOUND or m.too_small or size_not_assessable(m):
        return math.nan, math.nan, math.nan
    return m.effective_volume_ml, m.effective_longest_diameter_mm, m.effective_short_axis_mm


def _lab_series(patient: Patient) -> tuple[LabSeries, ...]:
    """Lab results per LOINC code, RadTrack's known tests first in `ANALYTES` order."""
    by_code: dict[str, list[tuple[dt.datetime, float, str, str]]] = defaultdict(list)
    for code, value, unit, at, comparator in (
        LabResult.objects.filter(patient=patient)
        .order_by("loinc_code", "observed_at")
        .values_list("loinc_code", "value", "unit", "observed_at", "comparator")
    ):
        by_code[code].append((at, value, unit, comparator))
    known = list(ANALYTES)
    ordered = sorted(by_code, key=lambda c: (known.index(c) if c in known else len(known), c))
    out = []
    for code in ordered:
        results = by_code[code]
        analyte = ANALYTES.get(code)
        out.append(
            LabSeries(
                loinc_code=code,
                key=analyte.key if analyte else code,
                display=analyte.display if analyte else f"LOINC {code}",
                unit=analyte.canonical_unit if analyte else results[-1][2],
                observed_at=tuple(r[0] for r in results),
                values=tuple(r[1] for r in results),
                comparators=tuple(r[3] for r in results),
            )
        )
    return tuple(out)


def _risk_summary(patient: Patient) -> RiskSummary | None:
    """The latest score (by landmark) of the most recently fitted model version (two queries)."""

    version = current_model_version()
    if version is None:
        return None
    score = (
        RiskScore.objects.filter(patient=patient, model_version=version)
        .order_by("-landmark_date", "-computed_at", "-pk")
        .first()
    )
    if score is None:
        return None
    explanation = score.explanation or {}
    contributions = tuple(
        RiskContribution(
            feature=str(c.get("feature", "")),
            value=c.get("value"),
            contribution=float(c.get("contribution") or 0.0),
        )
        for c in explanation.get("contributions", ())
    )
    reference = explanation.get("reference_score")
    return RiskSummary(
        score=score.score,
        tier=score.tier,
        tier_label=score.get_tier_display(),
        landmark_date=score.landmark_date,
        computed_at=score.computed_at,
        model_version_pk=version.pk,
        model_name=version.name,
        model_kind=version.kind,
        model_kind_label=version.get_kind_display(),
        model_created_at=version.created_at,
        scale=str(explanation.get("scale", "")),
        reference_score=float(reference) if reference is not None else None,
        contributions=contributions,
        notes=tuple(str(n) for n in explanation.get("notes", ())),
    )


@dataclass(frozen=True)
class PatientRow:
    """One line of the patient list."""

    pk: int
    patient_id: str
    display_name: str
    birth_date: dt.date | None
    sex_label: str
    study_count: int
    series_count: int
    failed_series_count: int
    first_study_date: dt.date | None
    last_study_date: dt.date | None


def patient_list(*, search: str = "") -> list[PatientRow]:
    """Patients matching ``search`` (words in MRN or name), in MRN order, one query."""
    patients = (
        Patient.objects.filter(patient_search_filter(search))
        .annotate(
            study_count=Count("studies", distinct=True),
            series_count=Count("studies__series", distinct=True),
            failed_series_count=Count(
                "studies__series",
                filter=Q(studies__series__state=Series.State.FAILED),
                distinct=True,
            ),
            first_study_date=Min("studies__study_date"),
            last_study_date=Max("studies__study_date"),
        )
        .order_by("patient_id")
    )
    return [
        PatientRow(
            pk=p.pk,
            patient_id=p.patient_id,
            display_name=p.display_name,
            birth_date=p.birth_date,
            sex_label=sex_label(p.sex),
            study_count=p.study_count,
            series_count=p.series_count,
            failed_series_count=p.failed_series_count,
            first_study_date=p.first_study_date,
            last_study_date=p.last_study_date,
        )
        for p in patients
    ]
