"""Runs that end badly end visibly.

A run stopped by the task's soft time limit fails with that reason, whichever step it
was in (the catch-alls that keep a run going let it through); a run whose worker was
killed (the hard limit: its message acknowledged, never delivered again) is closed as
failed by beat's periodic task; and a worker lost during lesion tracking, after the
results were committed, leaves the tracking to the repeat delivery, which does it
rather than skip the series as done, and never makes a second run.
"""

from __future__ import annotations

import datetime as dt

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from django.utils import timezone

from analytics.models import WorklistFlags
from imaging.ingest.service import ingest_paths
from imaging.models import ProcessingRun, Segmentation, Series, Study
from imaging.pipeline import run as runmod
from imaging.pipeline.queue import series_queue
from imaging.pipeline.run import series_process, study_process
from imaging.pipeline.signals import patient_results_changed
from imaging.pipeline.stale import stale_after
from imaging.pipeline.tasks import series_process_task, stale_runs_close_task
from tests.imaging.factories import ct_files

pytestmark = pytest.mark.django_db

TIME_LIMIT = "stopped at the time limit"


class WorkerKilled(BaseException):
    """The process ends where it stands (the hard time limit, a lost worker): nothing
    after it runs, not even an ``except Exception``."""


def _die_at(name: str):
    def on_step(step: str) -> None:
        if step == name:
            raise WorkerKilled()

    return on_step


def _series(tmp_path, key: str, day: dt.date = dt.date(2024, 3, 1)) -> Series:
    ct_files(tmp_path / key, key=key, slices=12, size=24, study_date=day)
    ingest_paths(paths=[tmp_path / key], process=False)
    return Series.objects.get(study__study_date=day)


@pytest.fixture
def follow_up(tmp_path) -> Series:
    """A follow-up whose patient's baseline is processed: it is registered, and its
    orientation compared with the baseline's."""
    baseline = _series(tmp_path, "base", dt.date(2024, 1, 10))
    assert study_process(study=baseline.study).status == ProcessingRun.Status.SUCCEEDED
    return _series(tmp_path, "follow", dt.date(2024, 4, 10))


def _soft_limit(*args, **kwargs):
    raise SoftTimeLimitExceeded()


def _orientation_with_baseline_times_out(monkeypatch):
    original = runmod.orientation_standardise

    def orientation(*, volume, baseline):
        if baseline is not None:
            raise SoftTimeLimitExceeded()
        return original(volume=volume, baseline=baseline)

    monkeypatch.setattr(runmod, "orientation_standardise", orientation)


@pytest.mark.parametrize(
    "where, step",
    [
        ("orientation", "orientation_standardise"),
        ("registration", "register_to_baseline"),
        ("statistics", "study_statistics"),
        ("segmentation", "segment"),
        ("tracking", "track_lesions"),
    ],
)
def test_the_soft_time_limit_fails_the_run_with_the_reason(follow_up, monkeypatch, where, step):
    import imaging.modelhub.drift

    on_step = None
    if where == "orientation":
        _orientation_with_baseline_times_out(monkeypatch)
    elif where == "registration":
        monkeypatch.setattr(runmod, "register", _soft_limit)
    elif where == "statistics":
        monkeypatch.setattr(imaging.modelhub.drift, "study_statistics_build", _soft_limit)
    elif where == "tracking":
        monkeypatch.setattr(runmod, "patient_results_announce", _soft_limit)
    else:

        def on_step(name: str) -> None:
            if name == step:
                raise SoftTimeLimitExceeded()

    run = series_process(series=follow_up, on_step=on_step)

    run.refresh_from_db()
    follow_up.refresh_from_db()
    assert run.status == ProcessingRun.Status.FAILED
    assert run.error.startswith(TIME_LIMIT) and run.error.endswith(f"in step {step}")
    if where == "registration":  # not flagged as a failed registration, and carried on
        assert "registration_failed" not in run.flags
    assert follow_up.state == Series.State.FAILED and follow_up.state_detail == run.error
    assert WorklistFlags.objects.get(patient=follow_up.study.patient).processing_failed


def test_the_soft_time_limit_in_the_drift_checks_ends_the_task(tmp_path, monkeypatch):
    import imaging.modelhub.drift

    series = _series(tmp_path, "drift")
    monkeypatch.setattr(imaging.modelhub.drift, "drift_after_run", _soft_limit)
    with pytest.raises(SoftTimeLimitExceeded):
        series_process(series=series)
    run = ProcessingRun.objects.get()  # results and tracking were done before
    assert run.status == ProcessingRun.Status.SUCCEEDED
    assert run.steps[-1]["name"] == "track_lesions" and run.steps[-1]["status"] == "succeeded"


