"""Reads for the patient page's studies and series: what each series is, how it
arrived, its state, and its latest processing run (a run that succeeded with warnings,
such as a registration that failed or links proposed without one, says so)."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field

from django.db.models import Count, Max, Q

from imaging.models import Instance, ProcessingRun, Series, Study
from patients.models import Patient

_SERIES_TERMINAL_STATES = {Series.State.PROCESSED, Series.State.NOT_ANALYSED}


#: What a run's flags mean, in a few words (`ProcessingRun.flags`).
_WARNINGS = {
    "volume_warnings": "the volume was built with",
    "hu_implausible": "CT numbers implausible",
    "protocol_differs": "made unlike the baseline (kernel, slices or contrast phase: sizes "
    "may differ for that alone)",
    "registration_failed": "registration to the baseline failed",
    "lesion_links_provisional": "lesions linked without a registration, awaiting review",
    "studies_not_followed": "studies whose lesions could not be followed",
    "orientation_review": "orientation to review",
    "orientation_corrected": "orientation corrected",
    "orientation_baseline_unchecked": "orientation not compared with the baseline",
    "stale_review_decisions": "review decisions that no longer apply",
    "corrections_not_carried": "needs attention: radiologists' corrections not carried forward",
}


def run_warnings(flags: object) -> tuple[str, ...]:
    """A run's flags as warnings for a person, one short sentence each."""
    if not isinstance(flags, dict):
        return ()
    out = []
    for key, value in flags.items():
        if not value:
            continue
        text = _WARNINGS.get(key, key.replace("_", " "))
        if isinstance(value, str):
            text += f": {value}"
        elif isinstance(value, list | tuple) and value and isinstance(value[0], str):
            text += ": " + "; ".join(value)
        out.append(text)
    return tuple(out)


def run_status_label(status: str, label: str, warnings: tuple[str, ...]) -> str:
    """ "Succeeded with warnings" for a run that succeeded but left something to review,
    never a plain success."""
    if status == ProcessingRun.Status.SUCCEEDED and warnings:
        return "Succeeded with warnings"
    return label


@dataclass(frozen=True)
class RunSummary:
    """The latest processing run of a series; ``warnings``: what it flagged (a failed
    registration, provisional links, ...), which make it "succeeded with warnings"."""

    pk: int
    status: str
    status_label: str
    error: str
    device: str
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    warnings: tuple[str, ...] = ()

    @property
    def has_warnings(self) -> bool:
        return bool(self.warnings)

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


@dataclass
class _Arrivals:
    """Per series pk: instances per ingest session, totals and the last arrival."""

    ingests: dict[int, list[IngestCount]] = field(default_factory=lambda: defaultdict(list))
    instances: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    with_warnings: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    last_received: dict[int, dt.datetime] = field(default_factory=dict)


def series_summaries(patient: Patient, studies: list[Study]) -> dict[int, list[SeriesSummary]]:
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
            "finished_at", "flags",
        )
    )  # fmt: skip
    for run in runs:
        if run.series_id not in latest:
            warnings = run_warnings(run.flags)
            latest[run.series_id] = RunSummary(
                pk=run.pk,
                status=run.status,
                status_label=run_status_label(run.status, run.get_status_display(), warnings),
                warnings=warnings,
                error=run.error,
                device=run.device,
                created_at=run.created_at,
                started_at=run.started_at,
                finished_at=run.finished_at,
            )
    return latest
