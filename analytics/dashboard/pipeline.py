"""Reads for the pipeline page: recent ingest sessions and each study's processing state.

`pipeline_overview` gives the series counts per state, the latest imports and the
studies most recently changed, each series with its latest processing run, its steps and
how far it has got, in a fixed number of queries, and how much waits in each task queue.
`processing_summary` is the worklist's one-line view of the same progress.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db.models import Count, Max

from analytics.dashboard.series import run_status_label, run_warnings
from imaging.models import ANALYSED_MODALITIES, IngestSession, ProcessingRun, Series, Study
from imaging.pipeline.queue import queue_depths
from imaging.pipeline.record import RunProgress, run_progress
from radtrack.celery import TRANSIENT_ERRORS

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
    # What the run flagged (a failed registration, provisional links): "succeeded with
    # warnings", never a plain success.
    run_warnings: tuple[str, ...] = ()
    run_attempts: int = 0
    run_heartbeat_at: dt.datetime | None = None
    progress: RunProgress | None = None

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
class QueueState:
    """Messages waiting per task queue, or why the broker could not say."""

    depths: tuple[tuple[str, int], ...]
    error: str = ""


def queue_state() -> QueueState | None:
    """The broker's queue depths; None when tasks run in-process. The page stays up when
    the broker is down: it says so instead."""
    try:
        depths = queue_depths()
    except TRANSIENT_ERRORS as exc:
        return QueueState(
            depths=(), error=f"the task queue cannot be reached ({type(exc).__name__})"
        )
    return None if depths is None else QueueState(depths=tuple(depths.items()))


@dataclass(frozen=True)
class PipelineOverview:
    """Recent imports, the studies most recently changed, and series counts per state."""

    sessions: tuple[SessionSummary, ...]
    studies: tuple[StudyPipeline, ...]
    state_counts: tuple[tuple[str, str, int], ...]  # state, label, count
    queues: QueueState | None = None

    @property
    def is_active(self) -> bool:
        return any(s.status == "running" for s in self.sessions) or any(
            s.is_active for s in self.studies
        )


def pipeline_overview(*, sessions: int = 10, studies: int = 30) -> PipelineOverview:
    """The pipeline page's data in five queries: recent sessions, state counts, the
    ``studies`` most recently changed studies with their series and latest runs."""
    session_rows = tuple(
        _session_summary(s) for s in IngestSession.objects.order_by("-started_at", "-pk")[:sessions]
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
    by_study = _series_pipelines(recent)
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
        queues=queue_state(),
    )


@dataclass(frozen=True)
class ProcessingSummary:
    """The worklist's line on processing: analysed series per state, and the runs now
    going with their step and share done."""

    waiting: int
    running: int
    done: int
    failed: int
    current: tuple[RunProgress, ...]

    @property
    def is_active(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def total(self) -> int:
        return self.waiting + self.running + self.done + self.failed


def processing_summary() -> ProcessingSummary:
    """Counts of series by processing state and the running runs' progress (one query,
    and one more while something runs)."""
    analysed = Series.objects.filter(modality__in=ANALYSED_MODALITIES)
    counts = {
        row["state"]: row["n"]
        for row in analysed.values("state").annotate(n=Count("pk")).order_by()
    }
    running = counts.get(Series.State.PROCESSING, 0)
    runs = (
        ProcessingRun.objects.filter(status=ProcessingRun.Status.RUNNING)
        .order_by("pk")
        .only("status", "steps")[:5]
        if running
        else []
    )
    return ProcessingSummary(
        waiting=counts.get(Series.State.QUEUED, 0) + counts.get(Series.State.STORED, 0),
        running=running,
        done=counts.get(Series.State.PROCESSED, 0),
        failed=counts.get(Series.State.FAILED, 0),
        current=tuple(run_progress(status=r.status, steps=r.steps or []) for r in runs),
    )


def _session_summary(s: IngestSession) -> SessionSummary:
    return SessionSummary(
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


def _series_pipelines(studies: list[Study]) -> dict[int, list[SeriesPipeline]]:
    """The series of ``studies`` by study pk, each with its latest run's steps (two queries)."""
    series_rows = list(
        Series.objects.filter(study__in=[s.pk for s in studies]).order_by(
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
        by_study.setdefault(s.study_id, []).append(_series_pipeline(s, latest_runs.get(s.pk)))
    return by_study


def _series_pipeline(s: Series, run: ProcessingRun | None) -> SeriesPipeline:
    warnings = run_warnings(run.flags) if run else ()
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
    return SeriesPipeline(
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
        run_status_label=run_status_label(run.status, run.get_status_display(), warnings)
        if run
        else "",
        run_warnings=warnings,
        run_error=run.error if run else "",
        run_device=run.device if run else "",
        run_started_at=run.started_at if run else None,
        run_finished_at=run.finished_at if run else None,
        steps=steps,
        run_attempts=run.attempts if run else 0,
        run_heartbeat_at=run.heartbeat_at if run else None,
        progress=run_progress(status=run.status, steps=run.steps or []) if run else None,
    )
