"""A database error as an ingest session finishes never strands what it stored: the
C-STORE listener tries the finish again until the database is back, the reaper takes a
session whose live process went silent for RADTRACK_INGEST_STALE_MINUTES (indexing its
journal), and a PACS retrieve closes its transfer as failed and the next one queues
what the stopped one stored."""

from __future__ import annotations

import datetime as dt
import logging
import time

import pydicom
import pytest
from django.db import OperationalError
from django.utils import timezone

import imaging.ingest.listener as listener_module
import imaging.ingest.service as service
from imaging.ingest import pacs
from imaging.ingest.journal import journal_path, journal_unindexed
from imaging.ingest.listener import StorageListener
from imaging.ingest.reap import ingest_sessions_reap
from imaging.ingest.service import IngestRun
from imaging.ingest.sessions import dead_sessions
from imaging.ingest.sources import sources_from_paths
from imaging.models import IngestSession, Instance, PacsTransfer, Series
from imaging.pipeline.tasks import study_process_task
from tests.imaging.factories import ct_files
from tests.imaging.test_listener import _send

pytestmark = pytest.mark.django_db(transaction=True)

#: What a database message may quote (a value it refused): never logged.
QUOTED = 'value "Doe^Jane" in column patient_name'


@pytest.fixture
def queued(monkeypatch):
    """Study ids sent to the processing task."""
    calls: list[int] = []
    monkeypatch.setattr(
        study_process_task, "delay", lambda study_id, *a, **kw: calls.append(study_id)
    )
    return calls


@pytest.fixture
def held_rows(monkeypatch):
    """Rows kept for the group commit until the session finishes, and a quick retry."""
    monkeypatch.setattr(service, "GROUP_COMMIT_WAIT_S", 3600.0)
    monkeypatch.setattr(listener_module, "FINISH_RETRY_WAIT_S", 0.05, raising=False)


def _flush_failing(monkeypatch, times: int) -> list[int]:
    """The database goes away for the next ``times`` commits of held-back rows (the
    list returned holds how many are left: set it to 0 and the database is back)."""
    real = IngestRun.flush
    left = [times]

    def flush(self):
        if self._deferred and left[0]:
            left[0] -= 1
            raise OperationalError(QUOTED)
        return real(self)

    monkeypatch.setattr(IngestRun, "flush", flush)
    return left


def _until(check, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check() and time.monotonic() < deadline:
        time.sleep(0.05)
    return check()


def _datasets(tmp_path, key: str) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(f) for f in ct_files(tmp_path / key, key=key, slices=3, size=16)]


# -- (a) the reaper --------------------------------------------------------------
def test_a_silent_session_of_a_live_process_is_reaped_with_its_journal_indexed(
    tmp_path, monkeypatch, queued, settings
):
    monkeypatch.setattr(service, "GROUP_COMMIT_WAIT_S", 3600.0)
    ct_files(tmp_path / "silent", key="silent", slices=4, size=16)
    ct_files(tmp_path / "busy", key="busy", slices=2, size=16)
    silent = IngestRun(source=IngestSession.Source.DIMSE, batch_size=1, group_commit=50)
    outcomes = silent.add(sources_from_paths([tmp_path / "silent"]))
    busy = IngestRun(source=IngestSession.Source.DIMSE, batch_size=1, group_commit=50)
    busy.add(sources_from_paths([tmp_path / "busy"]))
    # Both are owned by this (live) process; one has been silent past the limit.
    quiet_since = timezone.now() - dt.timedelta(minutes=settings.RADTRACK_INGEST_STALE_MINUTES + 5)
    IngestSession.objects.filter(pk=silent.session.pk).update(heartbeat_at=quiet_since)
    assert [d.session.pk for d in dead_sessions()] == [silent.session.pk]

    ((reaped, reason),) = ingest_sessions_reap()

    assert reaped.pk == silent.session.pk and reaped.status == IngestSession.Status.FAILED
    assert "its process could not close it" in reason
    assert "4 of 4 files it had stored but not indexed were indexed" in reason
    assert Instance.objects.filter(ingest_session=reaped).count() == 4
    assert not journal_path(reaped.pk).exists()
    assert len(queued) == 1
    # The live, heartbeating session is left alone, its journal with it.
    busy.session.refresh_from_db()
    assert busy.session.status == IngestSession.Status.RUNNING
    assert len(journal_unindexed(busy.session.pk)) == 2
    assert dead_sessions() == []
    service._UNINDEXED.remove(o.sop_instance_uid for o in outcomes)
    busy.finish()


