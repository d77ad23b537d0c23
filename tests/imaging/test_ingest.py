"""The ingest service and ``manage.py ingest``: storage, idempotency and bad input."""

from __future__ import annotations

import hashlib
import zipfile
from io import StringIO
from pathlib import Path

import pydicom
import pytest
from django.core.management import CommandError, call_command
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from imaging.ingest.service import IngestRun, ingest_paths
from imaging.ingest.sources import IngestSource
from imaging.models import IngestIssue, IngestSession, Instance, Series, Study
from imaging.store import object_path
from patients.models import Patient
from tests.imaging.factories import ct_files

pytestmark = pytest.mark.django_db


def _ingest(paths, **kwargs):
    return ingest_paths(paths=[Path(p) for p in paths], process=False, **kwargs)


def test_folder_import_stores_every_file_byte_for_byte(tmp_path):
    files = ct_files(tmp_path / "series", key="k1", size=32, slices=6)
    session, outcomes = _ingest([tmp_path / "series"])

    assert [o.status for o in outcomes] == ["stored"] * len(files)
    assert (session.files_seen, session.stored, session.rejected) == (6, 6, 0)
    assert session.status == IngestSession.Status.DONE
    series = Series.objects.get()
    assert series.slice_count == 6
    assert series.state == Series.State.STORED
    assert series.study.patient.patient_id == "RT-0001"
    for path in files:
        original = path.read_bytes()
        row = Instance.objects.get(sop_instance_uid=pydicom.dcmread(path).SOPInstanceUID)
        stored = object_path(row.stored_path).read_bytes()
        # pydicom writes a zero preamble, so the stored file is the original exactly.
        assert stored == original
        assert row.sha256 == hashlib.sha256(original).hexdigest()
        assert row.size_bytes == len(original)


def test_preamble_is_zeroed_and_the_rest_kept(tmp_path):
    (path,) = ct_files(tmp_path / "s", slices=1, key="k2", size=32)
    data = bytearray(path.read_bytes())
    data[:128] = b"MZ" + b"\x90" * 126  # an executable header hidden in the preamble
    path.write_bytes(bytes(data))

    _ingest([path])

    stored = object_path(Instance.objects.get().stored_path).read_bytes()
    assert stored[:128] == bytes(128)
    assert stored[128:] == bytes(data[128:])


def test_reimport_is_idempotent(tmp_path):
    ct_files(tmp_path / "series", key="k3", size=32, slices=6)
    _ingest([tmp_path / "series"])
    before = list(Instance.objects.values_list("pk", "sha256", "stored_path"))

    session, outcomes = _ingest([tmp_path / "series"])

    assert {o.status for o in outcomes} == {"duplicate"}
    assert (session.stored, session.duplicates) == (0, 6)
    assert list(Instance.objects.values_list("pk", "sha256", "stored_path")) == before
    assert Series.objects.get().slice_count == 6


def test_different_file_under_a_stored_uid_is_a_conflict_and_the_original_is_kept(tmp_path):
    (path,) = ct_files(tmp_path / "a", slices=1, key="k4", size=32)
    _ingest([path])
    row = Instance.objects.get()
    kept = object_path(row.stored_path).read_bytes()

    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array
    pixels[0, 0] += 7
    ds.PixelData = pixels.tobytes()
    changed = tmp_path / "changed.dcm"
    ds.save_as(changed, enforce_file_format=True)

    session, (outcome,) = _ingest([changed])

    assert outcome.status == "conflict"
    assert "already stored under this SOP Instance UID" in outcome.reason
    assert session.conflicts == 1
    row.refresh_from_db()
    assert object_path(row.stored_path).read_bytes() == kept
    assert IngestIssue.objects.get(kind="conflict").sop_instance_uid == row.sop_instance_uid