def test_beat_closes_a_run_whose_worker_was_killed(tmp_path, settings):
    assert settings.CELERY_BEAT_SCHEDULE["stale-runs-close"] == {
        "task": stale_runs_close_task.name,
        "schedule": 600.0,
    }
    series = _series(tmp_path, "killed")
    with pytest.raises(WorkerKilled):
        series_process(series=series, on_step=_die_at("segment"))
    run = ProcessingRun.objects.get()
    assert run.status == ProcessingRun.Status.RUNNING

    # Within the hard time limit (and its margin) the run may still be at work.
    assert stale_after() > dt.timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT)
    ProcessingRun.objects.filter(pk=run.pk).update(
        heartbeat_at=timezone.now() - stale_after() + dt.timedelta(minutes=1)
    )
    assert stale_runs_close_task() == 0
    run.refresh_from_db()
    assert run.status == ProcessingRun.Status.RUNNING

    ProcessingRun.objects.filter(pk=run.pk).update(
        heartbeat_at=timezone.now() - stale_after() - dt.timedelta(minutes=1)
    )
    assert stale_runs_close_task() == 1
    run.refresh_from_db()
    series.refresh_from_db()
    assert run.status == ProcessingRun.Status.FAILED and run.finished_at is not None
    assert "no step recorded for over" in run.error
    assert series.state == Series.State.FAILED and series.state_detail == run.error
    assert WorklistFlags.objects.get(patient=series.study.patient).processing_failed
    assert stale_runs_close_task() == 0


def test_beat_leaves_the_series_state_of_a_series_queued_again(tmp_path):
    series = _series(tmp_path, "queued")
    with pytest.raises(WorkerKilled):
        series_process(series=series, on_step=_die_at("segment"))
    Series.objects.filter(pk=series.pk).update(state=Series.State.QUEUED)  # new images came
    ProcessingRun.objects.update(heartbeat_at=timezone.now() - stale_after() * 2)
    assert stale_runs_close_task() == 1
    series.refresh_from_db()
    assert ProcessingRun.objects.get().status == ProcessingRun.Status.FAILED
    assert series.state == Series.State.QUEUED


@pytest.fixture
def announced():
    """The patients whose new results were announced (lesion tracking ran)."""
    seen: list[int] = []

    def receive(sender, patient, device, **kwargs):
        seen.append(patient.pk)
        return {}

    patient_results_changed.connect(receive, dispatch_uid="test-audit-announced")
    yield seen
    patient_results_changed.disconnect(dispatch_uid="test-audit-announced")


def _tracked(run: ProcessingRun) -> None:
    tracking = [s for s in run.steps if s["name"] == "track_lesions"]
    assert [s["status"] for s in tracking] == ["interrupted", "succeeded"]
    assert run.steps[-1] == tracking[-1]


def test_a_repeat_study_task_tracks_what_a_lost_worker_left(tmp_path, announced):
    series = _series(tmp_path, "lost")
    with pytest.raises(WorkerKilled):
        series_process(series=series, on_step=_die_at("track_lesions"))
    assert announced == []

    again = study_process(study=Study.objects.get())  # the message, delivered again

    run = ProcessingRun.objects.get()
    assert again == run and run.status == ProcessingRun.Status.SUCCEEDED
    _tracked(run)
    assert announced == [series.study.patient_id]
    series.refresh_from_db()
    assert series.state == Series.State.PROCESSED
    assert study_process(study=Study.objects.get()) is None  # nothing left to do
    assert announced == [series.study.patient_id]


def test_a_repeat_series_task_neither_skips_tracking_nor_runs_again(tmp_path, announced):
    series = _series(tmp_path, "lost2")
    series_queue(series=series)  # a user's choice of series queues the series task
    with pytest.raises(WorkerKilled):
        series_process(series=series, on_step=_die_at("track_lesions"))

    series_process_task(series.pk)  # delivered again: tracking only
    series_process_task(series.pk)  # and again: nothing

    run = ProcessingRun.objects.get()
    assert run.status == ProcessingRun.Status.SUCCEEDED
    _tracked(run)
    assert announced == [series.study.patient_id]
    assert Segmentation.objects.filter(series=series).count() == 1

    series.refresh_from_db()
    series_queue(series=series)  # asked for again: a new run
    series_process_task(series.pk)
    assert ProcessingRun.objects.filter(status=ProcessingRun.Status.SUCCEEDED).count() == 2


def test_beat_tracks_again_a_run_killed_during_tracking_that_nothing_delivers_again(
    tmp_path, announced
):
    from imaging.pipeline.tasks import tracking_unfinished_resume_task

    series = _series(tmp_path, "killed")
    with pytest.raises(WorkerKilled):  # the hard limit: the message is acknowledged
        series_process(series=series, on_step=_die_at("track_lesions"))
    run = ProcessingRun.objects.get()
    assert run.status == ProcessingRun.Status.SUCCEEDED and announced == []

    assert tracking_unfinished_resume_task() == 0  # within the limit: its attempt may live
    ProcessingRun.objects.filter(pk=run.pk).update(
        heartbeat_at=timezone.now() - stale_after() - dt.timedelta(minutes=1)
    )
    assert tracking_unfinished_resume_task() == 1

    run.refresh_from_db()
    _tracked(run)
    assert announced == [series.study.patient_id]
    assert tracking_unfinished_resume_task() == 0  # done: nothing left
