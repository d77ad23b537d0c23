"""What an interrupted import leaves behind is found and repaired: object files no index
row names, temporary files of interrupted writes, sessions whose process died; and a
series the chooser cannot read is failed with the reason, never left queued."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import zipfile
from io import StringIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from imaging.ingest.reap import ingest_sessions_reap
from imaging.ingest.service import IngestRun, ingest_paths
from imaging.ingest.sessions import dead_sessions, owner_here
from imaging.models import IngestSession, Instance, Series
from imaging.pipeline.run import study_process
from imaging.store import object_path, object_relative_path, object_write
from tests.imaging.factories import ct_files
from tests.patients.factories import UserFactory

ROOT = Path(__file__).resolve().parents[2]


def _plant_orphan_and_temporary(tmp_path: Path) -> tuple[str, Path]:
    """A good object no row names (a crash between write and index) and a temporary
    file of a write cut short, both an hour old."""
    (path,) = ct_files(tmp_path / "orphan", key="orphan", slices=1, size=16)
    data = path.read_bytes()
    relative, _ = object_write(data, hashlib.sha256(data).hexdigest())
    temporary = object_path(relative).parent / ".incoming-abc123.part"
    temporary.write_bytes(data[:100])
    hour_ago = time.time() - 3600
    for p in (object_path(relative), temporary):
        os.utime(p, (hour_ago, hour_ago))
    return relative, temporary


@pytest.mark.django_db
def test_verify_storage_reports_orphans_and_temporaries_and_repair_indexes_them(tmp_path):
    ct_files(tmp_path / "s", key="indexed", slices=2, size=16)
    ingest_paths(paths=[tmp_path / "s"], process=False)
    relative, temporary = _plant_orphan_and_temporary(tmp_path)
    err = StringIO()

    with pytest.raises(CommandError, match="1 not indexed, 1 stale temporary files"):
        call_command("verify_storage", "--quiet", stdout=StringIO(), stderr=err)
    assert f"not indexed: {relative}" in err.getvalue()

    out = StringIO()
    call_command("verify_storage", "--repair", "--quiet", stdout=out, stderr=StringIO())
    assert "repair: 1 files indexed" in out.getvalue()
    assert "1 temporary files removed" in out.getvalue()
    assert not temporary.exists()
    row = Instance.objects.get(stored_path=relative)
    assert row.ingest_session.source == IngestSession.Source.REPAIR
    clean = StringIO()
    call_command("verify_storage", "--quiet", stdout=clean, stderr=StringIO())
    assert "3 files checked, 0 missing, 0 changed, 0 not indexed, 0 stale" in clean.getvalue()


@pytest.mark.django_db
def test_young_files_are_left_to_the_import_that_is_writing_them(tmp_path):
    relative, temporary = _plant_orphan_and_temporary(tmp_path)
    now = time.time()
    os.utime(object_path(relative), (now, now))
    os.utime(temporary, (now, now))
    out = StringIO()
    call_command("verify_storage", "--quiet", stdout=out, stderr=StringIO())
    assert "0 not indexed, 0 stale temporary files" in out.getvalue()


@pytest.mark.django_db
def test_repair_removes_an_orphan_that_repeats_or_conflicts_with_an_indexed_object(tmp_path):
    (path,) = ct_files(tmp_path / "a", key="dup", slices=1, size=16)
    ingest_paths(paths=[path], process=False)
    ds = pydicom.dcmread(path)
    ds.file_meta.ImplementationVersionName = "OTHER"  # the same data set, other File Meta
    other = tmp_path / "other.dcm"
    ds.save_as(other, enforce_file_format=True)
    data = other.read_bytes()
    relative, _ = object_write(data, hashlib.sha256(data).hexdigest())
    hour_ago = time.time() - 3600
    os.utime(object_path(relative), (hour_ago, hour_ago))
    damaged = object_path(object_relative_path("ab" * 32))
    damaged.parent.mkdir(parents=True, exist_ok=True)
    damaged.write_bytes(b"not what its name says")
    os.utime(damaged, (hour_ago, hour_ago))

    out, err = StringIO(), StringIO()
    call_command("verify_storage", "--repair", "--quiet", stdout=out, stderr=err)

    assert not object_path(relative).exists()
    assert not damaged.exists()
    assert "duplicate" in err.getvalue() and "does not match its name" in err.getvalue()
    assert Instance.objects.count() == 1


def _finished_process_owner() -> str:
    """The owner string of a process that has ended (on this host)."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid(), open('/proc/self/stat').read())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid, stat = done.stdout.split(" ", 1)
    return f"{socket.gethostname()}:{pid}:{stat.rsplit(')', 1)[-1].split()[19]}"


