"""Exporting a patient's lesions as SEG and SR files: rows gathered, files valid, audited."""

from __future__ import annotations

import datetime as dt
from io import StringIO
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.utils import timezone

from imaging.core.dicom.seg_sr import DicomExportError
from imaging.core.geometry.nifti import volume_read_nifti, volume_write_nifti
from imaging.core.registration.orientation import volume_flip_header
from imaging.exports.services import study_dicom_export
from imaging.models import LesionMeasurement, ProcessingRun
from patients.models import AuditEvent
from tests.imaging.factories import LesionFactory, LesionMeasurementFactory
from tests.interop.conftest import analysed_study, dciodvfy_errors
from tests.interop.dicom_checks import segment_volume_ml, sr_mask_volumes

pytestmark = pytest.mark.django_db


def _path(relative: str) -> Path:
    return Path(settings.DATA_DIR) / relative


def test_export_writes_valid_seg_and_sr_in_the_source_study(tmp_path):
    case = analysed_study(tmp_path, key="svc1")
    result = study_dicom_export(study=case.study)
    seg = pydicom.dcmread(_path(result.seg_path))
    sr = pydicom.dcmread(_path(result.sr_path))
    assert dciodvfy_errors(_path(result.seg_path)) == []
    assert dciodvfy_errors(_path(result.sr_path)) == []
    source = pydicom.dcmread(case.files[0])
    for ds in (seg, sr):
        assert ds.StudyInstanceUID == case.study.study_instance_uid
        assert (ds.PatientID, str(ds.PatientName)) == (source.PatientID, str(source.PatientName))
        assert ds.PatientBirthDate == source.PatientBirthDate
    tracking = {s.TrackingUID: s.TrackingID for s in seg.SegmentSequence}
    assert tracking == {lesion.tracking_uid: lesion.label for lesion in case.lesions}
    assert result.segments == 2 and result.lesions == 2


def test_export_uses_reviewed_values_and_leaves_rejected_lesions_out(tmp_path):
    case = analysed_study(tmp_path, key="svc2")
    liver, lung = case.measurements
    liver.override_volume_ml = 0.61
    liver.review_state = LesionMeasurement.Review.EDITED
    liver.save()
    lung.review_state = LesionMeasurement.Review.REJECTED
    lung.save()
    result = study_dicom_export(study=case.study)
    seg = pydicom.dcmread(_path(result.seg_path))
    assert [s.TrackingUID for s in seg.SegmentSequence] == [liver.lesion.tracking_uid]
    report = hd.sr.srread(_path(result.sr_path))
    (group,) = report.content.get_volumetric_roi_measurement_groups()
    volumes = group.get_measurements(name=hd.sr.CodedConcept("118565006", "SCT", "Volume"))
    by_method = {v.method.value: v.value for v in volumes}
    # The radiologist's value says it is one; the segment's own volume is still there.
    assert by_method["RADVAL"] == pytest.approx(0.61)
    assert by_method["126030"] == pytest.approx(
        segment_volume_ml(hd.seg.segread(_path(result.seg_path)), 1)
    )


def test_same_results_give_the_same_uids_and_a_change_a_new_sr(tmp_path):
    case = analysed_study(tmp_path, key="svc3")
    first = study_dicom_export(study=case.study)
    again = study_dicom_export(study=case.study)
    assert (again.seg_path, again.sr_path) == (first.seg_path, first.sr_path)
    case.measurements[0].override_longest_diameter_mm = 30.0
    case.measurements[0].save()
    changed = study_dicom_export(study=case.study)
    assert changed.seg_path == first.seg_path
    assert changed.sr_path != first.sr_path
    old = pydicom.dcmread(_path(first.sr_path))
    new = pydicom.dcmread(_path(changed.sr_path))
    assert new.SeriesInstanceUID == old.SeriesInstanceUID