# -- (b) the listener ----------------------------------------------------------
def test_a_failed_finish_is_tried_again_until_the_rows_are_written_and_queued(
    tmp_path, monkeypatch, queued, held_rows, caplog
):
    _flush_failing(monkeypatch, times=3)
    scp = StorageListener(ae_title="RADTRACK", allowed_aes=[], process=True)
    scp.address = scp.start(host="127.0.0.1", port=0)
    try:
        with caplog.at_level(logging.ERROR, logger="imaging.ingest.listener"):
            statuses = _send(scp, _datasets(tmp_path, "blip"))
            session = IngestSession.objects.get()
            done = _until(lambda: not IngestSession.objects.filter(status="running").exists())
    finally:
        scp.stop(grace_s=1)

    assert [s.Status for s in statuses] == [0, 0, 0]  # what each sender was told
    assert done, "the session was never finished"
    session.refresh_from_db()
    assert session.status == IngestSession.Status.DONE and session.stored == 3
    assert Instance.objects.filter(ingest_session=session).count() == 3
    assert Series.objects.get().state == Series.State.QUEUED and len(queued) == 1
    assert not journal_path(session.pk).exists()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors and all("OperationalError" in e for e in errors)
    assert not any("Doe^Jane" in e for e in errors)


def test_a_finish_failing_until_the_listener_stops_is_left_to_the_reaper(
    tmp_path, monkeypatch, queued, held_rows, settings
):
    away = _flush_failing(monkeypatch, times=10**6)
    scp = StorageListener(ae_title="RADTRACK", allowed_aes=[], process=True)
    scp.address = scp.start(host="127.0.0.1", port=0)
    try:
        _send(scp, _datasets(tmp_path, "away"))
    finally:
        started = time.monotonic()
        scp.stop(grace_s=1)
    assert time.monotonic() - started < 20  # one last try, not a wait for the database

    session = IngestSession.objects.get()
    assert session.status == IngestSession.Status.RUNNING and not Instance.objects.exists()
    assert len(journal_unindexed(session.pk)) == 3
    away[0] = 0  # the database is back
    quiet_since = timezone.now() - dt.timedelta(minutes=settings.RADTRACK_INGEST_STALE_MINUTES + 1)
    IngestSession.objects.filter(pk=session.pk).update(heartbeat_at=quiet_since)

    ((reaped, _),) = ingest_sessions_reap()

    assert reaped.pk == session.pk
    assert Instance.objects.filter(ingest_session=session).count() == 3
    assert Series.objects.get().state == Series.State.QUEUED


# -- (c) the PACS retrieve -------------------------------------------------------
class _FakePacs:
    """QIDO-RS and WADO-RS answers for a set of files."""

    def __init__(self, files):
        self.files = files

    def search_for_instances(self, **kw):
        uids = [str(pydicom.dcmread(f).SOPInstanceUID) for f in self.files]
        return [{"00080018": {"vr": "UI", "Value": [uid]}} for uid in uids]

    def iter_study(self, uid, media_types=None):
        for f in self.files:
            yield pydicom.dcmread(f)


def _pacs(monkeypatch, files) -> tuple[pacs.PacsConfig, str]:
    monkeypatch.setattr(pacs.PacsConfig, "client", lambda self: _FakePacs(files))
    config = pacs.PacsConfig(url="http://pacs.invalid/dicom-web", retry_wait_s=0)
    return config, str(pydicom.dcmread(files[0]).StudyInstanceUID)


