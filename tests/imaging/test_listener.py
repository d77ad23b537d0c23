"""The C-STORE listener: dcmtk's storescu and pynetdicom send to it over real sockets.

The listener runs in-process on a free port; its association threads use their own
database connections, hence ``transaction=True``.
"""

from __future__ import annotations

import struct
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    RLELossless,
    SecondaryCaptureImageStorage,
)
from pynetdicom import AE
from pynetdicom.dsutils import create_file_meta, encode_file_meta
from pynetdicom.sop_class import Verification

from imaging.ingest.listener import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_CONFLICT,
    STATUS_SUCCESS,
    StorageListener,
    file_meta_encode,
)
from imaging.ingest.service import ingest_paths
from imaging.models import IngestIssue, IngestSession, Instance, Series
from imaging.pipeline.tasks import study_process_task
from imaging.store import object_path
from tests.conftest import require_program
from tests.imaging.factories import ct_files

pytestmark = pytest.mark.django_db(transaction=True)

SLICES = 10
SIZE = 64


@pytest.fixture
def queued(monkeypatch):
    """Series ids sent to the processing task (the broker is what leaves the machine)."""

    calls: list[int] = []
    monkeypatch.setattr(
        study_process_task, "delay", lambda study_id, *args, **kw: calls.append(study_id)
    )
    return calls


@pytest.fixture
def listener():
    scp = StorageListener(ae_title="RADTRACK", allowed_aes=[], process=True)
    host, port = scp.start(host="127.0.0.1", port=0)
    scp.address = (host, port)
    yield scp
    scp.stop(grace_s=5)


@pytest.fixture
def series_files(tmp_path) -> list[Path]:
    return ct_files(tmp_path / "series", key="listener", slices=SLICES, size=SIZE, seed=7)


def _wait_idle(scp: StorageListener, timeout_s: float = 15.0) -> None:
    """Wait until every association has ended and its session is finished."""
    deadline = time.monotonic() + timeout_s
    while scp.active_associations and time.monotonic() < deadline:
        time.sleep(0.02)
    assert scp.active_associations == 0, "an association did not end"