def test_a_second_export_of_unchanged_results_gives_the_same_bytes(tmp_path, monkeypatch):
    """Same UIDs, same bytes: the objects written before are reused as they are, and a
    file that went missing is rebuilt with its first export's times (issue: the times
    changed under the same SOP Instance UID). The clock moves a second at each reading, so
    a stamp and a record time taken at two readings never agree by luck."""
    case = analysed_study(tmp_path, key="svc3b")
    readings = iter(range(10_000))
    start = timezone.now()
    monkeypatch.setattr(timezone, "now", lambda: start + dt.timedelta(seconds=next(readings)))
    first = study_dicom_export(study=case.study)
    seg_bytes = _path(first.seg_path).read_bytes()
    sr_bytes = _path(first.sr_path).read_bytes()
    assert first.reused == []
    again = study_dicom_export(study=case.study)
    assert again.reused == ["SEG", "SR"] and "reused" in again.line()
    assert _path(again.seg_path).read_bytes() == seg_bytes
    assert _path(again.sr_path).read_bytes() == sr_bytes
    _path(first.sr_path).unlink()
    rebuilt = study_dicom_export(study=case.study)
    assert rebuilt.reused == ["SEG"]
    back = pydicom.dcmread(_path(rebuilt.sr_path))
    before = pydicom.dcmread(pydicom.filebase.DicomBytesIO(sr_bytes))
    assert back.SOPInstanceUID == before.SOPInstanceUID
    assert (back.ContentDate, back.ContentTime) == (before.ContentDate, before.ContentTime)
    assert (back.InstanceCreationDate, back.InstanceCreationTime) == (
        before.InstanceCreationDate,
        before.InstanceCreationTime,
    )
    assert _path(rebuilt.sr_path).read_bytes() == sr_bytes


def test_every_sr_volume_is_the_volume_of_the_seg_segment_it_references(tmp_path):
    """The partial-volume estimate differs from the mask's voxels by design; the SR gives
    both, each with its method, and the voxel one is the SEG segment's volume."""
    case = analysed_study(tmp_path, key="svc3c")
    result = study_dicom_export(study=case.study)
    seg = hd.seg.segread(_path(result.seg_path))
    report = hd.sr.srread(_path(result.sr_path))
    checked = sr_mask_volumes(seg, report)
    assert len(checked) == 2
    for tracking_id, in_sr, from_seg, methods in checked:
        assert in_sr == pytest.approx(from_seg, rel=1e-6), tracking_id
        assert methods == ["126030", "PVV"], tracking_id
    stored = {m.lesion.label: m.volume_ml for m in case.measurements}
    in_force = {
        g.tracking_identifier: [
            m.value
            for m in g.get_measurements()
            if m.method is not None and m.method.value == "PVV"
        ][0]
        for g in report.content.get_volumetric_roi_measurement_groups()
    }
    assert in_force == pytest.approx(stored)


def test_follow_up_is_a_later_time_point_and_resolved_lesion_is_reported(tmp_path):
    base = analysed_study(tmp_path, key="svc4a", study_date=dt.date(2024, 1, 10))
    follow = analysed_study(
        tmp_path,
        key="svc4b",
        study_date=dt.date(2024, 4, 10),
        lesions=base.lesions,
    )
    # A third lesion seen at baseline only: resolved at the follow-up, no voxels there.
    gone = LesionFactory(patient=base.study.patient, label="Liver gone", organ="liver")
    LesionMeasurementFactory(
        lesion=gone,
        study=follow.study,
        status=LesionMeasurement.Status.RESOLVED,
        volume_ml=0.0,
        longest_diameter_mm=0.0,
        short_axis_mm=0.0,
    )
    result = study_dicom_export(study=follow.study)
    text = str(pydicom.dcmread(_path(result.sr_path)))
    assert "Follow-up 1" in text and "Baseline" not in text
    report = hd.sr.srread(_path(result.sr_path))
    (resolved,) = report.content.get_image_measurement_groups()
    assert resolved.tracking_uid == gone.tracking_uid
    assert dciodvfy_errors(_path(result.sr_path)) == []


