"""Files an import stored but had not indexed when its process died (the listener's
group commit answers each C-STORE before its row commits) are indexed by the reaper of
the dead session itself, from the session's journal: no ``verify_storage --repair``."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command

import imaging.ingest.service as service
from imaging.ingest.journal import journal_path, journal_unindexed
from imaging.ingest.reap import ingest_sessions_reap
from imaging.ingest.service import IngestRun
from imaging.ingest.sources import sources_from_paths
from imaging.models import IngestSession, Instance, Series
from tests.imaging.factories import ct_files
from tests.imaging.test_storage_repair import _finished_process_owner

pytestmark = pytest.mark.django_db


def _killed_with_rows_pending(tmp_path, monkeypatch, key: str) -> IngestSession:
    """A listener-style import (rows kept for a group commit) whose process is killed
    after its files were stored and answered, before the rows committed."""
    monkeypatch.setattr(service, "GROUP_COMMIT_WAIT_S", 3600.0)
    ct_files(tmp_path / key, key=key, slices=4, size=16)
    run = IngestRun(source=IngestSession.Source.DIMSE, batch_size=1, group_commit=50, process=True)
    outcomes = run.add(sources_from_paths([tmp_path / key]))
    assert [o.status for o in outcomes] == ["stored"] * 4  # what each sender was told
    assert not Instance.objects.exists()  # the rows wait for the group's commit
    # The process dies: what it held in memory goes, its session names a dead process.
    service._UNINDEXED.remove(o.sop_instance_uid for o in outcomes)
    IngestSession.objects.filter(pk=run.session.pk).update(owner=_finished_process_owner())
    return run.session


def test_the_reaper_indexes_what_a_dead_session_stored_and_had_not_indexed(
    tmp_path, monkeypatch, django_capture_on_commit_callbacks
):
    session = _killed_with_rows_pending(tmp_path, monkeypatch, "killed")
    assert len(journal_unindexed(session.pk)) == 4

    with django_capture_on_commit_callbacks(execute=False) as queued:
        ((reaped, reason),) = ingest_sessions_reap()

    assert reaped.pk == session.pk and reaped.status == IngestSession.Status.FAILED
    assert "4 of 4 files it had stored but not indexed were indexed" in reason
    rows = Instance.objects.all()
    assert rows.count() == 4 and {r.ingest_session_id for r in rows} == {session.pk}
    reaped.refresh_from_db()
    assert reaped.stored == 4
    assert len(queued) == 1  # its series goes to processing, as after any import
    assert Series.objects.get().state == Series.State.QUEUED
    assert not journal_path(session.pk).exists()
    out = StringIO()
    call_command("verify_storage", "--quiet", "--min-age-minutes", "0", stdout=out)
    assert "4 files checked, 0 missing, 0 changed, 0 not indexed" in out.getvalue()


def test_a_journal_left_by_a_session_closed_elsewhere_is_indexed_in_a_repair_session(
    tmp_path, monkeypatch
):
    session = _killed_with_rows_pending(tmp_path, monkeypatch, "elsewhere")
    # Another machine's reaper closed it without this machine's journal.
    IngestSession.objects.filter(pk=session.pk).update(status=IngestSession.Status.FAILED)

    assert ingest_sessions_reap() == []
    repair = IngestSession.objects.get(source=IngestSession.Source.REPAIR)
    assert Instance.objects.filter(ingest_session=repair).count() == 4
    assert not journal_path(session.pk).exists()


def test_a_live_session_keeps_its_journal_and_a_closed_one_leaves_none(tmp_path, monkeypatch):
    monkeypatch.setattr(service, "GROUP_COMMIT_WAIT_S", 3600.0)
    ct_files(tmp_path / "live", key="live", slices=2, size=16)
    run = IngestRun(source=IngestSession.Source.DIMSE, batch_size=1, group_commit=50)
    run.add(sources_from_paths([tmp_path / "live"]))
    assert ingest_sessions_reap() == []  # alive: its rows are its own to commit
    assert len(journal_unindexed(run.session.pk)) == 2
    run.finish()
    assert Instance.objects.count() == 2
    assert not journal_path(run.session.pk).exists()