def test_bad_files_are_reported_with_a_reason_and_never_stop_the_batch(tmp_path):
    folder = tmp_path / "mixed"
    files = ct_files(folder, slices=4, key="k5", size=32)
    (folder / "notes.txt").write_text("this is not an image")
    (folder / "random.dcm").write_bytes(bytes(range(256)) * 20)
    (folder / "empty.dcm").write_bytes(b"")
    truncated = folder / "truncated.dcm"
    whole = files[0].read_bytes()
    files[0].unlink()
    truncated.write_bytes(whole[: len(whole) - 500])

    session, outcomes = _ingest([folder])

    by_name = {Path(o.name).name: o for o in outcomes}
    assert by_name["notes.txt"].status == "rejected"
    assert "not a DICOM file" in by_name["notes.txt"].reason
    assert by_name["random.dcm"].status == "rejected"
    assert by_name["empty.dcm"].reason == "empty file"
    assert by_name["truncated.dcm"].status == "rejected"
    assert "truncated" in by_name["truncated.dcm"].reason
    assert (session.stored, session.rejected) == (3, 4)
    assert Instance.objects.count() == 3
    issues = {Path(i.file_name).name: i.reason for i in IngestIssue.objects.filter(kind="rejected")}
    assert set(issues) == {"notes.txt", "random.dcm", "empty.dcm", "truncated.dcm"}


def test_declared_length_past_the_end_of_the_file_is_rejected(tmp_path):
    (path,) = ct_files(tmp_path / "s", slices=1, key="k6", size=32)
    data = bytearray(path.read_bytes())
    # Make the Series Description (0008,103E) claim far more bytes than the file has.
    tag = b"\x08\x00\x3e\x10LO"
    at = data.index(tag)
    data[at + 6 : at + 8] = (60000).to_bytes(2, "little")
    path.write_bytes(bytes(data))

    _, (outcome,) = _ingest([path])

    assert outcome.status == "rejected"
    assert Instance.objects.count() == 0


@pytest.mark.parametrize(
    ("keyword", "expected"),
    [
        ("SeriesInstanceUID", "missing SeriesInstanceUID (0020,000E)"),
        ("StudyInstanceUID", "missing StudyInstanceUID (0020,000D)"),
        ("ImagePositionPatient", "ImagePositionPatient (0020,0032)"),
        ("PixelSpacing", "PixelSpacing (0028,0030)"),
        ("PatientID", "Patient ID (0010,0020) is empty"),
    ],
)
def test_missing_uids_or_geometry_are_rejected_by_name(tmp_path, keyword, expected):
    (path,) = ct_files(tmp_path / "s", slices=1, key="k7", size=32)
    ds = pydicom.dcmread(path)
    delattr(ds, keyword)
    ds.save_as(path, enforce_file_format=True)

    _, (outcome,) = _ingest([path])

    assert outcome.status == "rejected"
    assert expected in outcome.reason
    assert not Study.objects.exists()
    assert not Patient.objects.exists()


def test_non_conformant_but_readable_files_are_stored_with_warnings(tmp_path):
    (path,) = ct_files(tmp_path / "s", slices=1, key="k8", size=32)
    ds = pydicom.dcmread(path)
    del ds.PatientSex  # a missing Type 2 attribute
    ds.StudyDate = "2024-13-45"
    ds.save_as(path, enforce_file_format=True)

    _, (outcome,) = _ingest([path])

    assert outcome.status == "stored"
    assert any("StudyDate" in w for w in outcome.warnings)
    assert Study.objects.get().study_date is None
    assert Instance.objects.get().warnings == list(outcome.warnings)
    assert IngestIssue.objects.filter(kind="warning").exists()


def test_zip_archives_are_expanded(tmp_path):
    files = ct_files(tmp_path / "s", slices=3, key="k9", size=32)
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in files:
            zf.write(f, f"study/{f.name}")
        zf.writestr("study/README.txt", "not dicom")

    session, outcomes = _ingest([archive])

    assert session.stored == 3
    rejected = [o for o in outcomes if o.status == "rejected"]
    assert [o.name for o in rejected] == [f"{archive}:study/README.txt"]


def test_oversized_files_are_refused_before_reading(tmp_path, settings):
    files = ct_files(tmp_path / "s", slices=2, key="k10", size=32)
    settings.RADTRACK_MAX_UPLOAD_BYTES = files[0].stat().st_size - 1

    session, outcomes = _ingest(files)

    assert [o.status for o in outcomes] == ["rejected", "rejected"]
    assert "over the" in outcomes[0].reason and "limit" in outcomes[0].reason
    assert session.stored == 0


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless, JPEGLSLossless])
def test_compressed_pixel_data_is_stored_and_decodes(tmp_path, syntax):
    (path,) = ct_files(tmp_path / "s", slices=1, key="k11", size=32)
    ds = pydicom.dcmread(path)
    original = ds.pixel_array.copy()
    ds.compress(syntax)
    ds.save_as(path, enforce_file_format=True)

    _, (outcome,) = _ingest([path])

    assert outcome.status == "stored", outcome.reason
    stored = pydicom.dcmread(object_path(Instance.objects.get().stored_path))
    assert stored.file_meta.TransferSyntaxUID == syntax
    assert (stored.pixel_array == original).all()