def test_a_baseline_where_nothing_was_found_is_still_the_baseline(tmp_path):
    # The first study with a lesion row is the follow-up: it is not the baseline.
    base = analysed_study(tmp_path, key="svc4c", study_date=dt.date(2024, 1, 10))
    LesionMeasurement.objects.filter(study=base.study).delete()
    follow = analysed_study(tmp_path, key="svc4d", study_date=dt.date(2024, 4, 10))
    result = study_dicom_export(study=follow.study)
    text = str(pydicom.dcmread(_path(result.sr_path)))
    assert "Follow-up 1" in text and "Baseline" not in text


def test_missing_mask_file_is_named(tmp_path):
    case = analysed_study(tmp_path, key="svc5")
    _path(case.measurements[0].segmentation.mask_path).unlink()
    with pytest.raises(DicomExportError, match=r"mask file masks/svc5.nii.gz is missing"):
        study_dicom_export(study=case.study)


def test_command_exports_every_study_and_audits(tmp_path):
    case = analysed_study(tmp_path, key="svc6")
    out = StringIO()
    call_command("export_dicom", "--patient", case.study.patient.patient_id, stdout=out)
    assert "export_dicom: 1 studies exported, 0 failed" in out.getvalue()
    assert len(list(_path("exports/dicom").rglob("*.dcm"))) == 2
    event = AuditEvent.objects.get(action="dicom.export")
    assert event.patient_id == case.study.patient.pk
    assert event.username.startswith("cli:")


def test_command_refuses_unknown_patient_and_send_without_pacs(tmp_path, settings):
    with pytest.raises(CommandError, match="no patient with ID 'NOPE'"):
        call_command("export_dicom", "--patient", "NOPE")
    case = analysed_study(tmp_path, key="svc7")
    settings.RADTRACK_PACS_DICOMWEB_URL = ""
    with pytest.raises(CommandError, match="no PACS is configured"):
        call_command("export_dicom", "--patient", case.study.patient.patient_id, "--send")
    assert not AuditEvent.objects.filter(action="dicom.send").exists()


def _frames(path: Path) -> dict[tuple, bytes]:
    """Each SEG frame's pixels by source image, segment, position and orientation."""
    seg = pydicom.dcmread(path)
    pixels = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    out = {}
    for index, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        number = int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        source = frame.DerivationImageSequence[0].SourceImageSequence[0]
        position = tuple(
            round(float(v), 3) for v in frame.PlanePositionSequence[0].ImagePositionPatient
        )
        orientation = (
            frame.get("PlaneOrientationSequence")
            or seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence
        )[0]
        key = (
            source.ReferencedSOPInstanceUID,
            number,
            position,
            tuple(round(float(v), 6) for v in orientation.ImageOrientationPatient),
        )
        out[key] = pixels[index].tobytes()
    return out


# -- a split lesion (finding 5) -----------------------------------------------------------
def test_a_split_lesions_segment_holds_all_its_fragments(tmp_path):
    case = analysed_study(tmp_path, key="svc8")
    liver, lung = case.measurements
    lung.delete()  # tracking found label 5 to be a fragment of the liver lesion
    liver.component_labels = [2, 5]
    liver.volume_ml = 0.48 + 0.0058
    liver.save()
    result = study_dicom_export(study=case.study)
    seg = hd.seg.segread(_path(result.seg_path))
    (number,) = seg.get_segment_numbers(tracking_uid=liver.lesion.tracking_uid)
    mask = seg.get_volume(combine_segments=True).array
    assert int((mask == number).sum()) == 3 * 5 * 5 + 3 * 3  # both fragments
    report = hd.sr.srread(_path(result.sr_path))
    (group,) = report.content.get_volumetric_roi_measurement_groups()
    volumes = group.get_measurements(name=hd.sr.CodedConcept("118565006", "SCT", "Volume"))
    by_method = {v.method.value: v.value for v in volumes}
    assert by_method["PVV"] == pytest.approx(0.4858)
    assert by_method["126030"] == pytest.approx(segment_volume_ml(seg, number))


