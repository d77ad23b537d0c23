"""Queues, claims and progress, in-process: which queue each task goes to, how a repeat
delivery takes an interrupted run over (and a live one is left alone), what the pipeline
page and the worklist say about progress, and what happens when the broker is away.

The same behaviour with real workers, Redis and PostgreSQL: test_workers.py.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest
from django.contrib.auth.models import Permission, User
from django.db import OperationalError
from django.utils import timezone
from kombu import pools as kombu_pools

from imaging.models import ProcessingRun, Series
from imaging.pipeline.queue import UNSENT_DETAIL, queue_depths, queued_resend, study_queue
from imaging.pipeline.record import RunBusy, run_claim, run_progress
from imaging.pipeline.tasks import _last_attempt_closes_run
from radtrack.celery import TRANSIENT_ERRORS, app, radtrack_task, task_queue
from tests.imaging.factories import ProcessingRunFactory, SeriesFactory

pytestmark = pytest.mark.django_db


def _queue_of(task_name: str) -> str:
    return app.amqp.router.route({}, task_name)["queue"].name


# --------------------------------------------------------------------------- routing
def test_each_task_goes_to_its_queue(settings):
    assert _queue_of("imaging.ingest.tasks.pacs_pull_task") == "ingest"
    assert _queue_of("imaging.ingest.tasks.pacs_study_retrieve_task") == "ingest"
    assert _queue_of("imaging.exports.tasks.patient_dicom_export_task") == "export"
    # HL7 results out wait on the EHR's MLLP peer, as the DICOM sends wait on the PACS.
    assert _queue_of("analytics.hl7.tasks.hl7_study_send_task") == "export"
    assert _queue_of("analytics.hl7.tasks.hl7_results_send_task") == "export"
    assert _queue_of("analytics.risk.tasks.risk_scores_compute_task") == "cpu"
    assert _queue_of("imaging.pipeline.tasks.queued_resend_task") == "cpu"


@pytest.mark.parametrize("gpu_queue", ["cpu", "gpu"])
def test_pipeline_runs_go_where_RADTRACK_GPU_QUEUE_says(settings, gpu_queue):
    settings.RADTRACK_GPU_QUEUE = gpu_queue
    for name in ("study_process_task", "series_process_task"):
        assert _queue_of(f"imaging.pipeline.tasks.{name}") == gpu_queue
        assert task_queue(task_name=f"imaging.pipeline.tasks.{name}") == gpu_queue


def test_a_worker_without_queues_reads_all_four():
    assert sorted(app.amqp.queues) == ["cpu", "export", "gpu", "ingest"]


def test_a_task_on_an_unknown_queue_is_refused():
    with pytest.raises(ValueError, match="queue must be one of"):
        radtrack_task(queue="fast")


def test_the_visibility_timeout_outlasts_the_longest_task(settings):
    options = app.conf.broker_transport_options
    assert options["visibility_timeout"] == settings.RADTRACK_BROKER_VISIBILITY_TIMEOUT_S
    assert options["visibility_timeout"] > app.conf.task_time_limit > app.conf.task_soft_time_limit


# --------------------------------------------------------------------------- claims
def _running(series, **fields) -> ProcessingRun:
    defaults = {
        "status": ProcessingRun.Status.RUNNING,
        "attempts": 1,
        "heartbeat_at": timezone.now(),
    }
    return ProcessingRunFactory(series=series, **{**defaults, **fields})


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_first_attempt_gets_a_new_run_counted_once():
    series = SeriesFactory()
    run = run_claim(series=series)
    assert (run.status, run.attempts, run.worker) == (
        "running",
        1,
        f"{socket.gethostname()}:{os.getpid()}",
    )
    assert ProcessingRun.objects.filter(series=series).count() == 1


def test_a_queued_run_is_the_one_claimed():
    series = SeriesFactory()
    queued = ProcessingRunFactory(series=series, status=ProcessingRun.Status.QUEUED)
    assert run_claim(series=series).pk == queued.pk


def test_the_same_task_delivered_again_takes_its_run_over():
    series = SeriesFactory()
    other_host = _running(
        series, task_id="task-1", worker="elsewhere:123", steps=[{"name": "segment"}]
    )

    @radtrack_task(queue="cpu", bind=True)
    def _claim(self):
        return run_claim(series=series).pk

    result = _claim.apply(task_id="task-1").get()
    assert result == other_host.pk
    other_host.refresh_from_db()
    assert (other_host.attempts, other_host.steps, other_host.task_id) == (2, [], "task-1")
    assert ProcessingRun.objects.filter(series=series).count() == 1


def test_a_run_whose_process_on_this_host_ended_is_taken_over():
    series = SeriesFactory()
    interrupted = _running(series, worker=f"{socket.gethostname()}:{_dead_pid()}")
    run = run_claim(series=series)
    assert run.pk == interrupted.pk and run.attempts == 2


def test_a_run_silent_for_longer_than_the_visibility_timeout_is_taken_over(settings):
    series = SeriesFactory()
    silent = settings.RADTRACK_BROKER_VISIBILITY_TIMEOUT_S + 60
    stale = _running(
        series, worker="elsewhere:1", heartbeat_at=timezone.now() - dt.timedelta(seconds=silent)
    )
    assert run_claim(series=series).pk == stale.pk


def test_a_live_run_elsewhere_is_left_alone():
    series = SeriesFactory()
    live = _running(series, task_id="task-a", worker="elsewhere:1")
    with pytest.raises(RunBusy, match=f"run {live.pk}"):
        run_claim(series=series)
    live.refresh_from_db()
    assert (live.status, live.attempts) == ("running", 1)
    assert isinstance(RunBusy("x"), TRANSIENT_ERRORS)  # the task waits and tries again


def test_when_several_runs_were_interrupted_the_latest_is_taken_over_and_the_rest_closed():
    series = SeriesFactory()
    pid = _dead_pid()
    older = _running(series, worker=f"{socket.gethostname()}:{pid}")
    newer = _running(series, worker=f"{socket.gethostname()}:{pid}")
    assert run_claim(series=series).pk == newer.pk
    older.refresh_from_db()
    assert older.status == "failed" and f"run {newer.pk} took the series over" in older.error


def test_after_the_last_retry_the_run_is_closed_as_failed_with_the_reason():
    series = SeriesFactory(state=Series.State.PROCESSING)
    run = _running(series, task_id="task-9")
    task = SimpleNamespace(
        name="study_process_task", max_retries=3, request=SimpleNamespace(id="task-9", retries=3)
    )
    with pytest.raises(OperationalError), _last_attempt_closes_run(task):
        raise OperationalError("server closed the connection unexpectedly")
    run.refresh_from_db()
    series.refresh_from_db()
    assert run.status == "failed" and run.error.startswith("gave up after 4 attempts")
    assert series.state == Series.State.FAILED


def test_before_the_last_retry_the_run_stays_claimed_for_the_retry():
    series = SeriesFactory()
    run = _running(series, task_id="task-9")
    task = SimpleNamespace(name="t", max_retries=3, request=SimpleNamespace(id="task-9", retries=1))
    with pytest.raises(OperationalError), _last_attempt_closes_run(task):
        raise OperationalError("gone")
    run.refresh_from_db()
    assert run.status == "running"


# --------------------------------------------------------------------------- progress
def _steps(*pairs):
    return [{"name": name, "status": status} for name, status in pairs]


@pytest.mark.parametrize(
    ("steps", "status", "expected"),
    [
        ([], "running", ("", 0)),
        (_steps(("device", "succeeded"), ("series_to_volume", "running")), "running", ("series_to_volume", 1)),
        # Registration's share counts as done before segmentation, on a baseline too.
        (_steps(("device", "succeeded"), ("series_to_volume", "succeeded"),
                ("orientation_standardise", "succeeded"), ("store_volume", "succeeded"),
                ("segment", "running")), "running", ("segment", 47)),
        (_steps(("segment", "succeeded")), "running", ("segment", 92)),
        (_steps(("track_lesions", "succeeded")), "running", ("track_lesions", 99)),
        (_steps(("track_lesions", "running")), "succeeded", ("track_lesions", 100)),
    ],
)  # fmt: skip
def test_progress_is_the_share_of_the_steps_before_the_current_one(steps, status, expected):
    progress = run_progress(status=status, steps=steps)
    assert (progress.step, progress.percent) == expected


def _viewer(client, *codenames):
    user = User.objects.create_user("viewer", password="x-long-password-1")
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client.force_login(user)
    return user


def test_the_pipeline_page_shows_a_running_run_s_step_share_and_attempt(client):
    series = SeriesFactory(state=Series.State.PROCESSING)
    _running(
        series,
        attempts=2,
        steps=_steps(("device", "succeeded"), ("series_to_volume", "succeeded"),
                     ("orientation_standardise", "succeeded"), ("store_volume", "succeeded"),
                     ("segment", "running")),
    )  # fmt: skip
    _viewer(client, "view_series")
    html = client.get("/pipeline/?fragment=1").content.decode()
    assert 'value="47"' in html and "47 %, segment" in html
    assert "attempt 2" in html


def test_the_worklist_says_how_far_processing_has_got_and_polls_while_it_goes(client):
    SeriesFactory(state=Series.State.PROCESSED)
    SeriesFactory(state=Series.State.QUEUED)
    running = SeriesFactory(state=Series.State.PROCESSING)
    _running(running, steps=_steps(("segment", "running")))
    _viewer(client, "view_patient", "view_series")
    html = client.get("/").content.decode()
    assert "1 of 3 series done" in html and "1 running (segment 47 %)" in html
    assert "1 waiting" in html and 'data-poll-url="/pipeline/?fragment=processing"' in html

    Series.objects.update(state=Series.State.PROCESSED)
    ProcessingRun.objects.update(status=ProcessingRun.Status.SUCCEEDED)
    polled = client.get("/pipeline/?fragment=processing").content.decode()
    assert 'data-active="false"' in polled and "Processing has finished (3 series done)" in polled


def test_the_worklist_says_nothing_about_processing_when_nothing_waits(client):
    SeriesFactory(state=Series.State.PROCESSED)
    _viewer(client, "view_patient", "view_series")
    assert "Processing:" not in client.get("/").content.decode()


# --------------------------------------------------------------------------- broker away
@pytest.fixture
def broker_down():
    """The app pointed at a Redis port nothing listens on (restored afterwards)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    saved = (app.conf.task_always_eager, app.conf.broker_url)
    app.conf.task_always_eager = False
    app.conf.broker_url = f"redis://127.0.0.1:{port}/0"
    _pools_forget()
    yield
    app.conf.task_always_eager, app.conf.broker_url = saved
    _pools_forget()


