"""Two ways an ingest lost images, mended.

An S3 error while storing an instance is the store's own error (an `OSError`): the
instance is refused and counted, its SOP Instance UID is never left behind as "stored
but not indexed", so that its resend is stored, not answered as a duplicate of nothing.

An instance acknowledged as stored (the listener's group commit answers before its row
commits) that turns out to conflict with a file another process indexed meanwhile is
never deleted: its bytes stay in the store, an issue names where, and
``verify_storage --repair`` keeps them.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from concurrent.futures import Future

import pydicom
import pytest
from botocore.config import Config

import imaging.ingest.service as service
from imaging.ingest.reap import ingest_sessions_reap
from imaging.ingest.service import IngestRun
from imaging.ingest.sources import IngestSource
from imaging.ingest.verify import storage_repair, storage_verify
from imaging.models import IngestIssue, IngestSession, Instance
from imaging.store import data_dir, object_path, object_stage, object_write
from imaging.store_s3 import S3Store, StoreError
from tests.imaging.factories import ct_files
from tests.imaging.test_listener import STATUS_SUCCESS, _send, listener, queued  # noqa: F401
from tests.imaging.test_storage_repair import _finished_process_owner

pytestmark = pytest.mark.django_db(transaction=True)

#: The C-STORE status that asks the sender to send again later.
STATUS_OUT_OF_RESOURCES = 0xA700


@pytest.fixture
def s3_down(settings, monkeypatch):
    """The store set to S3 on an endpoint where nothing answers (an outage), tried once."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    settings.RADTRACK_STORE = "s3"
    settings.STORAGES = {
        **settings.STORAGES,
        "images": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": "b",
                "endpoint_url": "http://127.0.0.1:9",
                "region_name": "us-east-1",
                "default_acl": None,
                "client_config": Config(
                    retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=2
                ),
            },
        },
    }


def _bytes(tmp_path, key: str, seed: int = 0) -> bytes:
    return ct_files(tmp_path / f"{key}-{seed}", key=key, slices=1, size=16, seed=seed)[
        0
    ].read_bytes()


def _received(name: str, data: bytes) -> IngestSource:
    """One instance as the listener hands it over: its bytes staged meanwhile."""
    staging: Future = Future()
    staging.set_result(object_stage(data))
    return IngestSource(name, lambda: data, len(data), staging=staging)


def _listener_run() -> IngestRun:
    return IngestRun(source=IngestSession.Source.DIMSE, batch_size=1, group_commit=32)


def _aged(relative: str) -> None:
    hour_ago = time.time() - 3600
    os.utime(object_path(relative), (hour_ago, hour_ago))


# -- 1. an S3 error drops nothing silently -------------------------------------------------
def test_s3_errors_are_store_errors_that_name_the_key(s3_down, tmp_path):
    local = tmp_path / "x.dcm"
    local.write_bytes(b"x")
    s3 = S3Store(data_dir())
    relative = "objects/ab/cd/" + "ab" * 32 + ".dcm"
    for call in (
        lambda: s3.upload(local, relative, "ab" * 32),
        lambda: s3.head(relative),
        lambda: s3.delete(relative),
        lambda: s3.read(relative),
    ):
        with pytest.raises(StoreError) as raised:
            call()
        assert isinstance(raised.value, OSError)
        assert relative in str(raised.value) and "EndpointConnectionError" in str(raised.value)


def test_an_s3_outage_refuses_and_counts_the_instance_and_its_resend_is_stored(
    s3_down,
    listener,  # noqa: F811
    queued,  # noqa: F811
    tmp_path,
    settings,
):
    files = ct_files(tmp_path / "in", key="s3down", slices=2, size=16)
    datasets = [pydicom.dcmread(f) for f in files]

    first = _send(listener, datasets)

    # "Send again later", with the reason: never a success, never a crash of the call.
    assert [s.Status for s in first] == [STATUS_OUT_OF_RESOURCES] * 2
    assert all("S3 upload failed" in s.ErrorComment for s in first)
    uids = [str(ds.SOPInstanceUID) for ds in datasets]
    assert all(service._UNINDEXED.get(uid) is None for uid in uids)
    refused = IngestSession.objects.get()
    assert (refused.stored, refused.rejected, refused.files_seen) == (0, 2, 2)
    reasons = list(IngestIssue.objects.filter(session=refused).values_list("reason", flat=True))
    assert len(reasons) == 2 and all("objects/" in r and "S3 upload" in r for r in reasons)

    settings.RADTRACK_STORE = "filesystem"  # the store is back: the sender sends again
    second = _send(listener, datasets)

    assert [s.Status for s in second] == [STATUS_SUCCESS] * 2
    assert set(Instance.objects.values_list("sop_instance_uid", flat=True)) == set(uids)
    resent = IngestSession.objects.exclude(pk=refused.pk).get()
    assert (resent.stored, resent.duplicates) == (2, 0)


