"""Reads for the patient pages: the patient list and one patient's timeline.

Each selector loads what a page needs in a fixed, small number of queries and returns
frozen dataclasses, so templates, figures and exports compute on plain objects and
never query the database themselves.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from dataclasses import dataclass

from django.db.models import Count, Max, Min, Q

from imaging.models import Instance, ProcessingRun, Series, Study
from patients.models import Patient

_SERIES_TERMINAL_STATES = {Series.State.PROCESSED, Series.State.NOT_ANALYSED}


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


def _sex_label(value: str) -> str:
    try:
        return str(Patient.Sex(value).label)
    except ValueError:
        return value


def _search_filter(search: str) -> Q:
    """Every word must appear in the MRN or the name (DICOM ``Family^Given``)."""
    query = Q()
    for term in re.split(r"[\s,^]+", search.strip()):
        if term:
            query &= Q(patient_id__icontains=term) | Q(name__icontains=term)
    return query


def patient_list(*, search: str = "") -> list[PatientRow]:
    """Patients matching ``search`` (words in MRN or name), in MRN order, one query."""
    patients = (
        Patient.objects.filter(_search_filter(search))
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
            sex_label=_sex_label(p.sex),
            study_count=p.study_count,
            series_count=p.series_count,
            failed_series_count=p.failed_series_count,
            first_study_date=p.first_study_date,
            last_study_date=p.last_study_date,
        )
        for p in patients
    ]


def patient_timeline(*, patient_id: str | None = None, pk: int | None = None) -> PatientTimeline:
    """Load one patient's studies, series, ingest counts and latest runs (five queries).

    The patient is found by MRN (``patient_id``, DICOM (0010,0020)) or by primary key;
    `Patient.DoesNotExist` is raised when there is none.
    """
    if (patient_id is None) == (pk is None):
        raise TypeError("give exactly one of patient_id or pk")
    lookup = {"patient_id": patient_id} if patient_id is not None else {"pk": pk}
    patient = Patient.objects.get(**lookup)

    studies = list(Study.objects.filter(patient=patient).order_by("study_date", "study_time", "pk"))
    series_rows = list(
        Series.objects.filter(study__patient=patient).order_by(
            "study_id", "series_number", "series_instance_uid"
        )
    )

    ingests: dict[int, list[IngestCount]] = defaultdict(list)
    instance_totals: dict[int, int] = defaultdict(int)
    warning_totals: dict[int, int] = defaultdict(int)
    last_received: dict[int, dt.datetime] = {}
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
        ingests[series_pk].append(IngestCount(row["ingest_session_id"], row["n"]))
        instance_totals[series_pk] += row["n"]
        warning_totals[series_pk] += row["with_warnings"]
        if series_pk not in last_received or row["last"] > last_received[series_pk]:
            last_received[series_pk] = row["last"]

    latest_runs: dict[int, RunSummary] = {}
    runs = (
        ProcessingRun.objects.filter(series__study__patient=patient)
        .order_by("series_id", "-created_at", "-pk")
        .only(
            "pk", "series_id", "status", "error", "device", "created_at", "started_at",
            "finished_at",
        )
    )  # fmt: skip
    for run in runs:
        if run.series_id not in latest_runs:
            latest_runs[run.series_id] = RunSummary(
                pk=run.pk,
                status=run.status,
                status_label=run.get_status_display(),
                error=run.error,
                device=run.device,
                created_at=run.created_at,
                started_at=run.started_at,
                finished_at=run.finished_at,
            )

    chosen = {s.chosen_series_id for s in studies if s.chosen_series_id}
    series_by_study: dict[int, list[SeriesSummary]] = defaultdict(list)
    for s in series_rows:
        spacing = (
            (s.pixel_spacing_row_mm, s.pixel_spacing_column_mm)
            if s.pixel_spacing_row_mm is not None and s.pixel_spacing_column_mm is not None
            else None
        )
        series_by_study[s.study_id].append(
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
                instance_count=instance_totals.get(s.pk, 0),
                instances_with_warnings=warning_totals.get(s.pk, 0),
                last_received_at=last_received.get(s.pk),
                ingests=tuple(ingests.get(s.pk, ())),
                latest_run=latest_runs.get(s.pk),
            )
        )

    return PatientTimeline(
        pk=patient.pk,
        patient_id=patient.patient_id,
        name=patient.name,
        display_name=patient.display_name,
        birth_date=patient.birth_date,
        sex=patient.sex,
        sex_label=_sex_label(patient.sex),
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