@pytest.mark.django_db
def test_a_session_whose_process_died_or_went_quiet_is_marked_failed(tmp_path):
    dead = IngestSession.objects.create(source="folder", owner=_finished_process_owner())
    quiet = IngestSession.objects.create(
        source="upload",
        owner="",
        heartbeat_at=timezone.now() - dt.timedelta(hours=2),
    )
    elsewhere = IngestSession.objects.create(
        source="dimse", owner="other-host:12:34", heartbeat_at=timezone.now()
    )
    alive = IngestSession.objects.create(source="folder", owner=owner_here())
    recent_upload = IngestSession.objects.create(
        source="upload", owner="", heartbeat_at=timezone.now() - dt.timedelta(minutes=5)
    )

    found = {d.session.pk: d.reason for d in dead_sessions()}
    assert set(found) == {dead.pk, quiet.pk}
    assert "ended without closing it" in found[dead.pk]
    assert "no progress for 120 minutes" in found[quiet.pk]

    reaped = ingest_sessions_reap()

    assert {s.pk for s, _ in reaped} == {dead.pk, quiet.pk}
    for session in (dead, quiet):
        session.refresh_from_db()
        assert session.status == IngestSession.Status.FAILED
        assert session.issues.get(file_name="(session)").reason
    for session in (elsewhere, alive, recent_upload):
        session.refresh_from_db()
        assert session.status == IngestSession.Status.RUNNING


@pytest.mark.django_db
def test_a_run_that_finds_its_session_already_failed_leaves_it_so(tmp_path):
    ct_files(tmp_path / "s", key="late", slices=1, size=16)
    run = IngestRun(source=IngestSession.Source.FOLDER, process=False)
    IngestSession.objects.filter(pk=run.session.pk).update(status="failed")
    session = run.finish()
    assert session.status == IngestSession.Status.FAILED


@pytest.mark.django_db
def test_a_chunked_upload_between_requests_has_no_owner_but_a_heartbeat(client, tmp_path):
    client.force_login(UserFactory(groups=["radiologist"]))
    (path,) = ct_files(tmp_path, key="chunk-owner", slices=1, size=16)
    with open(path, "rb") as handle:
        body = client.post("/imaging/upload/chunk/", {"file": [handle]}).json()
    session = IngestSession.objects.get(pk=body["session"])
    assert session.status == IngestSession.Status.RUNNING
    assert session.owner == "" and session.heartbeat_at is not None
    assert not dead_sessions()


def _legacy_multiframe_ct(tmp_path: Path) -> Path:
    (path,) = ct_files(tmp_path / "mf", key="legacy-mf", slices=1, size=16)
    ds = pydicom.dcmread(path)
    frames = np.stack([ds.pixel_array] * 3)
    ds.NumberOfFrames = 3
    ds.PixelData = frames.tobytes()
    out = tmp_path / "legacy-multiframe.dcm"
    ds.save_as(out, enforce_file_format=True)
    return out


@pytest.mark.django_db
def test_a_legacy_multiframe_ct_is_failed_with_the_reason_not_left_queued(tmp_path):
    path = _legacy_multiframe_ct(tmp_path)
    session, (outcome,) = ingest_paths(paths=[path], process=False)
    assert outcome.status == "stored", outcome.reason
    series = Series.objects.get()

    # What the worker does (the eager task, without a broker, runs exactly this).
    assert study_process(study=series.study) is None

    series.refresh_from_db()
    assert series.state == Series.State.FAILED
    assert "cannot be read as a volume" in series.state_detail
    assert "3 frames but no per-frame functional groups" in series.state_detail