def _storescu(scp: StorageListener, files: list[Path], *, calling: str = "STORESCU"):
    storescu = require_program("storescu", why="dcmtk sends the series to the listener")
    host, port = scp.address
    result = subprocess.run(
        [storescu, "-aet", calling, "-aec", "RADTRACK", host, str(port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    _wait_idle(scp)
    return result


def _dataset_bytes(data: bytes) -> bytes:
    """What follows the File Meta group: the data set as encoded (PS3.10 7.1)."""
    assert data[128:132] == b"DICM"
    # (0002,0000) UL, explicit VR: tag 4, VR 2, length 2, value 4 bytes.
    (group_length,) = struct.unpack("<I", data[140:144])
    return data[144 + group_length :]


def _scu(calling: str = "PYNETDICOM", contexts=(CTImageStorage,), syntaxes=None) -> AE:
    ae = AE(ae_title=calling)
    for sop_class in contexts:
        if syntaxes:
            ae.add_requested_context(sop_class, syntaxes)
        else:
            ae.add_requested_context(sop_class)
    return ae


def _send(scp: StorageListener, datasets, **scu_kwargs) -> list:
    """Send ``datasets`` over one association; return each response status dataset."""
    host, port = scp.address
    assoc = _scu(**scu_kwargs).associate(host, port, ae_title="RADTRACK")
    assert assoc.is_established
    statuses = [assoc.send_c_store(ds) for ds in datasets]
    assoc.release()
    _wait_idle(scp)
    return statuses


def test_storescu_series_is_indexed_byte_for_byte_and_queued_once(listener, series_files, queued):
    result = _storescu(listener, series_files)

    assert result.returncode == 0, result.stderr
    session = IngestSession.objects.get()
    assert session.source == IngestSession.Source.DIMSE
    assert session.origin.startswith("STORESCU@127.0.0.1:")
    assert session.status == IngestSession.Status.DONE
    assert (session.files_seen, session.stored, session.rejected) == (SLICES, SLICES, 0)
    series = Series.objects.get()
    assert series.slice_count == SLICES
    assert series.state == Series.State.QUEUED
    assert Instance.objects.filter(series=series).count() == SLICES
    for path in series_files:
        original = path.read_bytes()
        ds = pydicom.dcmread(path)
        row = Instance.objects.get(sop_instance_uid=ds.SOPInstanceUID)
        stored = object_path(row.stored_path).read_bytes()
        assert stored[:128] == bytes(128)
        assert _dataset_bytes(stored) == _dataset_bytes(original)
        meta = pydicom.dcmread(object_path(row.stored_path)).file_meta
        assert meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
        assert row.ingest_session_id == session.pk
    # One study, queued once, when the association was released.
    assert queued == [series.study_id]


def test_resending_is_a_duplicate_answered_with_success(listener, series_files, queued):
    assert _storescu(listener, series_files).returncode == 0

    statuses = _send(listener, [pydicom.dcmread(p) for p in series_files])

    assert [s.Status for s in statuses] == [STATUS_SUCCESS] * SLICES
    second = IngestSession.objects.order_by("pk").last()
    assert (second.duplicates, second.stored) == (SLICES, 0)
    assert Instance.objects.count() == SLICES
    # Nothing new arrived the second time, so nothing more is queued.
    assert len(queued) == 1


def test_a_conflicting_instance_gets_a_failure_status(listener, series_files, queued, tmp_path):
    _send(listener, [pydicom.dcmread(series_files[0])])
    # Same key, other seed: the same SOP Instance UIDs over different pixels.
    other = ct_files(tmp_path / "other", key="listener", slices=SLICES, size=SIZE, seed=8)
    changed = pydicom.dcmread(other[0])
    assert changed.SOPInstanceUID == pydicom.dcmread(series_files[0]).SOPInstanceUID

    (status,) = _send(listener, [changed])

    assert status.Status == STATUS_CONFLICT
    assert "conflict" in status.ErrorComment
    assert Instance.objects.count() == 1
    stored = object_path(Instance.objects.get().stored_path).read_bytes()
    assert _dataset_bytes(stored) == _dataset_bytes(series_files[0].read_bytes())
    assert IngestIssue.objects.filter(kind=IngestIssue.Kind.CONFLICT).count() == 1


def test_an_instance_without_geometry_is_refused_with_the_reason(listener, series_files):
    bad = pydicom.dcmread(series_files[0])
    del bad.ImagePositionPatient

    (status,) = _send(listener, [bad])

    assert status.Status == STATUS_CANNOT_UNDERSTAND
    assert "ImagePositionPatient" in status.ErrorComment
    assert len(status.ErrorComment) <= 64
    assert not Instance.objects.exists()
    assert IngestSession.objects.get().rejected == 1


def test_compressed_transfer_syntax_is_stored_as_sent(listener, series_files):
    ds = pydicom.dcmread(series_files[0])
    ds.compress(RLELossless)

    (status,) = _send(listener, [ds], syntaxes=[RLELossless])

    assert status.Status == STATUS_SUCCESS
    row = Instance.objects.get()
    assert row.transfer_syntax_uid == RLELossless
    stored = pydicom.dcmread(object_path(row.stored_path))
    assert (stored.pixel_array == pydicom.dcmread(series_files[0]).pixel_array).all()


def test_an_unaccepted_sop_class_is_refused(listener):
    host, port = listener.address
    ae = _scu(contexts=(SecondaryCaptureImageStorage, CTImageStorage))
    assoc = ae.associate(host, port, ae_title="RADTRACK")
    try:
        assert assoc.is_established
        accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
        rejected = {cx.abstract_syntax for cx in assoc.rejected_contexts}
    finally:
        assoc.release()
    _wait_idle(listener)
    assert CTImageStorage in accepted
    assert SecondaryCaptureImageStorage in rejected
    assert SecondaryCaptureImageStorage not in accepted


def test_echo_answers_and_leaves_no_session(listener):
    echoscu = require_program("echoscu", why="dcmtk verifies the listener")
    host, port = listener.address
    result = subprocess.run(
        [echoscu, "-aec", "RADTRACK", host, str(port)], capture_output=True, text=True, timeout=30
    )
    _wait_idle(listener)
    assert result.returncode == 0, result.stderr

    assoc = _scu(contexts=(Verification,)).associate(host, port, ae_title="RADTRACK")
    assert assoc.send_c_echo().Status == STATUS_SUCCESS
    assoc.release()
    _wait_idle(listener)
    assert not IngestSession.objects.exists()


def test_an_aborted_association_still_finishes_and_queues(listener, series_files, queued):
    host, port = listener.address
    assoc = _scu().associate(host, port, ae_title="RADTRACK")
    for path in series_files[:3]:
        assert assoc.send_c_store(pydicom.dcmread(path)).Status == STATUS_SUCCESS
    assoc.abort()
    _wait_idle(listener)

    session = IngestSession.objects.get()
    assert session.status == IngestSession.Status.FAILED
    assert session.stored == 3
    assert "aborted" in session.issues.get(file_name="(session)").reason
    series = Series.objects.get()
    assert series.slice_count == 3
    assert queued == [series.study_id]


def test_only_allowed_calling_ae_titles_may_associate(series_files):
    scp = StorageListener(ae_title="RADTRACK", allowed_aes=["PACS1"], process=False)
    host, port = scp.start(host="127.0.0.1", port=0)
    try:
        refused = _scu(calling="INTRUDER").associate(host, port, ae_title="RADTRACK")
        assert refused.is_rejected
        welcome = _scu(calling="PACS1").associate(host, port, ae_title="RADTRACK")
        assert welcome.is_established
        assert welcome.send_c_store(pydicom.dcmread(series_files[0])).Status == STATUS_SUCCESS
        welcome.release()
        _wait_idle(scp)
    finally:
        scp.stop(grace_s=5)
    assert Instance.objects.count() == 1
    assert Series.objects.get().state == Series.State.STORED


def test_the_command_listens_and_stops_on_sigterm(tmp_path):
    """``manage.py dicom_listener`` as a process: a line when listening, clean stop."""
    import os
    import signal
    import socket
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "RADTRACK_DATA_DIR": str(tmp_path / "cmd-data"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'cmd.sqlite3'}",
    }
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "dicom_listener", "--port", str(port), "--no-process"],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # (Unmigrated: a line first says dead sessions could not be looked for.)
        lines = [proc.stdout.readline() for _ in range(2)]
        assert any(f"listening for DICOM on 127.0.0.1:{port} as RADTRACK" in x for x in lines)
        assoc = _scu(contexts=(Verification,)).associate("127.0.0.1", port, ae_title="RADTRACK")
        assert assoc.send_c_echo().Status == STATUS_SUCCESS
        assoc.release()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert "stopped" in out


def test_an_instance_imported_from_a_folder_is_a_duplicate_when_sent_again(listener, series_files):

    ingest_paths(paths=[series_files[0]], process=False)

    (status,) = _send(listener, [pydicom.dcmread(series_files[0])])

    assert status.Status == STATUS_SUCCESS
    assert IngestSession.objects.order_by("pk").last().duplicates == 1


@pytest.mark.parametrize("sop_instance_uid", ["1.2.3", "1.2.34", "2.25.1234567890123"])
@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, RLELossless])
def test_file_meta_is_encoded_as_pynetdicom_encodes_it(sop_instance_uid, transfer_syntax):
    meta = create_file_meta(
        sop_class_uid=CTImageStorage,
        sop_instance_uid=sop_instance_uid,
        transfer_syntax=transfer_syntax,
    )

    encoded = file_meta_encode(
        sop_class_uid=CTImageStorage,
        sop_instance_uid=sop_instance_uid,
        transfer_syntax_uid=transfer_syntax,
    )

    assert encoded == encode_file_meta(meta)
