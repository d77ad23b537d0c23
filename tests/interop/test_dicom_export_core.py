"""DICOM SEG and Measurement Report SR built from real CT files, checked by dciodvfy.

No database: the objects come from `imaging.core.dicom_export` over files written by
RadTrack's own CT writer and a label map drawn here.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from imaging.core.dicom.seg_sr import (
    DicomExportError,
    ExportedLesion,
    ExportUids,
    PredecessorDocument,
    SegmentationModel,
    dataset_write,
    measurement_report_build,
    segment_volumes_ml,
    segmentation_build,
)
from imaging.core.dicom.sr_codes import TimePoint
from imaging.core.dicom.volume import series_volume
from imaging.core.dicom.write import CTSeriesAttributes, ct_series_write, synthetic_uid
from imaging.core.geometry.volume import Volume
from imaging.core.registration.orientation import volume_flip_header
from tests.interop.conftest import dciodvfy_errors
from tests.interop.dicom_checks import sr_mask_volumes

MODEL = SegmentationModel("lesion-unet", "2.1.0")
LIVER_1 = ExportedLesion("2.25.1001", "Liver 1", "liver", 1.25, 14.0, 9.5, 3)
LUNG_1 = ExportedLesion("2.25.1002", "Lung 1", "lung", 0.08, 4.0, 2.4, 7)
LIVER_2_GONE = ExportedLesion("2.25.1003", "Liver 2", "liver", 0.0, 0.0, 0.0, None)


@pytest.fixture
def ct(tmp_path) -> tuple[list[pydicom.Dataset], Volume]:
    """Five 24x24 CT slices (0.8 x 0.8 x 2.5 mm) and the volume built from them."""
    rng = np.random.default_rng(3)
    volume = Volume(
        array=rng.normal(40.0, 10.0, size=(5, 24, 24)),
        spacing_mm=(0.8, 0.8, 2.5),
        origin_mm=(-9.6, -9.6, -50.0),
    )
    attrs = CTSeriesAttributes(
        patient_id="RT-EXPORT-1",
        patient_name="Doe^Jane",
        patient_birth_date=dt.date(1958, 2, 3),
        patient_sex="F",
        study_instance_uid=synthetic_uid(["export", "study"]),
        series_instance_uid=synthetic_uid(["export", "series"]),
        frame_of_reference_uid=synthetic_uid(["export", "for"]),
        accession_number="ACC1",
    )
    files = ct_series_write(volume, tmp_path / "ct", attrs)
    # Given out of order: the SEG must place frames by position, not by list order.
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in reversed(files)]
    return headers, series_volume(sources=files).volume


def _label_map(grid: Volume) -> Volume:
    labels = np.zeros(grid.array.shape, dtype=np.uint8)
    labels[1:4, 5:10, 5:10] = 3  # Liver 1 on slices 1-3
    labels[2, 15:18, 15:18] = 7  # Lung 1 on slice 2
    labels[4, 0:2, 0:2] = 9  # a candidate no lesion claims (rejected): left out
    return grid.with_array(labels, kind="label")


def _uids() -> ExportUids:
    return ExportUids(*(synthetic_uid([name]) for name in ("ss", "si", "rs", "ri", "dev")))


def _build(ct, lesions=(LIVER_1, LUNG_1, LIVER_2_GONE), time_point: TimePoint | None = None):
    headers, grid = ct
    volumes = segment_volumes_ml(label_map=_label_map(grid), lesions=list(lesions))
    lesions = [replace(x, mask_volume_ml=volumes.get(x.tracking_uid)) for x in lesions]
    seg = segmentation_build(
        source_images=headers,
        label_map=_label_map(grid),
        lesions=list(lesions),
        model=MODEL,
        uids=_uids(),
        software_version="radtrack 0.1.0",
    )
    sr = measurement_report_build(
        source_images=headers,
        segmentation=seg,
        lesions=list(lesions),
        model=MODEL,
        time_point=time_point or TimePoint(2),
        uids=_uids(),
    )
    return seg, sr


def test_seg_and_sr_pass_dciodvfy(ct, tmp_path):
    seg, sr = _build(ct)
    seg_path = dataset_write(dataset=seg, path=tmp_path / "seg.dcm")
    sr_path = dataset_write(dataset=sr, path=tmp_path / "sr.dcm")
    assert dciodvfy_errors(seg_path) == []
    assert dciodvfy_errors(sr_path) == []


def test_seg_has_one_segment_per_lesion_with_tracking_and_algorithm(ct, tmp_path):
    headers, _ = ct
    seg, _ = _build(ct)
    back = pydicom.dcmread(dataset_write(dataset=seg, path=tmp_path / "seg.dcm"))
    assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "PatientBirthDate"):
        assert back.get(keyword) == headers[0].get(keyword), keyword
    assert back.FrameOfReferenceUID == headers[0].FrameOfReferenceUID
    assert back.SeriesInstanceUID != headers[0].SeriesInstanceUID
    segments = {s.SegmentNumber: s for s in back.SegmentSequence}
    assert [segments[n].TrackingUID for n in (1, 2)] == ["2.25.1001", "2.25.1002"]
    assert [segments[n].TrackingID for n in (1, 2)] == ["Liver 1", "Lung 1"]
    for segment in segments.values():
        assert segment.SegmentAlgorithmType == "AUTOMATIC"
        assert segment.SegmentAlgorithmName == "lesion-unet"
        algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == "lesion-unet"
        assert algorithm.AlgorithmVersion == "2.1.0"
    assert segments[1].AnatomicRegionSequence[0].CodeMeaning == "Liver"


def test_a_second_reader_segment_names_the_reader_not_the_model(ct, tmp_path):
    read = replace(LIVER_1, second_reader=True)
    seg, _ = _build(ct, lesions=(read, LUNG_1))
    seg_path = dataset_write(dataset=seg, path=tmp_path / "seg.dcm")
    assert dciodvfy_errors(seg_path) == []
    segments = {s.TrackingID: s for s in pydicom.dcmread(seg_path).SegmentSequence}
    liver, lung = segments["Liver 1"], segments["Lung 1"]
    assert liver.SegmentAlgorithmType == lung.SegmentAlgorithmType == "AUTOMATIC"
    reader = liver.SegmentationAlgorithmIdentificationSequence[0]
    assert reader.AlgorithmName == "RadTrack liver second reader"
    assert reader.AlgorithmVersion == "radtrack 0.1.0"
    assert lung.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "lesion-unet"
    # The SR's measurements of that lesion name the reader too; the lung's, the model.
    _, grid = ct
    volumes = segment_volumes_ml(label_map=_label_map(grid), lesions=[read, LUNG_1])
    lesions = [replace(x, mask_volume_ml=volumes.get(x.tracking_uid)) for x in (read, LUNG_1)]
    sr = measurement_report_build(
        source_images=ct[0], segmentation=seg, lesions=lesions, model=MODEL,
        time_point=TimePoint(2), uids=_uids(), software_version="radtrack 0.1.0",
    )  # fmt: skip

    def texts(item) -> list[tuple[str, str]]:
        """(concept meaning, text) of every TEXT item under ``item``."""
        out = []
        for child in item.get("ContentSequence", []):
            if child.ValueType == "TEXT":
                out.append((child.ConceptNameCodeSequence[0].CodeMeaning, child.TextValue))
            out += texts(child)
        return out

    groups = [t for item in sr.ContentSequence if item.ValueType == "CONTAINER"
              for t in [texts(g) for g in item.get("ContentSequence", [])] if t]  # fmt: skip
    names = {
        dict(t)["Tracking Identifier"]: {v for k, v in t if k == "Algorithm Name"}
        for t in groups
        if "Tracking Identifier" in dict(t)
    }
    assert names == {"Liver 1": {"RadTrack liver second reader"}, "Lung 1": {"lesion-unet"}}


def test_each_second_reader_segment_names_its_own_organ_s_reader(ct, tmp_path):
    lesions = (replace(LIVER_1, second_reader=True), replace(LUNG_1, second_reader=True))
    seg, _ = _build(ct, lesions=lesions)
    seg_path = dataset_write(dataset=seg, path=tmp_path / "seg.dcm")
    assert dciodvfy_errors(seg_path) == []
    names = {
        s.TrackingID: s.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName
        for s in pydicom.dcmread(seg_path).SegmentSequence
    }
    assert names == {
        "Liver 1": "RadTrack liver second reader",
        "Lung 1": "RadTrack lung second reader",
    }


def test_seg_frames_lie_on_the_source_slices_they_cover(ct):
    headers, grid = ct
    seg, _ = _build(ct)
    by_position = {round(float(h.ImagePositionPatient[2]), 3): h.SOPInstanceUID for h in headers}
    expected_slices = {1: {1, 2, 3}, 2: {2}}
    seen: dict[int, set[int]] = {1: set(), 2: set()}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        number = frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        z = round(float(frame.PlanePositionSequence[0].ImagePositionPatient[2]), 3)
        k = int(round((z - grid.origin_mm[2]) / grid.spacing_mm[2]))
        seen[number].add(k)
        source = frame.DerivationImageSequence[0].SourceImageSequence[0]
        assert source.ReferencedSOPInstanceUID == by_position[z]
    assert seen == expected_slices
    mask = seg.get_volume(combine_segments=True).array
    assert int((mask == 1).sum()) == 3 * 5 * 5
    assert int((mask == 2).sum()) == 9


def test_sr_has_a_group_per_lesion_with_tracking_time_point_and_values(ct, tmp_path):
    seg, sr = _build(ct, time_point=TimePoint(3))
    back = hd.sr.srread(dataset_write(dataset=sr, path=tmp_path / "sr.dcm"))
    assert back.StudyInstanceUID == seg.StudyInstanceUID
    assert back.PatientID == "RT-EXPORT-1"
    assert back.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    groups = back.content.get_volumetric_roi_measurement_groups()
    assert {g.tracking_uid for g in groups} == {"2.25.1001", "2.25.1002"}
    liver = next(g for g in groups if g.tracking_uid == "2.25.1001")
    assert liver.tracking_identifier == "Liver 1"
    assert liver.reference_type.meaning == "Referenced Segment"
    assert liver.referenced_segment.referenced_segment_numbers == [1]
    assert liver.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
    values = {
        (m.name.meaning, m.method.value if m.method else None): (m.value, m.unit.value)
        for m in liver.get_measurements()
    }
    # 75 voxels of 0.8 x 0.8 x 2.5 mm: the segment's own volume, and the value in force.
    assert values == {
        ("Volume", "126030"): (pytest.approx(0.12), "ml"),
        ("Volume", "PVV"): (1.25, "ml"),
        ("Long axis", None): (14.0, "mm"),
        ("Short axis", None): (9.5, "mm"),
        # TID 1502's Time Point Order is a NUM item, so highdicom lists it here too.
        ("Time Point Order", None): (3.0, "1"),
    }
    # The resolved lesion has no segment but still its own group (TID 1501), volume 0.
    (gone,) = back.content.get_image_measurement_groups()
    assert (gone.tracking_uid, gone.tracking_identifier) == ("2.25.1003", "Liver 2")
    assert (
        gone.get_measurements(name=hd.sr.CodedConcept("118565006", "SCT", "Volume"))[0].value == 0
    )
    text = str(back)
    assert text.count("Follow-up 2") == 3  # one Time Point per group
    assert "Posttreatment" in text


def test_every_sr_volume_of_a_segment_is_recomputed_from_the_seg(ct, tmp_path):
    """The voxel-sum Volume of each referenced segment equals that segment's voxels in the
    SEG as read back; the value in force says it is another method (partial volume)."""
    seg, sr = _build(ct)
    seg_back = hd.seg.segread(dataset_write(dataset=seg, path=tmp_path / "seg.dcm"))
    sr_back = hd.sr.srread(dataset_write(dataset=sr, path=tmp_path / "sr.dcm"))
    checked = sr_mask_volumes(seg_back, sr_back)
    assert {c[0] for c in checked} == {"Liver 1", "Lung 1"}
    for tracking_id, in_sr, from_seg, methods in checked:
        assert in_sr == pytest.approx(from_seg, rel=1e-6), tracking_id
        assert methods == ["126030", "PVV"], tracking_id


def test_a_segment_without_its_mask_volume_is_refused(ct):
    headers, grid = ct
    seg = segmentation_build(
        source_images=headers,
        label_map=_label_map(grid),
        lesions=[LIVER_1],
        model=MODEL,
        uids=_uids(),
        software_version="radtrack 0.1.0",
    )
    with pytest.raises(DicomExportError, match="mask volume is not given"):
        measurement_report_build(
            source_images=headers,
            segmentation=seg,
            lesions=[LIVER_1],
            model=MODEL,
            time_point=TimePoint(1),
            uids=_uids(),
        )


def test_baseline_time_point_is_coded_as_baseline():
    assert TimePoint(1).label == "Baseline"
    assert TimePoint(1).code.meaning == "Baseline"
    assert TimePoint(2).label == "Follow-up 1"
    with pytest.raises(DicomExportError, match="counts from 1"):
        TimePoint(0)


def test_lesion_without_voxels_is_refused_with_its_name(ct):
    ghost = ExportedLesion("2.25.1009", "Liver 9", "liver", 1.0, 10.0, 5.0, 5)
    with pytest.raises(DicomExportError, match=r"'Liver 9' has label 5, which has no voxels"):
        _build(ct, lesions=(LIVER_1, ghost))


def test_mask_from_another_frame_of_reference_is_refused(ct):
    headers, grid = ct
    other = Volume(
        array=_label_map(grid).array,
        spacing_mm=grid.spacing_mm,
        origin_mm=grid.origin_mm,
        frame_of_reference_uid="2.25.999",
        kind="label",
    )
    with pytest.raises(DicomExportError, match="Frame of Reference UID differs"):
        segmentation_build(
            source_images=headers,
            label_map=other,
            lesions=[LIVER_1],
            model=MODEL,
            uids=_uids(),
            software_version="x",
        )


def test_scalar_mask_and_empty_lesion_list_are_refused(ct):
    headers, grid = ct
    with pytest.raises(DicomExportError, match="must be a label volume"):
        segmentation_build(
            source_images=headers,
            label_map=grid,
            lesions=[LIVER_1],
            model=MODEL,
            uids=_uids(),
            software_version="x",
        )
    with pytest.raises(DicomExportError, match="no lesions to report"):
        measurement_report_build(
            source_images=headers,
            segmentation=None,
            lesions=[],
            model=MODEL,
            time_point=TimePoint(1),
            uids=_uids(),
        )


def test_sources_from_two_series_are_refused(ct, tmp_path: Path):
    headers, grid = ct
    stray = pydicom.Dataset()
    stray.update(headers[0])
    stray.SeriesInstanceUID = "2.25.4242"
    with pytest.raises(DicomExportError, match="2 different SeriesInstanceUID"):
        segmentation_build(
            source_images=[*headers, stray],
            label_map=_label_map(grid),
            lesions=[LIVER_1],
            model=MODEL,
            uids=_uids(),
            software_version="x",
        )


# -- a split lesion's fragments (finding 5) -----------------------------------------------
def test_a_split_lesions_segment_holds_every_fragment(ct):
    headers, grid = ct
    split = ExportedLesion("2.25.1001", "Liver 1", "liver", 1.3, 14.0, 9.5, 3, (3, 9))
    seg = segmentation_build(
        source_images=headers,
        label_map=_label_map(grid),
        lesions=[split, LUNG_1],
        model=MODEL,
        uids=_uids(),
        software_version="x",
    )
    mask = seg.get_volume(combine_segments=True).array
    assert int((mask == 1).sum()) == 3 * 5 * 5 + 2 * 2  # label 3 and its fragment 9
    assert int((mask == 2).sum()) == 9


def test_a_fragment_claimed_by_two_lesions_or_missing_is_refused(ct):
    headers, grid = ct
    both = ExportedLesion("2.25.1002", "Lung 1", "lung", 0.08, 4.0, 2.4, 7, (7, 3))
    with pytest.raises(DicomExportError, match="share a component label"):
        _build(ct, lesions=(LIVER_1, both))
    ghost = ExportedLesion("2.25.1001", "Liver 1", "liver", 1.3, 14.0, 9.5, 3, (3, 11))
    with pytest.raises(DicomExportError, match="has label 11, which has no voxels"):
        _build(ct, lesions=(ghost,))


# -- a mask whose header was corrected (finding 9) ----------------------------------------
@pytest.mark.parametrize("flips", [(-1, 1, 1), (1, 1, -1)])
def test_a_label_map_with_a_flipped_header_is_refused(ct, flips):

    headers, grid = ct
    flipped = volume_flip_header(volume=_label_map(grid), flips=flips)
    with pytest.raises(DicomExportError, match="axes do not run as the source images'"):
        segmentation_build(
            source_images=headers,
            label_map=flipped,
            lesions=[LIVER_1],
            model=MODEL,
            uids=_uids(),
            software_version="x",
        )


# -- an SR replacing another (finding 10) -------------------------------------------------
def test_an_sr_names_the_sr_it_replaces_and_still_passes_dciodvfy(ct, tmp_path):

    headers, _ = ct
    seg, first = _build(ct)
    earlier = PredecessorDocument(
        study_instance_uid=first.StudyInstanceUID,
        series_instance_uid=first.SeriesInstanceUID,
        sop_instance_uid=first.SOPInstanceUID,
    )
    uids = ExportUids(*(synthetic_uid([name]) for name in ("ss", "si", "rs", "r2", "dev")))
    second = measurement_report_build(
        source_images=headers,
        segmentation=seg,
        lesions=[replace(LIVER_1, mask_volume_ml=0.12), replace(LUNG_1, mask_volume_ml=0.0144)],
        model=MODEL,
        time_point=TimePoint(2),
        uids=uids,
        predecessor=earlier,
    )
    (study,) = second.PredecessorDocumentsSequence
    assert study.StudyInstanceUID == first.StudyInstanceUID
    (series,) = study.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == first.SeriesInstanceUID
    (instance,) = series.ReferencedSOPSequence
    assert instance.ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert instance.ReferencedSOPClassUID == first.SOPClassUID
    assert dciodvfy_errors(dataset_write(dataset=second, path=tmp_path / "sr2.dcm")) == []
    assert "PredecessorDocumentsSequence" not in first