def test_an_error_after_the_write_leaves_no_uid_behind_and_is_counted(tmp_path, monkeypatch):
    data = _bytes(tmp_path, "journal-error")

    def journal_down(**kw):
        raise OSError("no space left for the journal")

    run = _listener_run()
    with monkeypatch.context() as m:
        m.setattr(service, "journal_append", journal_down)
        with pytest.raises(OSError):
            run.add([_received("C-STORE 1", data)])  # the listener refuses it
    uid = str(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID)
    assert service._UNINDEXED.get(uid) is None

    (again,) = run.add([_received("C-STORE 2", data)])  # the sender sends it again
    session = run.finish()

    assert again.status == "stored"
    assert Instance.objects.filter(sop_instance_uid=uid).exists()
    assert (session.stored, session.rejected, session.duplicates) == (1, 1, 0)


# -- 2. an acknowledged instance is never deleted ------------------------------------------
def _acknowledged_then_conflicting(tmp_path) -> tuple[IngestRun, str]:
    """A listener-style run acknowledges an instance (its row waits for the group
    commit); meanwhile another process indexes different bytes under the same UID."""
    acked, other = _bytes(tmp_path, "gc", seed=1), _bytes(tmp_path, "gc", seed=2)
    run = _listener_run()
    (outcome,) = run.add([_received("C-STORE 1", acked)])
    assert outcome.status == "stored"  # what the sender was told
    relative = run._deferred[0].relative
    mine = dict(service._UNINDEXED._hashes)  # another process does not share them
    service._UNINDEXED._hashes.clear()
    try:
        elsewhere = IngestRun(source=IngestSession.Source.API)
        (theirs,) = elsewhere.add([IngestSource("upload.dcm", lambda: other, len(other))])
        elsewhere.finish()
    finally:
        service._UNINDEXED._hashes.update(mine)
    assert theirs.status == "stored"
    return run, relative


def test_an_acknowledged_instance_that_conflicts_is_kept_named_and_kept_by_repair(tmp_path):
    run, relative = _acknowledged_then_conflicting(tmp_path)

    session = run.finish()

    assert object_path(relative).exists()
    assert (session.stored, session.conflicts) == (0, 1)
    (issue,) = IngestIssue.objects.filter(session=session)
    assert issue.kind == IngestIssue.Kind.CONFLICT and issue.file_name == "C-STORE 1"
    assert issue.reason.endswith(f"acknowledged as stored: it is kept, not indexed, at {relative}")

    # A conflicting file nobody acknowledged is still removed by the repair.
    stray = _bytes(tmp_path, "gc", seed=3)
    stray_relative, _ = object_write(stray, hashlib.sha256(stray).hexdigest())
    for path in (relative, stray_relative):
        _aged(path)
    check = storage_verify(min_age_s=60)
    assert set(check.orphans) == {relative, stray_relative}

    repair = storage_repair(check=check)

    assert object_path(relative).exists()
    assert len(repair.kept) == 1 and repair.kept[0].startswith(f"{relative}: conflict")
    assert not object_path(stray_relative).exists()
    assert [line.split(":")[0] for line in repair.removed] == [stray_relative]


def test_an_acknowledged_instance_the_database_refuses_is_kept(tmp_path, monkeypatch):
    data = _bytes(tmp_path, "refused")
    run = _listener_run()
    (outcome,) = run.add([_received("C-STORE 1", data)])
    assert outcome.status == "stored"
    relative = run._deferred[0].relative
    real = service.instance_row

    def too_long(item, **kw):
        row = real(item, **kw)
        row.transfer_syntax_uid = "1." * 40  # longer than the column: a DataError
        return row

    monkeypatch.setattr(service, "instance_row", too_long)
    session = run.finish()

    assert object_path(relative).exists() and not Instance.objects.exists()
    (issue,) = IngestIssue.objects.filter(session=session)
    assert issue.kind == IngestIssue.Kind.REJECTED and issue.reason.endswith(relative)


def test_an_acknowledged_orphan_the_reaper_cannot_index_is_kept_by_repair(tmp_path):
    run, relative = _acknowledged_then_conflicting(tmp_path)
    # The listener's process dies before its group commit: the reaper takes over.
    service._UNINDEXED.remove(w.found.item.sop_instance_uid for w in run._deferred)
    run._deferred.clear()
    IngestSession.objects.filter(pk=run.session.pk).update(owner=_finished_process_owner())
    ingest_sessions_reap()
    assert object_path(relative).exists()
    _aged(relative)

    repair = storage_repair(check=storage_verify(min_age_s=60))

    assert object_path(relative).exists() and not repair.removed
    assert len(repair.kept) == 1 and repair.kept[0].startswith(relative)