def _pools_forget() -> None:
    """Connections are pooled per broker URL: drop them so the next send uses the new one.

    kombu keeps its pools in global groups keyed by the broker URL: closing one without
    removing it from its group leaves a closed pool for every later send ("Acquire on
    closed pool" in the next test), so the groups are reset too.
    """
    kombu_pools.reset()
    app._pool = None
    app.amqp._producer_pool = None


def test_work_queued_while_the_broker_is_away_is_kept_and_sent_again(
    broker_down, django_capture_on_commit_callbacks
):
    series = SeriesFactory(state=Series.State.STORED)  # no images: the run ends at the choice
    with django_capture_on_commit_callbacks(execute=True):
        study_queue(study=series.study)
    series.refresh_from_db()
    assert (series.state, series.state_detail) == (Series.State.QUEUED, UNSENT_DETAIL)
    with pytest.raises(TRANSIENT_ERRORS):
        queue_depths()

    app.conf.task_always_eager = True  # the broker is back (in-process here)
    with django_capture_on_commit_callbacks(execute=True):
        assert queued_resend() == 1
    series.refresh_from_db()
    assert series.state == Series.State.NOT_ANALYSED  # sent, and run: nothing to analyse
    assert queued_resend() == 0


def test_pages_stay_up_and_say_the_queue_is_away(broker_down, client):
    _viewer(client, "view_series")
    html = client.get("/pipeline/").content.decode()
    assert "The task queue cannot be reached" in html
    health = client.get("/healthz/")
    assert health.status_code == 200
    assert health.json() == {"database": "ok", "broker": "unreachable"}


def test_the_health_check_needs_no_login_and_names_no_patient(client):
    answer = client.get("/healthz/")
    assert answer.status_code == 200
    assert answer.json() == {"database": "ok", "broker": "in-process"}
