"""A radiologist's segments in the DICOM exports: a lesion added with a click is a
SEMIAUTOMATIC segment naming the click-guided method, an edited mask a MANUAL one, and
the SR names the radiologist who edited last as its person observer; both stay valid."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from django.conf import settings

from imaging.core.dicom.seg_algorithms import CLICK_ALGORITHM_NAME
from imaging.exports.services import study_dicom_export
from tests.interop.conftest import analysed_study, dciodvfy_errors

pytestmark = pytest.mark.django_db


def _path(relative: str) -> Path:
    return Path(settings.DATA_DIR) / relative


def _candidate(label: int, kind: str | None, user: str = "", at: str = "") -> dict:
    entry = {"component_label": label, "organ": "liver", "volume_ml": 0.5,
             "longest_diameter_mm": 9.0, "short_axis_mm": 7.0, "centroid_lps_mm": [0, 0, 0]}  # fmt: skip
    if kind:
        entry["source"] = {"kind": kind, "user": user, "at": at, "method": "click"}
    return entry


def test_drawn_segments_say_how_and_the_sr_names_the_editor(tmp_path):
    case = analysed_study(tmp_path, key="corr1")
    segmentation = case.measurements[0].segmentation
    segmentation.lesions = [
        _candidate(2, "edited", "dr-edit", "2025-02-01T10:00:00+00:00"),
        _candidate(5, "added", "dr-add", "2025-01-01T10:00:00+00:00"),
    ]
    segmentation.save()

    result = study_dicom_export(study=case.study)

    seg = pydicom.dcmread(_path(result.seg_path))
    segments = {s.TrackingUID: s for s in seg.SegmentSequence}
    liver, lung = (segments[m.lesion.tracking_uid] for m in case.measurements)
    assert liver.SegmentAlgorithmType == "MANUAL"
    assert "SegmentationAlgorithmIdentificationSequence" not in liver
    assert lung.SegmentAlgorithmType == "SEMIAUTOMATIC"
    assert lung.SegmentAlgorithmName == CLICK_ALGORITHM_NAME
    report = hd.sr.srread(_path(result.sr_path))
    people = [
        item
        for item in report.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeMeaning == "Person Observer Name"
    ]
    assert [str(p.PersonName) for p in people] == ["dr-edit^"]
    assert dciodvfy_errors(_path(result.seg_path)) == []
    assert dciodvfy_errors(_path(result.sr_path)) == []


def test_the_models_own_segments_stay_automatic_with_no_person(tmp_path):
    case = analysed_study(tmp_path, key="corr2")
    segmentation = case.measurements[0].segmentation
    segmentation.lesions = [_candidate(2, None), _candidate(5, None)]
    segmentation.save()

    result = study_dicom_export(study=case.study)

    seg = pydicom.dcmread(_path(result.seg_path))
    assert {s.SegmentAlgorithmType for s in seg.SegmentSequence} == {"AUTOMATIC"}
    report = pydicom.dcmread(_path(result.sr_path))
    names = [i.ConceptNameCodeSequence[0].CodeMeaning for i in report.ContentSequence]
    assert "Person Observer Name" not in names