# -- an orientation-corrected run (finding 9) ---------------------------------------------
def _corrected_run(case, *, record_geometry: bool = True):
    """Give the study's mask the header an LR-flip correction gives, as the pipeline does."""

    segmentation = case.measurements[0].segmentation
    mask_file = _path(segmentation.mask_path)
    before = volume_read_nifti(path=mask_file, kind="label")
    after = volume_flip_header(volume=before, flips=(-1, 1, 1))
    volume_write_nifti(volume=after, path=mask_file)
    result = {"finding": "left-right flip", "corrected": True}
    if record_geometry:
        result.update(
            direction_before=before.direction.round(6).tolist(),
            direction_after=after.direction.round(6).tolist(),
            origin_before_mm=list(before.origin_mm),
            origin_after_mm=list(after.origin_mm),
        )
    run = ProcessingRun.objects.create(
        series=segmentation.series,
        status="succeeded",
        flags={"orientation_review": "left-right flip", "orientation_corrected": True},
        steps=[{"name": "orientation_standardise", "status": "succeeded", "result": result}],
    )
    segmentation.processing_run = run
    segmentation.save(update_fields=["processing_run"])
    return run


def test_a_corrected_runs_mask_is_exported_on_the_source_images_voxel_for_voxel(tmp_path):
    case = analysed_study(tmp_path, key="svc9")
    plain = _frames(_path(study_dicom_export(study=case.study).seg_path))
    _corrected_run(case)
    result = study_dicom_export(study=case.study)
    assert _frames(_path(result.seg_path)) == plain
    seg = pydicom.dcmread(_path(result.seg_path))
    source = pydicom.dcmread(case.files[0])
    orientation = seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
    assert list(map(float, orientation.ImageOrientationPatient)) == list(
        map(float, source.ImageOrientationPatient)
    )
    assert dciodvfy_errors(_path(result.seg_path)) == []


def test_a_corrected_run_without_its_geometry_record_is_refused(tmp_path):
    case = analysed_study(tmp_path, key="svc10")
    run = _corrected_run(case, record_geometry=False)
    with pytest.raises(DicomExportError, match=rf"processing run {run.pk} corrected the volume"):
        study_dicom_export(study=case.study)


# -- a replaced SR names its predecessor (finding 10) -------------------------------------
def test_a_changed_sr_names_the_one_it_replaces(tmp_path):
    case = analysed_study(tmp_path, key="svc11")
    first = study_dicom_export(study=case.study)
    assert "PredecessorDocumentsSequence" not in pydicom.dcmread(_path(first.sr_path))
    case.measurements[0].override_longest_diameter_mm = 30.0
    case.measurements[0].save()
    changed = study_dicom_export(study=case.study)
    old = pydicom.dcmread(_path(first.sr_path))
    new = pydicom.dcmread(_path(changed.sr_path))
    reference = new.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert reference.SeriesInstanceUID == old.SeriesInstanceUID
    assert reference.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == old.SOPInstanceUID
    assert dciodvfy_errors(_path(changed.sr_path)) == []

    # Unchanged again: the very same object, still naming the same predecessor.
    again = study_dicom_export(study=case.study)
    assert again.sr_path == changed.sr_path
    # Back to the first values: a third version, naming the second (not the first's UID).
    case.measurements[0].override_longest_diameter_mm = None
    case.measurements[0].save()
    reverted = study_dicom_export(study=case.study)
    assert reverted.sr_path not in (first.sr_path, changed.sr_path)
    third = pydicom.dcmread(_path(reverted.sr_path))
    reference = third.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert reference.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == new.SOPInstanceUID


def _numbers(group) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for m in group.get_measurements():
        if m.name.value != "126073":  # Time Point Order (TID 1502), not a measurement
            out.setdefault(m.name.meaning, []).append(m.value)
    return out