@pytest.mark.django_db
def test_a_legacy_multiframe_ct_uploaded_without_a_broker_ends_failed(
    tmp_path, settings, django_capture_on_commit_callbacks
):
    settings.CELERY_TASK_ALWAYS_EAGER = True
    path = _legacy_multiframe_ct(tmp_path)
    with django_capture_on_commit_callbacks(execute=True):
        ingest_paths(paths=[path], process=True)
    series = Series.objects.get()
    assert series.state == Series.State.FAILED


def _zip_with_hidden_entries(tmp_path: Path) -> Path:
    files = ct_files(tmp_path / "z", key="hidden", slices=3, size=16)
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(files[0], "study/IM1.dcm")
        zf.write(files[1], "study/.hidden.dcm")
        zf.write(files[2], "__MACOSX/study/._IM1.dcm")
        zf.write(files[2], ".git/objects/IM3.dcm")
    return archive


@pytest.mark.django_db
def test_hidden_zip_entries_are_skipped_by_the_web_upload_as_by_the_folder_path(client, tmp_path):
    archive = _zip_with_hidden_entries(tmp_path)
    _, folder = ingest_paths(paths=[archive], process=False)
    Instance.objects.all().delete()

    client.force_login(UserFactory(groups=["radiologist"]))
    with open(archive, "rb") as handle:
        web = client.post("/imaging/upload/chunk/", {"file": [handle]}).json()["files"]

    assert [o.name.split(":")[-1] for o in folder] == ["study/IM1.dcm"]
    assert [f["name"] for f in web] == ["study.zip:study/IM1.dcm"]


@pytest.mark.slow
def test_kill_9_during_an_import_is_found_and_repaired(tmp_path):
    """``manage.py ingest`` killed mid-way: the session is marked failed, verify_storage
    finds what is not indexed, and --repair leaves every stored file indexed."""
    ct_files(tmp_path / "in", key="kill", slices=200, size=32)
    env = {
        **os.environ,
        "RADTRACK_DATA_DIR": str(tmp_path / "data"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'kill.sqlite3'}",
    }
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    proc = subprocess.Popen(
        [*manage, "ingest", str(tmp_path / "in"), "--no-process", "--quiet", "--readers", "1"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    objects = tmp_path / "data" / "objects"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(objects.rglob("*.dcm"))) < 40:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # And a write cut short, as a kill a moment later would leave.
    some = next(objects.rglob("*.dcm"))
    (some.parent / ".incoming-killed.part").write_bytes(b"partial")

    def verify(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*manage, "verify_storage", "--quiet", "--min-age-minutes", "0", *extra],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )

    found = verify()
    assert found.returncode != 0
    assert "1 dead sessions" in found.stderr
    assert "stale temporary file" in found.stderr
    repaired = verify("--repair")
    assert repaired.returncode == 0, repaired.stderr
    assert "1 dead sessions marked failed" in repaired.stdout
    assert verify().returncode == 0

    with sqlite3.connect(tmp_path / "kill.sqlite3") as db:
        statuses = [s for (s,) in db.execute("select status from imaging_ingestsession")]
        indexed = db.execute("select count(*) from imaging_instance").fetchone()[0]
    assert "running" not in statuses and "failed" in statuses
    assert indexed == len(list(objects.rglob("*.dcm")))


@pytest.mark.django_db
def test_celery_beat_reaps_dead_sessions_every_ten_minutes(settings):
    from imaging.ingest.tasks import ingest_sessions_reap_task

    entry = settings.CELERY_BEAT_SCHEDULE["ingest-sessions-reap"]
    assert entry["task"] == ingest_sessions_reap_task.name and entry["schedule"] == 600
    session = IngestSession.objects.create(source="folder", owner=_finished_process_owner())

    assert ingest_sessions_reap_task() == 1

    session.refresh_from_db()
    assert session.status == IngestSession.Status.FAILED