def test_corrupt_compressed_pixel_data_is_rejected(tmp_path):
    (path,) = ct_files(tmp_path / "s", slices=1, key="k12", size=32)
    ds = pydicom.dcmread(path)
    ds.compress(JPEG2000Lossless)
    ds.save_as(path, enforce_file_format=True)
    data = bytearray(path.read_bytes())
    start = data.index(b"\xff\x4f\xff\x51")  # JPEG 2000 codestream start
    data[start + 40 : start + 400] = bytes(360)
    path.write_bytes(bytes(data))

    _, (outcome,) = _ingest([path])

    assert outcome.status == "rejected"
    assert "cannot be decoded" in outcome.reason


def test_study_already_filed_under_another_patient_is_refused(tmp_path):
    study_uid = "1.2.826.0.1.3680043.8.498.1"
    ct_files(
        tmp_path / "a", patient_id="A", study_instance_uid=study_uid, slices=1, key="k13", size=32
    )
    ct_files(
        tmp_path / "b",
        patient_id="B",
        study_instance_uid=study_uid,
        slices=1,
        seed=1,
        key="k14",
        size=32,
    )
    _ingest([tmp_path / "a"])

    _, (outcome,) = _ingest([tmp_path / "b"])

    assert outcome.status == "rejected"
    assert "different Patient ID" in outcome.reason
    assert list(Patient.objects.values_list("patient_id", flat=True)) == ["A"]


def test_a_failure_while_indexing_leaves_no_rows(tmp_path, monkeypatch):
    ct_files(tmp_path / "s", slices=3, key="k15", size=32)

    def broken(*args, **kwargs):
        raise RuntimeError("simulated crash while indexing")

    monkeypatch.setattr(Instance.objects, "bulk_create", broken)
    with pytest.raises(RuntimeError):
        _ingest([tmp_path / "s"])

    assert not Instance.objects.exists()
    assert not Series.objects.exists()
    assert not Study.objects.exists()


def test_series_are_queued_for_processing_once_the_import_commits(
    tmp_path, django_capture_on_commit_callbacks
):
    ct_files(tmp_path / "s", slices=2, key="k16", size=32)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        ingest_paths(paths=[tmp_path / "s"], process=True)

    # One task for the study: its worker chooses the series to analyse and runs it.
    assert len(callbacks) == 1
    series = Series.objects.get()
    assert series.state == Series.State.QUEUED


def test_every_file_in_pydicoms_test_data_is_stored_or_rejected_with_a_reason():
    from pydicom.data import get_testdata_files

    files = [Path(f) for f in get_testdata_files() if Path(f).is_file()]
    assert len(files) > 100
    run = IngestRun(source=IngestSession.Source.FOLDER, process=False)
    outcomes = run.add(IngestSource(str(f), f.read_bytes, f.stat().st_size) for f in files)
    session = run.finish()

    assert len(outcomes) == len(files)
    for outcome in outcomes:
        assert outcome.status in {"stored", "rejected", "duplicate", "conflict"}
        if outcome.status != "stored":
            assert outcome.reason, outcome.name
    stored = [o for o in outcomes if o.status == "stored"]
    assert stored, "none of pydicom's CT/MR test files was stored"
    assert session.files_seen == len(files)
    assert Instance.objects.count() == len(stored)


def test_ingest_command_reports_bad_files_and_a_summary(tmp_path):
    ct_files(tmp_path / "s", slices=2, key="k17", size=32)
    (tmp_path / "s" / "junk.bin").write_bytes(b"junk")
    out, err = StringIO(), StringIO()

    call_command("ingest", str(tmp_path / "s"), "--no-process", "--quiet", stdout=out, stderr=err)

    assert "junk.bin: rejected: not a DICOM file" in err.getvalue()
    assert "3 files, 2 stored, 0 already stored, 0 conflicts, 1 rejected" in out.getvalue()


def test_ingest_command_refuses_a_missing_path(tmp_path):
    with pytest.raises(CommandError, match="no such file or folder"):
        call_command("ingest", str(tmp_path / "nowhere"))