def _states(group) -> list[str]:
    return [
        q.value.meaning for q in group.get_qualitative_evaluations() if q.name.value == "FSTATE"
    ]


def test_absent_values_are_left_out_not_zero_and_rejected_lesions_not_exported(tmp_path):
    """Not found, merged, too small and measured by hand without a volume: the SR has no
    value for what the lesion does not have, and says its state; a lesion rejected at
    another study (its rejection holds for the identity) is not in the SR or the SEG."""
    case = analysed_study(tmp_path, key="svc9")
    liver, lung = case.measurements
    patient = case.study.patient

    def lesion_at(label: str, organ: str = "liver", **fields) -> LesionMeasurement:
        row = LesionFactory(patient=patient, label=label, organ=organ)
        return LesionMeasurementFactory(lesion=row, study=case.study, **fields)

    absent = {"volume_ml": 0.0, "longest_diameter_mm": 0.0, "short_axis_mm": 0.0}
    lesion_at("Missed 1", status="not_found", finding_state="not_found", **absent)
    lesion_at("Merged 1", status="merged", merged_into=liver.lesion, **absent)
    lesion_at("Small 1", status="tracked", too_small=True, review_state="edited", **absent)
    lesion_at("Node 1", organ="lymph_node", status="new", volume_ml=None,
              longest_diameter_mm=21.0, short_axis_mm=15.5)  # fmt: skip
    LesionMeasurement.objects.filter(pk=lung.pk).update(
        finding_state="rejected", state_reason="rejected at the baseline by a radiologist"
    )
    result = study_dicom_export(study=case.study)
    assert dciodvfy_errors(_path(result.sr_path)) == []
    seg = pydicom.dcmread(_path(result.seg_path))
    assert [s.TrackingUID for s in seg.SegmentSequence] == [liver.lesion.tracking_uid]
    report = hd.sr.srread(_path(result.sr_path))
    groups = {
        g.tracking_identifier: g
        for g in report.content.get_image_measurement_groups()
        + report.content.get_volumetric_roi_measurement_groups()
    }
    assert set(groups) == {"Liver svc9", "Missed 1", "Merged 1", "Small 1", "Node 1"}
    for label, state in (
        ("Missed 1", "Not found, needs review"),
        ("Merged 1", "Merged into another lesion"),
        ("Small 1", "Present, too small to measure"),
    ):
        assert _numbers(groups[label]) == {}, label
        assert _states(groups[label]) == [state], label
    assert _numbers(groups["Node 1"]) == {"Long axis": [21.0], "Short axis": [15.5]}
    assert _states(groups["Liver svc9"]) == [] and len(_numbers(groups["Liver svc9"])) == 3

    # Unchanged results: the same objects, reused byte for byte.
    sr_bytes = _path(result.sr_path).read_bytes()
    again = study_dicom_export(study=case.study)
    assert again.reused == ["SEG", "SR"] and again.sr_path == result.sr_path
    assert _path(again.sr_path).read_bytes() == sr_bytes


def test_an_equivocal_finding_keeps_its_values_and_says_so_in_a_new_sr(tmp_path):
    case = analysed_study(tmp_path, key="svc10")
    first = study_dicom_export(study=case.study)
    LesionMeasurement.objects.filter(pk=case.measurements[1].pk).update(finding_state="equivocal")
    changed = study_dicom_export(study=case.study)
    assert changed.sr_path != first.sr_path and changed.seg_path == first.seg_path
    report = hd.sr.srread(_path(changed.sr_path))
    (lung,) = [
        g
        for g in report.content.get_volumetric_roi_measurement_groups()
        if g.tracking_identifier == "Lung svc10"
    ]
    assert _states(lung) == ["Equivocal, awaiting confirmation"]
    assert _numbers(lung)["Long axis"] == [case.measurements[1].longest_diameter_mm]