def test_a_retrieve_whose_finish_fails_is_closed_failed_and_the_retry_queues_it(
    tmp_path, monkeypatch, queued
):
    files = ct_files(tmp_path / "p", key="pacs-blip", slices=5, size=16)
    config, uid = _pacs(monkeypatch, files)
    real = IngestRun.finish
    calls = [0]

    def finish(self, *, failed=""):
        calls[0] += 1
        if calls[0] == 1:
            raise OperationalError(QUOTED)
        return real(self, failed=failed)

    monkeypatch.setattr(IngestRun, "finish", finish)

    with pytest.raises(OperationalError):  # for the task's automatic retry
        pacs.pacs_study_retrieve(study_instance_uid=uid, config=config)

    first = PacsTransfer.objects.get()
    assert first.status == PacsTransfer.Status.FAILED and first.finished_at is not None
    assert "OperationalError" in first.error and "Doe^Jane" not in first.error
    assert f"ingest session {first.ingest_session_id}" in first.error
    assert Series.objects.get().state == Series.State.RECEIVING and not queued

    second = pacs.pacs_study_retrieve(study_instance_uid=uid, config=config)

    assert second.status == PacsTransfer.Status.DONE
    assert Instance.objects.count() == 5
    assert Series.objects.get().state == Series.State.QUEUED and len(queued) == 1
    session = IngestSession.objects.get(pk=first.ingest_session_id)
    assert session.status == IngestSession.Status.FAILED  # closed, with the reason
    assert f"closed by PACS transfer {second.pk}" in session.issues.get().reason
    assert ingest_sessions_reap() == []
    assert len(queued) == 1


def test_a_retrieve_finding_nothing_missing_queues_series_never_queued(
    tmp_path, monkeypatch, queued
):
    files = ct_files(tmp_path / "n", key="pacs-unqueued", slices=3, size=16)
    config, uid = _pacs(monkeypatch, files)
    # Stored, then closed elsewhere without its series ever being queued.
    run = IngestRun(source=IngestSession.Source.DICOMWEB)
    run.add(sources_from_paths(files))
    IngestSession.objects.filter(pk=run.session.pk).update(status=IngestSession.Status.FAILED)
    assert Series.objects.get().state == Series.State.RECEIVING

    transfer = pacs.pacs_study_retrieve(study_instance_uid=uid, config=config)

    assert transfer.status == PacsTransfer.Status.DONE and transfer.ingest_session is None
    assert Series.objects.get().state == Series.State.QUEUED and len(queued) == 1
    pacs.pacs_study_retrieve(study_instance_uid=uid, config=config)
    assert len(queued) == 1  # queued once: a series already queued is left alone


def test_a_session_that_heartbeats_after_it_was_judged_silent_is_left_running(
    tmp_path, monkeypatch, queued, settings
):
    monkeypatch.setattr(service, "GROUP_COMMIT_WAIT_S", 3600.0)
    ct_files(tmp_path / "late", key="late", slices=2, size=16)
    run = IngestRun(source=IngestSession.Source.DIMSE, batch_size=1, group_commit=50)
    outcomes = run.add(sources_from_paths([tmp_path / "late"]))
    quiet = timezone.now() - dt.timedelta(minutes=settings.RADTRACK_INGEST_STALE_MINUTES + 5)
    IngestSession.objects.filter(pk=run.session.pk).update(heartbeat_at=quiet)
    (found,) = dead_sessions()
    # Between the reaper's reading and its close, the session's process writes again.
    IngestSession.objects.filter(pk=run.session.pk).update(heartbeat_at=timezone.now())

    closer = IngestRun(source=found.session.source, resume=found.session, claim=False)
    closer.finish(failed=found.reason, silent_since=found.session.heartbeat_at)

    run.session.refresh_from_db()
    assert run.session.status == IngestSession.Status.RUNNING
    assert len(journal_unindexed(run.session.pk)) == 2  # still its process's to index
    service._UNINDEXED.remove(o.sop_instance_uid for o in outcomes)
    run.finish()


def test_rows_written_after_a_reaper_elsewhere_closed_the_session_are_queued(
    tmp_path, monkeypatch, queued
):
    monkeypatch.setattr(service, "GROUP_COMMIT_WAIT_S", 3600.0)
    ct_files(tmp_path / "elsewhere", key="elsewhere", slices=2, size=16)
    run = IngestRun(source=IngestSession.Source.DIMSE, batch_size=1, group_commit=50)
    run.add(sources_from_paths([tmp_path / "elsewhere"]))
    # A reaper on another machine (it cannot read this one's journal) closed it.
    IngestSession.objects.filter(pk=run.session.pk).update(status=IngestSession.Status.FAILED)

    session = run.finish()  # the held rows are written now

    assert session.status == IngestSession.Status.FAILED
    assert Instance.objects.filter(ingest_session=session).count() == 2
    assert len(queued) == 1
