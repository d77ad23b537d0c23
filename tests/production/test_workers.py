"""Faults survived, with real processes: Celery workers on Redis, the real pipeline (the
shipped U-Net) on one generated patient, and the failures a site meets.

- A worker killed (SIGKILL, with its children) in the middle of segmentation, then a new
  worker: the study is processed exactly once, and nothing is half-written meanwhile.
- Redis stopped and started while work is queued: the site stays up, an import during
  the outage is kept, and the queued work resumes.
- PostgreSQL restarted under a running worker: the task retries and succeeds.

Each takes about a minute on 2 cores; a worker processing an imported study end to end
is also what test_run_prod.py checks through every process of `make run-prod`.
"""

from __future__ import annotations

import sys
import urllib.request

import pytest

from tests.production.conftest import free_port, study_folders, wait_for

pytestmark = pytest.mark.slow


def _processed(site, n: int) -> bool:
    states = site.series_states()
    return len(states) == n and all(s == "processed" for s in states)


def _one_run_each(site, n_series: int, *, attempts: dict[int, int] | None = None) -> list[dict]:
    """Exactly one succeeded run and one segmentation per series: nothing doubled."""
    runs = site.runs()
    assert [r["status"] for r in runs] == ["succeeded"] * n_series, [
        (r["status"], r["error"]) for r in runs
    ]
    assert len({r["series_id"] for r in runs}) == n_series
    segmentations = site.sql("SELECT processing_run_id FROM imaging_segmentation ORDER BY id")
    assert sorted(row[0] for row in segmentations) == [r["id"] for r in runs]
    for run in runs:
        assert run["attempts"] == (attempts or {}).get(run["series_id"], 1), run
    return runs


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def test_a_worker_killed_in_segmentation_leaves_the_study_to_the_next_exactly_once(
    make_site, redis_url, cohort
):
    # The message of a lost worker goes back to the queue after the visibility timeout.
    site = make_site(broker_url=redis_url, RADTRACK_BROKER_VISIBILITY_TIMEOUT_S="15")
    site.manage("ingest", str(study_folders(cohort)[0]))
    first = site.worker("first")
    try:
        wait_for(lambda: site.step_status("segment") == "running", timeout=180, what="segmentation")
    except AssertionError:
        raise AssertionError(site.logs()) from None
    first.kill()

    # Nothing half-written: the run is open, no segmentation row, the series not done.
    (run,) = site.runs()
    assert (run["status"], run["attempts"]) == ("running", 1)
    assert site.sql("SELECT COUNT(*) FROM imaging_segmentation") == [(0,)]
    assert site.series_states() == ["processing"]

    site.worker("second")
    try:
        wait_for(lambda: _processed(site, 1), timeout=300, what="the study processed again")
    except AssertionError:
        raise AssertionError(site.logs()) from None
    (done,) = _one_run_each(site, 1, attempts={run["series_id"]: 2})
    assert done["id"] == run["id"]  # the same record, taken over
    uid = site.sql("SELECT series_instance_uid FROM imaging_series")[0][0]
    assert sorted(p.name for p in (site.data / "volumes" / uid).iterdir()) == [f"run-{run['id']}"]
    # Tracking runs after the series is marked processed (`run._step_announce`): wait for it.
    wait_for(lambda: site.sql("SELECT COUNT(*) FROM imaging_lesion")[0][0] > 0, timeout=120,
             what="the study's lesions tracked")  # fmt: skip


def test_redis_stopped_and_started_the_site_stays_up_and_queued_work_resumes(
    make_site, private_redis, cohort
):
    site = make_site(broker_url=private_redis.url, RADTRACK_QUEUED_RESEND_INTERVAL_S="3")
    site.manage("collectstatic", "--no-input", "-v0")
    port = free_port()
    site.start("web", [sys.executable, "-m", "gunicorn", "radtrack.wsgi", "--bind", f"127.0.0.1:{port}",
                       "--workers", "1"])  # fmt: skip
    baseline, follow_up = study_folders(cohort)
    site.manage("ingest", str(baseline))  # queued in Redis, no worker yet

    private_redis.stop()
    # The site stays up: pages answer, the health check says where the broker is.
    status, body = wait_for(
        lambda: _get(f"http://127.0.0.1:{port}/healthz/"), timeout=60, what="gunicorn"
    )
    assert (status, body) == (200, b'{"database": "ok", "broker": "unreachable"}')
    assert _get(f"http://127.0.0.1:{port}/accounts/login/")[0] == 200
    # An import during the outage is stored and its study kept queued, not lost.
    imported = site.manage("ingest", str(follow_up), timeout=120)
    assert "66 stored" in imported.stdout, imported.stdout
    assert sorted(site.series_states()) == ["queued", "queued"]
    # A worker started now waits for the broker.
    site.worker("worker")

    private_redis.start()
    site.start("beat", [sys.executable, "-m", "celery", "-A", "radtrack", "beat", "--schedule",
                        str(site.root / "beat-schedule")])  # fmt: skip
    try:
        wait_for(lambda: _processed(site, 2), timeout=360, what="both studies processed")
    except AssertionError:
        raise AssertionError(site.logs()) from None
    _one_run_each(site, 2)
    assert _get(f"http://127.0.0.1:{port}/healthz/")[1] == b'{"database": "ok", "broker": "ok"}'


def test_postgresql_restarted_under_a_running_worker_the_task_retries_and_succeeds(
    make_site, redis_url, private_postgres, cohort
):
    site = make_site(broker_url=redis_url, database_url=private_postgres.url)
    site.manage("migrate", "--no-input", "-v0", timeout=600)
    site.manage("ingest", str(study_folders(cohort)[0]))
    site.worker("worker")
    try:
        wait_for(lambda: site.step_status("segment") == "running", timeout=180, what="segmentation")
    except AssertionError:
        raise AssertionError(site.logs()) from None
    private_postgres.ctl("restart", "-m", "fast")  # every connection is cut

    try:
        wait_for(lambda: _processed(site, 1), timeout=300, what="the study processed")
    except AssertionError:
        raise AssertionError(site.logs()) from None
    (run,) = _one_run_each(site, 1, attempts={site.runs()[0]["series_id"]: 2})
    assert "Retry in" in site.processes[0].log.read_text()
