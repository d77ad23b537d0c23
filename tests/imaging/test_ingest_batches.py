"""A folder import with reader threads publishes each batch of staged copies together
(`imaging.store.objects_publish`): every file, and every folder it was named into, is
fsynced before the transaction that indexes it, a file that cannot be published is
refused alone, and the quick read (`imaging.core.dicom.inspect_fast`) indexes what
pydicom's read would."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pydicom
import pytest

from imaging import store
from imaging.core.dicom.inspect import instance_inspect
from imaging.ingest import service, writes
from imaging.ingest.service import ingest_paths
from imaging.models import Instance
from imaging.store import (
    INCOMING,
    object_path,
    object_relative_path,
    object_stage_copy,
    objects_publish,
)
from tests.imaging.factories import ct_files

pytestmark = pytest.mark.django_db


@pytest.fixture
def fsynced(monkeypatch) -> list[Path]:
    """Every path fsynced through the store, in order (the real fsync still runs)."""
    seen: list[Path] = []
    real = store._fsync_dir

    def spy(path: Path) -> None:
        real(path)
        seen.append(Path(path))

    monkeypatch.setattr(store, "_fsync_dir", spy)
    return seen


def test_objects_publish_names_each_file_and_reports_each_failure(tmp_path, fsynced):
    files = ct_files(tmp_path / "s", key="publish", slices=3, size=16)
    staged = [object_stage_copy(p, durable=False) for p in files]
    hashes = [hashlib.sha256(object_path(s).read_bytes()).hexdigest() for s in staged]
    object_path(staged[1]).unlink()  # lost before it could be published

    results = objects_publish(list(zip(staged, hashes, strict=True)))

    assert isinstance(results[1], FileNotFoundError)
    for n in (0, 2):
        relative = object_relative_path(hashes[n])
        assert results[n] == (relative, True)
        assert object_path(relative).read_bytes() == files[n].read_bytes()
        assert object_path(staged[n]) in fsynced  # the file before its rename
        assert object_path(relative).parent in fsynced  # and the folder it was named into
        assert object_path(relative).parent.parent in fsynced  # a new folder in its parent
    assert not [p for p in object_path(INCOMING).iterdir() if p.suffix == ".part"]


def test_every_file_and_its_folder_are_fsynced_before_the_batch_is_indexed(
    tmp_path, fsynced, monkeypatch
):
    files = ct_files(tmp_path / "many", key="batches", slices=70, size=16)
    synced_when_indexed: list[tuple[list[str], set[Path]]] = []
    real_index = service.IngestRun._index_all

    def index_all(run, written, outcomes):
        synced_when_indexed.append(([w.relative for w in written], set(fsynced)))
        return real_index(run, written, outcomes)

    monkeypatch.setattr(service.IngestRun, "_index_all", index_all)

    session, outcomes = ingest_paths(paths=[tmp_path / "many"], process=False, readers=2)

    assert session.stored == 70 and len(synced_when_indexed) == 2  # batches of 64
    for relatives, synced in synced_when_indexed:
        for relative in relatives:
            final = object_path(relative)
            assert final.parent in synced and final.parent.parent.parent in synced
    staged_synced = [p for p in fsynced if p.parent == object_path(INCOMING)]
    assert len(staged_synced) == 70  # each staged copy fsynced before its rename
    for path in files:
        data = path.read_bytes()
        row = Instance.objects.get(sop_instance_uid=pydicom.dcmread(path).SOPInstanceUID)
        assert object_path(row.stored_path).read_bytes() == data
        assert row.sha256 == hashlib.sha256(data).hexdigest()


def test_the_quick_read_indexes_what_pydicom_reads(tmp_path):
    files = ct_files(tmp_path / "s", key="quick", slices=4, size=16)
    ingest_paths(paths=[tmp_path / "s"], process=False, readers=2)

    for path in files:
        expected = instance_inspect(path.read_bytes())  # pydicom's read: no header cache
        row = Instance.objects.get(sop_instance_uid=expected.sop_instance_uid)
        assert (row.sha256, row.dataset_sha256) == (expected.sha256, expected.dataset_sha256)
        assert row.instance_number == expected.instance_number
        assert row.image_position == list(expected.image_position)
        assert row.transfer_syntax_uid == expected.transfer_syntax_uid
        assert row.warnings == []


def test_a_staged_copy_lost_before_publishing_is_refused_alone(tmp_path, monkeypatch):
    ct_files(tmp_path / "s", key="lost", slices=5, size=16)
    real = store.objects_publish

    def lose_one(staged: list[tuple[str, str]]):
        object_path(staged[2][0]).unlink()  # e.g. removed by an operator meanwhile
        return real(staged)

    monkeypatch.setattr(writes, "objects_publish", lose_one)

    session, outcomes = ingest_paths(paths=[Path(tmp_path / "s")], process=False, readers=2)

    assert sorted(o.status for o in outcomes) == ["rejected"] + ["stored"] * 4
    (refused,) = [o for o in outcomes if o.status == "rejected"]
    assert refused.reason.startswith("could not be stored")
    assert (session.stored, session.rejected) == (4, 1)
    assert Instance.objects.count() == 4
