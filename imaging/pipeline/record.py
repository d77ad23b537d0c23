"""The record of one pipeline run: each step's name, parameters, versions, timing and
outcome, saved on `ProcessingRun.steps` as the run goes, so every number shown later can
be traced to what made it (docs/ARCHITECTURE.md, "Provenance"); who is on the run (its
claim, for repeat deliveries of a task) and how far it has got (`run_progress`)."""

from __future__ import annotations

import datetime as dt
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from imaging.models import ProcessingRun, Series
from radtrack.celery import Contention
from radtrack.provenance import json_safe

#: The steps of a run in order, each with its rough share of a run's time in percent,
#: from a full-size follow-up on 2 CPU cores: segmentation, registration (follow-ups
#: only) and writing the compressed volume take nearly all of it.
STEP_WEIGHTS: dict[str, int] = {
    "device": 1,
    "series_to_volume": 3,
    "orientation_standardise": 3,
    "store_volume": 15,
    "register_to_baseline": 25,
    "segment": 45,
    "store_segmentation": 5,
    "track_lesions": 3,
}


class StepFailed(Exception):
    """A pipeline step could not complete; the message is shown to users."""


@dataclass
class RunRecorder:
    """Collects step records for a `ProcessingRun` as the pipeline goes."""

    run: ProcessingRun
    steps: list[dict[str, Any]] = field(default_factory=list)
    on_step: Callable[[str], None] | None = None

    @contextmanager
    def step(self, name: str, **parameters: Any) -> Iterator[dict[str, Any]]:
        entry: dict[str, Any] = {"name": name, "parameters": parameters, "status": "running"}
        self.steps.append(entry)
        self._save()
        if self.on_step:
            self.on_step(name)
        started = time.perf_counter()
        try:
            yield entry
        except Exception as exc:
            entry["status"] = "failed"
            entry["error"] = str(exc)
            raise
        else:
            entry["status"] = "succeeded"
        finally:
            entry["seconds"] = round(time.perf_counter() - started, 4)
            self._save()

    def records(self, records: Any, *, group: str) -> None:
        """Add the core library's own step records (name, parameters, versions, timing)."""
        for record in records:
            entry = record.as_dict() if hasattr(record, "as_dict") else dict(record)
            entry = {"name": entry.pop("name"), "group": group, "status": "succeeded", **entry}
            self.steps.append(entry)
        self._save()

    def _save(self) -> None:
        self.run.steps = json_safe(self.steps)
        self.run.heartbeat_at = timezone.now()
        self.run.save(update_fields=["steps", "heartbeat_at"])


# --------------------------------------------------------------------------- progress
@dataclass(frozen=True)
class RunProgress:
    """Where a run is: the step it is on (or last did) and its share done, in percent."""

    step: str
    percent: int


def run_progress(*, status: str, steps: list[dict[str, Any]]) -> RunProgress:
    """How far a run has got, from its recorded steps (`STEP_WEIGHTS`): the weights of
    the steps before the current one; 100 once the run has succeeded."""
    named = [s for s in steps if isinstance(s, dict) and s.get("name") in STEP_WEIGHTS]
    current = named[-1]["name"] if named else ""
    if status == ProcessingRun.Status.SUCCEEDED:
        return RunProgress(step=current, percent=100)
    if not current:
        return RunProgress(step="", percent=0)
    order = list(STEP_WEIGHTS)
    done = sum(STEP_WEIGHTS[name] for name in order[: order.index(current)])
    if named[-1].get("status") == "succeeded":
        done += STEP_WEIGHTS[current]
    return RunProgress(step=current, percent=min(done, 99))


def tracking_unfinished(*, run: ProcessingRun) -> bool:
    """Whether ``run`` succeeded but its lesion tracking never finished: the results are
    committed before tracking starts (`imaging.pipeline.run`), so a worker lost in
    between leaves a success whose ``track_lesions`` step is missing or still running
    (a tracking that failed fails the run)."""
    if run.status != ProcessingRun.Status.SUCCEEDED:
        return False
    return not any(
        isinstance(s, dict) and s.get("name") == "track_lesions" and s.get("status") == "succeeded"
        for s in run.steps or []
    )


# --------------------------------------------------------------------------- the claim
class RunBusy(Contention):
    """A live attempt elsewhere is on the series' run: the task tries again later."""


def run_claim(*, series: Series) -> ProcessingRun:
    """The run this attempt works on, claimed under a lock on the series row, marked
    running, its attempt count raised by one.

    A run left running by an attempt that is gone (`run_abandoned`) is taken over: its
    steps start again and its files are written again in the same folder, so a study
    processed twice leaves one run and one set of rows, never two. Otherwise the
    series' latest queued run, or a new one. `RunBusy` when a live attempt holds it.
    """
    task_id, worker = _current_task_id(), _this_worker()
    with transaction.atomic():
        # The lock: two attempts on one series take turns here (SQLite's writes are
        # serialised anyway: settings open every transaction IMMEDIATE).
        Series.objects.select_for_update().filter(pk=series.pk).exists()
        running = list(
            series.processing_runs.filter(status=ProcessingRun.Status.RUNNING).order_by(
                "created_at", "pk"
            )
        )
        for other in running:
            if not run_abandoned(run=other, task_id=task_id, worker=worker):
                raise RunBusy(
                    f"series {series.pk} is being processed by run {other.pk} "
                    f"({other.worker or 'unknown worker'}, attempt {other.attempts})"
                )
        run = (
            running[-1]
            if running
            else series.processing_runs.filter(status=ProcessingRun.Status.QUEUED)
            .order_by("created_at", "pk")
            .last()
        ) or ProcessingRun(series=series)
        for other in running[:-1]:  # more than one interrupted: the latest is taken over
            _close_superseded(other, by=run)
        run.status = ProcessingRun.Status.RUNNING
        run.attempts += 1
        run.task_id, run.worker = task_id, worker
        run.heartbeat_at = timezone.now()
        run.steps, run.finished_at = [], None
        run.save()
    return run


def run_abandoned(*, run: ProcessingRun, task_id: str, worker: str) -> bool:
    """Whether the attempt that left ``run`` running is gone: its own task was delivered
    again (the broker does so only when the holder was lost, or a retry), it ran in a
    process of this host that has ended (or in this very process, which runs one run at
    a time), or it recorded no step for longer than the broker's visibility timeout (by
    settings longer than any step)."""
    if task_id and run.task_id == task_id:
        return True
    host, _, pid = run.worker.rpartition(":")
    on_this_host = host == socket.gethostname() and pid.isdigit()
    if on_this_host and (run.worker == worker or not _process_alive(int(pid))):
        return True
    last = run.heartbeat_at or run.started_at or run.created_at
    lease = dt.timedelta(seconds=settings.RADTRACK_BROKER_VISIBILITY_TIMEOUT_S)
    return last is None or timezone.now() - last > lease


def _close_superseded(run: ProcessingRun, *, by: ProcessingRun) -> None:
    run.status = ProcessingRun.Status.FAILED
    run.error = f"interrupted: its worker was lost; run {by.pk or 'new'} took the series over"
    run.finished_at = timezone.now()
    run.save(update_fields=["status", "error", "finished_at"])


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _this_worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _current_task_id() -> str:
    """The Celery task this code runs in (a repeat delivery keeps the id), or ''."""
    from celery import current_task

    request = getattr(current_task, "request", None)
    return str(getattr(request, "id", "") or "")
