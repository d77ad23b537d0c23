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
from collections import defaultdict
from dataclasses import dataclass, field

from django.db.models import Count, Max, Min, Q

from analytics.lesions.selectors import ResponseRow, response_rows
from analytics.models import RiskScore
from analytics.risk.selectors import current_model_version
from imaging.models import Instance, LesionMeasurement, ProcessingRun, Series, Study
from patients.models import LabResult, Patient
from patients.selectors import patient_search_filter, sex_label
from patients.units import ANALYTES

_SERIES_TERMINAL_STATES = {Series.State.PROCESSED, Series.State.NOT_ANALYSED}


@dataclass(frozen=True)
class RunSummary:
    """The latest processing run of a series."""

    pk: int
    status: str
    status_label: str
    error: str
    device: str
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None

    @property
    def seconds(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None


@dataclass(frozen=True)
class IngestCount:
    """How many instances of a series one ingest session brought in."""

    session_id: int | None
    instances: int


@dataclass(frozen=True)
class SeriesSummary:
    """A series as the patient page shows it: what it is, how it arrived, its state."""

    pk: int
    series_instance_uid: str
    series_number: int | None
    modality: str
    description: str
    orientation: str
    kernel: str
    rows: int | None
    columns: int | None
    pixel_spacing_mm: tuple[float, float] | None
    slice_thickness_mm: float | None
    slice_count: int
    state: str
    state_label: str
    state_detail: str
    is_chosen: bool
    instance_count: int
    instances_with_warnings: int
    last_received_at: dt.datetime | None
    ingests: tuple[IngestCount, ...]
    latest_run: RunSummary | None

    @property
    def is_failed(self) -> bool:
        return self.state == Series.State.FAILED

    @property
    def is_settled(self) -> bool:
        """Nothing more will happen to it without someone acting."""
        return self.state in _SERIES_TERMINAL_STATES or self.is_failed


@dataclass(frozen=True)
class StudySummary:
    pk: int
    study_instance_uid: str
    study_date: dt.date | None
    study_time: dt.time | None
    accession_number: str
    description: str
    series: tuple[SeriesSummary, ...]

    @property
    def series_count(self) -> int:
        return len(self.series)

    @property
    def instance_count(self) -> int:
        return sum(s.instance_count for s in self.series)


@dataclass(frozen=True)
class LesionPoint:
    """A lesion at one study, values in force (a radiologist's override wins).

    Sizes in ml and mm; a resolved lesion keeps its row with volume and diameters 0.
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

    @property
    def is_rejected(self) -> bool:
        return self.review_state == LesionMeasurement.Review.REJECTED


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
        """The measurements not rejected as false positives (what the charts draw)."""
        return tuple(p for p in self.points if not p.is_rejected)


@dataclass(frozen=True)
class LabSeries:
    """One laboratory test's results in its canonical unit, oldest first."""

    loinc_code: str
    key: str
    display: str
    unit: str
    observed_at: tuple[dt.datetime, ...]
    values: tuple[float, ...]


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
    def state_counts(self) -> dict[str, int]:
        """Series per state label, for a one-line summary."""
        counts: dict[str, int] = defaultdict(int)
        for study in self.studies:
            for series in study.series:
                counts[series.state_label] += 1
        return dict(counts)


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
    patient = Patient.objects.get(**lookup)
    studies = list(Study.objects.filter(patient=patient).chronological())
    series_by_study = _series_summaries(patient, studies)
    return PatientTimeline(
        pk=patient.pk,
        patient_id=patient.patient_id,
        name=patient.name,
        display_name=patient.display_name,
        birth_date=patient.birth_date,
        sex=patient.sex,
        sex_label=sex_label(patient.sex),
        lesions=_lesion_tracks(patient),
        responses=tuple(response_rows(patient=patient)),
        labs=_lab_series(patient),
        risk=_risk_summary(patient),
        studies=tuple(
            StudySummary(
                pk=study.pk,
                study_instance_uid=study.study_instance_uid,
                study_date=study.study_date,
                study_time=study.study_time,
                accession_number=study.accession_number,
                description=study.description,
                series=tuple(series_by_study.get(study.pk, ())),
            )
            for study in studies
        ),
    )


@dataclass
class _Arrivals:
    """Per series pk: instances per ingest session, totals and the last arrival."""

    ingests: dict[int, list[IngestCount]] = field(default_factory=lambda: defaultdict(list))
    instances: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    with_warnings: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    last_received: dict[int, dt.datetime] = field(default_factory=dict)


def _series_summaries(patient: Patient, studies: list[Study]) -> dict[int, list[SeriesSummary]]:
    """Every series of ``patient`` by study pk, with arrivals and latest run (three queries)."""
    series_rows = list(
        Series.objects.filter(study__patient=patient).order_by(
            "study_id", "series_number", "series_instance_uid"
        )
    )
    arrivals = _arrivals(patient)
    latest_runs = _latest_runs(patient)
    chosen = {s.chosen_series_id for s in studies if s.chosen_series_id}
    by_study: dict[int, list[SeriesSummary]] = defaultdict(list)
    for s in series_rows:
        spacing = (
            (s.pixel_spacing_row_mm, s.pixel_spacing_column_mm)
            if s.pixel_spacing_row_mm is not None and s.pixel_spacing_column_mm is not None
            else None
        )
        by_study[s.study_id].append(
            SeriesSummary(
                pk=s.pk,
                series_instance_uid=s.series_instance_uid,
                series_number=s.series_number,
                modality=s.modality,
                description=s.description,
                orientation=s.orientation_label,
                kernel=s.kernel,
                rows=s.rows,
                columns=s.columns,
                pixel_spacing_mm=spacing,
                slice_thickness_mm=s.slice_thickness_mm,
                slice_count=s.slice_count,
                state=s.state,
                state_label=s.get_state_display(),
                state_detail=s.state_detail,
                is_chosen=s.pk in chosen,
                instance_count=arrivals.instances.get(s.pk, 0),
                instances_with_warnings=arrivals.with_warnings.get(s.pk, 0),
                last_received_at=arrivals.last_received.get(s.pk),
                ingests=tuple(arrivals.ingests.get(s.pk, ())),
                latest_run=latest_runs.get(s.pk),
            )
        )
    return by_study


def _arrivals(patient: Patient) -> _Arrivals:
    """Instance counts per series and ingest session (one grouped query)."""
    out = _Arrivals()
    per_session = (
        Instance.objects.filter(series__study__patient=patient)
        .values("series_id", "ingest_session_id")
        .annotate(
            n=Count("pk"),
            with_warnings=Count("pk", filter=~Q(warnings=[])),
            last=Max("received_at"),
        )
        .order_by("series_id", "ingest_session_id")
    )
    for row in per_session:
        series_pk = row["series_id"]
        out.ingests[series_pk].append(IngestCount(row["ingest_session_id"], row["n"]))
        out.instances[series_pk] += row["n"]
        out.with_warnings[series_pk] += row["with_warnings"]
        if series_pk not in out.last_received or row["last"] > out.last_received[series_pk]:
            out.last_received[series_pk] = row["last"]
    return out


def _latest_runs(patient: Patient) -> dict[int, RunSummary]:
    """The latest processing run of each series of ``patient`` (one query)."""
    latest: dict[int, RunSummary] = {}
    runs = (
        ProcessingRun.objects.filter(series__study__patient=patient)
        .order_by("series_id", "-created_at", "-pk")
        .only(
            "pk", "series_id", "status", "error", "device", "created_at", "started_at",
            "finished_at",
        )
    )  # fmt: skip
    for run in runs:
        if run.series_id not in latest:
            latest[run.series_id] = RunSummary(
                pk=run.pk,
                status=run.status,
                status_label=run.get_status_display(),
                error=run.error,
                device=run.device,
                created_at=run.created_at,
                started_at=run.started_at,
                finished_at=run.finished_at,
            )
    return latest


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
        resolved = m.status == LesionMeasurement.Status.RESOLVED
        tracks.setdefault(m.lesion_id, []).append(
            LesionPoint(
                measurement_pk=m.pk,
                study_pk=m.study_id,
                study_date=m.study.study_date,
                status=m.status,
                status_label=m.get_status_display(),
                volume_ml=0.0 if resolved else m.effective_volume_ml,
                longest_diameter_mm=0.0 if resolved else m.effective_longest_diameter_mm,
                short_axis_mm=0.0 if resolved else m.effective_short_axis_mm,
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


def _lab_series(patient: Patient) -> tuple[LabSeries, ...]:
    """Lab results per LOINC code, RadTrack's known tests first in `ANALYTES` order."""
    by_code: dict[str, list[tuple[dt.datetime, float, str]]] = defaultdict(list)
    for code, value, unit, at in (
        LabResult.objects.filter(patient=patient)
        .order_by("loinc_code", "observed_at")
        .values_list("loinc_code", "value", "unit", "observed_at")
    ):
        by_code[code].append((at, value, unit))
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
