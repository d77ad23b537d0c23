"""The DICOM SR's time points and provisional links, as the audit asked.

Time points (TID 1502) count dates, not studies: a chest CT and an abdomen CT of the
baseline date are both the Baseline, as the responses read them, and the next date is
Follow-up 1. A lesion whose link to earlier studies is still a proposal made without a
registration says so in the SR, as the CSV export's ``link_provisional`` does, and the SR
still passes dciodvfy.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from django.conf import settings
from pydicom.sr.codedict import codes

from analytics.models import ResponseAssessment
from imaging.core.dicom.seg_sr import DicomExportError, ExportedLesion, dataset_write
from imaging.core.dicom.sr_codes import PROVISIONAL_LINK, TRACKING_LINK, TimePoint, time_point_of
from imaging.exports.services import _time_point, study_dicom_export
from imaging.models import LesionMeasurement
from tests.analytics.test_same_day_studies import ABDOMEN, BOTH, CHEST, _patient
from tests.interop.conftest import analysed_study, dciodvfy_errors
from tests.interop.test_dicom_export_core import LIVER_1, LUNG_1, _build, ct  # noqa: F401

BASELINE = dt.date(2024, 1, 10)
FOLLOW_UP = dt.date(2024, 4, 10)


def _path(relative: str) -> Path:
    return Path(settings.DATA_DIR) / relative


# -- time points (no database) ------------------------------------------------------
@pytest.mark.parametrize(
    ("studies", "study", "order"),
    [
        ([(1, BASELINE), (2, FOLLOW_UP)], 2, 2),
        # chest and abdomen CT of the baseline date: one time point
        ([(1, BASELINE), (2, BASELINE), (3, FOLLOW_UP)], 2, 1),
        ([(1, BASELINE), (2, BASELINE), (3, FOLLOW_UP)], 3, 2),
        ([(1, BASELINE), (2, FOLLOW_UP), (3, FOLLOW_UP), (4, dt.date(2024, 7, 1))], 4, 3),
        # a study without a date shares none: its own time point, after the dated ones
        ([(1, BASELINE), (2, BASELINE), (3, None), (4, None)], 3, 2),
        ([(1, BASELINE), (2, BASELINE), (3, None), (4, None)], 4, 3),
    ],
)
def test_studies_of_one_date_are_one_time_point(studies, study, order):
    assert time_point_of(study, studies) == TimePoint(order)


def test_a_study_not_among_the_patients_is_refused():
    with pytest.raises(DicomExportError):
        time_point_of(9, [(1, BASELINE)])


# -- the SR of a same-day study ------------------------------------------------------
@pytest.mark.django_db
def test_same_day_abdomen_ct_is_the_baseline_as_in_the_responses():
    """The audit's case: responses read the baseline date's two studies as one baseline;
    the SR called the second "Follow-up 1" (Posttreatment) and the real follow-up
    "Follow-up 2"."""
    follow_up = BASELINE + dt.timedelta(days=91)
    patient = _patient([(BASELINE, CHEST), (BASELINE, ABDOMEN), (follow_up, BOTH)])
    first, second, later = sorted(
        ResponseAssessment.objects.filter(patient=patient).select_related("study"),
        key=lambda r: r.study.chronological_key,
    )
    assert first.is_baseline and second.is_baseline and not later.is_baseline
    for row, label, code in (
        (first, "Baseline", codes.cid6146.Baseline),
        (second, "Baseline", codes.cid6146.Baseline),
        (later, "Follow-up 1", codes.cid6146.Posttreatment),
    ):
        point = _time_point(row.study)
        assert (point.label, point.code) == (label, code), row.study.study_date


def _time_point_context(path: Path) -> set[tuple[str, str, int]]:
    """(Time Point (UMLS C2348792), Time Point Type (DCM 126072), Time Point Order (DCM
    126073)) of every TID 1502 in the SR."""
    said = set()

    def walk(items) -> None:
        for item in items:
            if "ContentSequence" not in item:
                continue
            by_code = {c.ConceptNameCodeSequence[0].CodeValue: c for c in item.ContentSequence}
            if "C2348792" in by_code:
                said.add(
                    (
                        str(by_code["C2348792"].TextValue),
                        str(by_code["126072"].ConceptCodeSequence[0].CodeMeaning),
                        int(by_code["126073"].MeasuredValueSequence[0].NumericValue),
                    )
                )
            walk(item.ContentSequence)

    walk([pydicom.dcmread(path)])
    return said


@pytest.mark.django_db
def test_same_day_studies_sr_says_baseline_and_the_next_date_follow_up_1(tmp_path):
    chest = analysed_study(tmp_path, key="amtp1", study_date=BASELINE)
    patient = chest.study.patient
    abdomen = analysed_study(tmp_path, key="amtp2", study_date=BASELINE, patient=patient)
    later = analysed_study(
        tmp_path, key="amtp3", study_date=FOLLOW_UP, patient=patient, lesions=chest.lesions
    )
    said = {}
    for name, case in (("chest", chest), ("abdomen", abdomen), ("later", later)):
        result = study_dicom_export(study=case.study)
        said[name] = _time_point_context(_path(result.sr_path))
        assert dciodvfy_errors(_path(result.sr_path)) == []
    assert said == {
        "chest": {("Baseline", "Baseline", 1)},
        "abdomen": {("Baseline", "Baseline", 1)},
        "later": {("Follow-up 1", "Posttreatment", 2)},
    }


# -- provisional links ------------------------------------------------------------------
def _links(group) -> list[str]:
    return [
        q.value.meaning
        for q in group.get_qualitative_evaluations()
        if q.name.value == TRACKING_LINK.value
    ]


def _groups(path: Path) -> dict[str, object]:
    report = hd.sr.srread(path)
    return {
        g.tracking_identifier: g
        for g in report.content.get_image_measurement_groups()
        + report.content.get_volumetric_roi_measurement_groups()
    }


@pytest.mark.django_db
def test_a_provisional_link_is_said_in_a_new_sr_that_passes_dciodvfy(tmp_path):
    base = analysed_study(tmp_path, key="amp1", study_date=BASELINE)
    follow = analysed_study(
        tmp_path, key="amp2", study_date=FOLLOW_UP, patient=base.study.patient,
        lesions=base.lesions,
    )  # fmt: skip
    confirmed = study_dicom_export(study=follow.study)
    assert all(_links(g) == [] for g in _groups(_path(confirmed.sr_path)).values())

    liver, lung = follow.measurements
    LesionMeasurement.objects.filter(pk=lung.pk).update(
        link_provisional=True, finding_state="equivocal"
    )
    proposed = study_dicom_export(study=follow.study)
    assert proposed.sr_path != confirmed.sr_path  # what the SR says changed: a new SR
    assert dciodvfy_errors(_path(proposed.sr_path)) == []
    groups = _groups(_path(proposed.sr_path))
    assert _links(groups[lung.lesion.label]) == [PROVISIONAL_LINK.meaning]
    assert _links(groups[liver.lesion.label]) == []
    states = [
        q.value.meaning
        for q in groups[lung.lesion.label].get_qualitative_evaluations()
        if q.name.scheme_designator == "99RADTRACK"
    ]
    assert states == ["Equivocal, awaiting confirmation", PROVISIONAL_LINK.meaning]


def test_sr_with_every_state_and_provisional_links_passes_dciodvfy(ct, tmp_path):  # noqa: F811
    """A provisional link beside each finding state, with and without a segment."""
    gone = ExportedLesion(
        "2.25.2001", "Liver 3", "liver", None, None, None, None, state="not_found",
        link_provisional=True,
    )  # fmt: skip
    merged = replace(gone, tracking_uid="2.25.2002", tracking_id="Liver 4", state="merged")
    lesions = (
        replace(LIVER_1, link_provisional=True),
        replace(LUNG_1, state="equivocal", link_provisional=True),
        gone,
        merged,
    )
    _, sr = _build(ct, lesions=lesions, time_point=TimePoint(2))
    path = dataset_write(dataset=sr, path=tmp_path / "sr.dcm")
    assert dciodvfy_errors(path) == []
    groups = _groups(path)
    assert {label: _links(g) for label, g in groups.items()} == {
        label: [PROVISIONAL_LINK.meaning] for label in ("Liver 1", "Lung 1", "Liver 3", "Liver 4")
    }