def test_verify_storage_finds_changed_and_missing_files(tmp_path):
    ct_files(tmp_path / "s", slices=3, key="k18", size=32)
    _ingest([tmp_path / "s"])
    out = StringIO()
    call_command("verify_storage", stdout=out, stderr=StringIO())
    assert "3 files checked, 0 missing, 0 changed" in out.getvalue()

    first, second, _ = Instance.objects.order_by("pk")
    object_path(first.stored_path).unlink()
    path = object_path(second.stored_path)
    path.write_bytes(path.read_bytes()[:-1] + b"\x01")

    err = StringIO()
    with pytest.raises(CommandError, match="1 missing, 1 changed"):
        call_command("verify_storage", stdout=StringIO(), stderr=err)
    assert first.sop_instance_uid in err.getvalue()


def test_the_same_data_set_with_another_senders_file_meta_is_a_duplicate(tmp_path):
    (path,) = ct_files(tmp_path / "a", slices=1, key="meta", size=32)
    _ingest([path])
    ds = pydicom.dcmread(path)
    ds.file_meta.ImplementationVersionName = "OTHER_PACS_9"
    ds.file_meta.SourceApplicationEntityTitle = "PACS"
    resent = tmp_path / "resent.dcm"
    ds.save_as(resent, enforce_file_format=True)
    assert resent.read_bytes() != path.read_bytes()

    _, (outcome,) = _ingest([resent])

    assert outcome.status == "duplicate"
    assert Instance.objects.count() == 1


def test_a_row_indexed_before_data_set_hashes_were_kept_gets_one_when_it_is_sent_again(
    tmp_path,
):
    """Rows from before migration 0003 have no data set hash: a repeat of one is a
    duplicate (its hash computed from the stored file and saved), a changed file a
    conflict."""
    paths = ct_files(tmp_path / "a", slices=2, key="old-rows", size=32)
    _ingest(paths)
    kept = {i.sop_instance_uid: i.dataset_sha256 for i in Instance.objects.all()}
    Instance.objects.update(dataset_sha256="")
    ds = pydicom.dcmread(paths[1])
    ds.PatientComments = "changed after it was stored"
    ds.save_as(tmp_path / "changed.dcm", enforce_file_format=True)

    _, outcomes = _ingest([paths[0], tmp_path / "changed.dcm"])

    assert [o.status for o in outcomes] == ["duplicate", "conflict"]
    assert {i.sop_instance_uid: i.dataset_sha256 for i in Instance.objects.all()} == kept


@pytest.mark.parametrize("readers", [1, 2])
def test_reader_threads_give_the_same_outcomes_and_leave_nothing_staged(tmp_path, readers):
    """With reader threads each file is copied into the store's staging folder and
    checked there; outcomes, stored bytes and what is left on disk are as without."""
    folder = tmp_path / "mixed"
    files = ct_files(folder, key="pool", slices=5, size=32)
    data = bytearray(files[0].read_bytes())
    data[:128] = b"MZ" + b"\x90" * 126  # a preamble to zero
    files[0].write_bytes(bytes(data))
    (folder / "notes.txt").write_text("not an image")
    files[1].write_bytes(files[1].read_bytes()[:-300])  # truncated
    with zipfile.ZipFile(folder / "more.zip", "w") as zf:
        zf.write(files[2], "again/IM3.dcm")  # the same instance twice in one import

    session, outcomes = _ingest([folder], readers=readers)

    statuses = sorted(o.status for o in outcomes)
    assert statuses == ["duplicate", "rejected", "rejected", "stored", "stored", "stored", "stored"]
    assert (session.stored, session.rejected, session.duplicates) == (4, 2, 1)
    first = Instance.objects.get(sop_instance_uid=pydicom.dcmread(files[0]).SOPInstanceUID)
    stored = object_path(first.stored_path).read_bytes()
    assert stored[:128] == bytes(128) and stored[128:] == bytes(data[128:])
    assert first.sha256 == hashlib.sha256(stored).hexdigest()
    assert first.size_bytes == len(stored)
    leftovers = [p for p in object_path("objects").rglob("*") if p.name.startswith(".incoming-")]
    assert leftovers == []

    again, repeat = _ingest([folder], readers=readers)
    assert again.stored == 0 and again.duplicates == 5
    assert [p for p in object_path("objects").rglob("*") if p.name.startswith(".incoming-")] == []
