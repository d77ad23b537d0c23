"""A lesion seen at a study but cut by the edge of what was imaged (finding state
``not_assessable``, `LesionMeasurement.edges_reached`) is present, but its measured
numbers are only a lower bound: no output gives them as a size. The exports and the REST
API leave the sizes empty with the state and reason beside them, FHIR gives
``dataAbsentReason`` with the finding state, HL7 an OBX without a value (OBX-11 X) and
an NTE, the risk features read it as not found, the DICOM SR states the finding and
reports no measurement (and still passes dciodvfy), and the pages say "seen, size not
assessable" where the sizes would be, the chart leaving a gap."""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import replace
from io import StringIO
from pathlib import Path

import highdicom as hd
import pytest
from django.conf import settings
from django.core.management import call_command
from django.urls import reverse
from fhir.resources.R4B.observation import Observation
from hl7apy.parser import parse_message

from analytics.dashboard.figures_lesions import lesion_volume_figure
from analytics.dashboard.patient import patient_timeline
from analytics.fhir.build import patient_resources_build
from analytics.fhir.codes import DATA_ABSENT_REASON, FINDING_STATE_SYSTEM
from analytics.fhir.ids import measurement_fhir_id
from analytics.fhir.record import patient_record_load
from analytics.hl7.message import oru_r01_build
from analytics.hl7.send import study_result_load
from analytics.lesions.selectors import measurements_table
from analytics.lesions.serializers import LesionMeasurementSerializer
from analytics.risk.core.features import ImagingFeatures
from analytics.risk.selectors import feature_inputs_load
from imaging.core.dicom.seg_sr import dataset_write
from imaging.core.dicom.sr_codes import FINDING_STATE, TimePoint
from imaging.exports.services import _lesion, _lesion_values, study_dicom_export
from imaging.models import Lesion, LesionMeasurement
from tests.analytics.finding_rows import finding_rows_make
from tests.analytics.test_viewer_audit_mends import processed
from tests.api.helpers import rows_make
from tests.imaging.factories import LesionFactory, LesionMeasurementFactory
from tests.interop.conftest import analysed_study, dciodvfy_errors
from tests.interop.test_dicom_export_core import LIVER_1, LUNG_1, _build, ct  # noqa: F401
from tests.patients.factories import PatientFactory, UserFactory

CUT_REASON = (
    "seen, but it reaches the edge of the scanned range (its last slice), so only part of "
    "it was imaged: its size is not assessable at this study"
)
#: What the segmenter measured of the imaged part: never to be shown as the size.
CUT_VOLUME_ML, CUT_LONGEST_MM, CUT_SHORT_MM = 4.321, 23.7, 18.3
PAGE_NOTE = "seen, size not assessable (reaches the edge of the scanned range)"


def _cut(lesion: Lesion, study, **fields) -> LesionMeasurement:
    """``lesion`` at ``study``, seen but reaching the last slice of the scanned range."""
    values = {
        "status": "tracked",
        "finding_state": "not_assessable",
        "state_reason": CUT_REASON,
        "edges_reached": ["scan_end"],
        "volume_ml": CUT_VOLUME_ML,
        "longest_diameter_mm": CUT_LONGEST_MM,
        "short_axis_mm": CUT_SHORT_MM,
        "max_3d_diameter_mm": 25.1,
        "mean_hu": 61.0,
        "sd_hu": 12.0,
        "sphericity": 0.41,
        "is_target": True,
        "review_state": "pending",
    }
    return LesionMeasurementFactory(lesion=lesion, study=study, **{**values, **fields})


@pytest.fixture
def rows(db):
    """Alice's rows with every finding (`finding_rows_make`), and Liver 7: 30 mm at
    baseline, a target, cut by the last slice at the follow-up."""
    rows = rows_make()
    rows.findings = finding_rows_make(rows)
    lesion = LesionFactory(patient=rows.alice, label="Liver 7", organ="liver")
    LesionMeasurementFactory(
        lesion=lesion, study=rows.baseline, status="new", review_state="accepted",
        volume_ml=14.2, longest_diameter_mm=30.5, short_axis_mm=26.0, is_target=True,
    )  # fmt: skip
    rows.cut = _cut(lesion, rows.followup)
    return rows


# --------------------------------------------------------------------------- exports, API
@pytest.mark.django_db
def test_the_measurements_export_leaves_the_sizes_empty_and_says_why(rows):
    table = measurements_table(patient_ids=["MRN-A"])
    (row,) = table[
        (table["lesion_label"] == "Liver 7")
        & (table["study_instance_uid"] == rows.followup.study_instance_uid)
    ].to_dict("records")
    assert all(math.isnan(row[c]) for c in ("volume_ml", "longest_diameter_mm", "short_axis_mm"))
    assert row["status"] == "tracked"  # seen there
    assert (row["finding_state"], row["state_reason"]) == ("not_assessable", CUT_REASON)


@pytest.mark.django_db
def test_the_export_command_writes_no_cut_number(rows):
    out = StringIO()
    call_command("export_measurements", "--format", "csv", "--patient", "MRN-A", stdout=out)
    (line,) = [x for x in out.getvalue().splitlines() if "Liver 7" in x and "not_assessable" in x]
    assert "23.7" not in line and "4.321" not in line and "18.3" not in line
    assert line.split(",")[7:10] == ["", "", ""]  # volume, longest, short axis


@pytest.mark.django_db
def test_the_rest_serializer_gives_null_sizes_and_the_edge(rows):
    data = LesionMeasurementSerializer(rows.cut).data
    for name in (
        "volume_ml", "longest_diameter_mm", "short_axis_mm", "automated_volume_ml",
        "automated_longest_diameter_mm", "automated_short_axis_mm", "max_3d_diameter_mm",
        "sphericity", "mean_hu", "sd_hu",
    ):  # fmt: skip
        assert data[name] is None, name
    assert data["status"] == "tracked" and data["finding_state"] == "not_assessable"
    assert data["state_reason"] == CUT_REASON and data["edges_reached"] == ["scan_end"]
    # a whole lesion keeps its numbers
    whole = LesionMeasurementSerializer(rows.at_followup).data
    assert whole["longest_diameter_mm"] == 19.5 and whole["automated_volume_ml"] == 5.0


# --------------------------------------------------------------------------- FHIR, HL7
@pytest.mark.django_db
def test_fhir_members_have_a_data_absent_reason_and_the_group_the_state(rows):
    resources = patient_resources_build(record=patient_record_load(pk=rows.alice.pk))
    group_id = measurement_fhir_id(rows.cut.lesion.tracking_uid, rows.followup.study_instance_uid)
    by_id = {o["id"]: o for o in resources.observations}
    for suffix in ("-volume", "-long-axis", "-short-axis"):
        member = by_id[f"{group_id}{suffix}"]
        Observation.model_validate(member)
        assert "valueQuantity" not in member
        (coding,) = member["dataAbsentReason"]["coding"]
        assert (coding["system"], coding["code"]) == (DATA_ABSENT_REASON, "unknown")
        assert member["dataAbsentReason"]["text"] == CUT_REASON
    state = next(
        c["valueCodeableConcept"]
        for c in by_id[group_id]["component"]
        if c["code"]["coding"][0]["code"] == "finding-state"
    )
    assert state["coding"][0] == {
        "system": FINDING_STATE_SYSTEM,
        "code": "not_assessable",
        "display": "Seen, size not assessable",
    }
    assert state["text"] == CUT_REASON


def _obx_by_code(text: str, sub_id: str) -> dict[str, tuple[list[str], list[str]]]:
    """The OBX rows of one target lesion (OBX-4), by code, each with its NTE texts."""
    out: list[tuple[list[str], list[str]]] = []
    for line in text.split("\r"):
        fields = line.split("|")
        if fields[0] == "OBX":
            out.append((fields, []))
        elif fields[0] == "NTE" and out:
            out[-1][1].append(fields[3])
    return {obx[3].split("^")[0]: (obx, notes) for obx, notes in out if obx[4] == sub_id}


@pytest.mark.django_db
def test_hl7_obx_rows_have_no_value_status_x_and_the_reason(rows):
    result = study_result_load(rows.response)
    text = oru_r01_build(
        result=result, control_id="C1", sending_facility="RT", receiving_application="EHR",
        receiving_facility="HOSP", at=dt.datetime(2024, 5, 1, 12, tzinfo=dt.UTC),
    )  # fmt: skip
    parse_message(text)  # a valid v2.5.1 ORU^R01
    order = [t.tracking_id for t in result.targets].index("Liver 7") + 1
    lesion = _obx_by_code(text, str(order))
    assert lesion["112039"][0][5] == "Liver 7"
    for code in ("103339001", "103340004", "118565006"):
        obx, notes = lesion[code]
        assert (obx[2], obx[5], obx[11]) == ("", "", "X"), code
        assert "its size is not assessable" in notes[0], code
    state, notes = lesion["FINDSTATE"]
    assert state[5] == "not_assessable^Seen, size not assessable^99RTKSTATE"
    assert "edge of the scanned range" in notes[0]
    assert "23.7" not in text and "18.3" not in text and "4.321" not in text


# --------------------------------------------------------------------------- risk
@pytest.mark.django_db
def test_cut_sizes_do_not_feed_the_risk_features(rows):
    frame = feature_inputs_load(patient_ids=["MRN-A"]).measurements
    (row,) = frame[
        (frame["lesion_label"] == "Liver 7")
        & (frame["study_instance_uid"] == rows.followup.study_instance_uid)
    ].to_dict("records")
    assert all(math.isnan(row[c]) for c in ("volume_ml", "longest_diameter_mm", "short_axis_mm"))
    # ...but the lesion is there: its state goes with it, and the features count it seen.
    assert row["finding_state"] == "not_assessable"
    features = ImagingFeatures(frame).compute("MRN-A", rows.followup.study_date)
    assert math.isnan(features["total_burden_ml"]) and features["organs_involved"] >= 1.0


# --------------------------------------------------------------------------- DICOM SR
def _groups(path: Path) -> dict[str, object]:
    report = hd.sr.srread(path)
    return {
        g.tracking_identifier: g
        for g in report.content.get_image_measurement_groups()
        + report.content.get_volumetric_roi_measurement_groups()
    }


#: SCT Volume, Long axis, Short axis: the sizes an SR group may report.
_SIZE_CODES = {"118565006", "103339001", "103340004"}


def _sizes(group) -> list[tuple[str, float]]:
    """The sizes ``group`` reports (its TID 1502 Time Point Order is a NUM too)."""
    return [
        (m.name.value, m.value) for m in group.get_measurements() if m.name.value in _SIZE_CODES
    ]


def _states(group) -> list[str]:
    return [
        q.value.value
        for q in group.get_qualitative_evaluations()
        if q.name.value == FINDING_STATE.value
    ]


def test_a_cut_lesion_in_the_sr_states_the_finding_with_no_measurement(ct, tmp_path):  # noqa: F811
    lesions = (LIVER_1, replace(LUNG_1, state="not_assessable"))
    _, sr = _build(ct, lesions=lesions, time_point=TimePoint(2))
    path = dataset_write(dataset=sr, path=tmp_path / "sr.dcm")
    assert dciodvfy_errors(path) == []
    groups = _groups(path)
    cut = groups["Lung 1"]
    assert isinstance(cut, hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations)
    assert _sizes(cut) == []  # not even the segment's voxel volume
    assert _states(cut) == ["NOTASSESS"]
    assert len(_sizes(groups["Liver 1"])) == 4  # two volumes and two axes


@pytest.mark.django_db
def test_the_exported_sr_of_a_study_with_a_cut_lesion_passes_dciodvfy(tmp_path):
    case = analysed_study(tmp_path, key="nass1")
    liver, lung = case.measurements
    LesionMeasurement.objects.filter(pk=lung.pk).update(
        finding_state="not_assessable", state_reason=CUT_REASON, edges_reached=["scan_end"]
    )
    lung.refresh_from_db()
    assert _lesion_values(lung) == ((None, None, None), "not_assessable")
    exported = _lesion(lung, segmentation_id=lung.segmentation_id)
    assert exported.component_label == 5  # its segment stays: where it was seen

    result = study_dicom_export(study=case.study)
    path = Path(settings.DATA_DIR) / result.sr_path
    assert dciodvfy_errors(path) == []
    assert result.segments == 2
    groups = _groups(path)
    assert _sizes(groups[lung.lesion.label]) == []
    assert _states(groups[lung.lesion.label]) == ["NOTASSESS"]
    assert len(_sizes(groups[liver.lesion.label])) == 4


# --------------------------------------------------------------------------- pages
@pytest.fixture
def clinician(client, db):
    client.force_login(UserFactory(groups=["clinician"]))
    return client


def _row(page: str, marker: str) -> str:
    return re.search(rf"<tr[^>]*{marker}[^>]*>(.*?)</tr>", page, re.S).group(1)


@pytest.mark.django_db
def test_the_patient_page_says_seen_size_not_assessable_and_the_chart_leaves_a_gap(rows, clinician):
    page = clinician.get(reverse("patients:detail", args=[rows.alice.pk])).content.decode()
    row = _row(page, f'data-measurement="{rows.cut.pk}"')
    assert PAGE_NOTE in row
    assert "23.7" not in row and "4.32" not in row and "18.3" not in row

    timeline = patient_timeline(pk=rows.alice.pk)
    (track,) = [t for t in timeline.lesions if t.label == "Liver 7"]
    cut = next(p for p in track.points if p.measurement_pk == rows.cut.pk)
    assert math.isnan(cut.volume_ml) and math.isnan(cut.longest_diameter_mm)
    assert cut.size_note == PAGE_NOTE
    (trace,) = [
        d for d in lesion_volume_figure(timeline=timeline)["data"] if "Liver 7" in d["name"]
    ]
    assert trace["y"] == [14.2, None]  # a gap at the follow-up, never the cut 4.3 ml


@pytest.mark.django_db
def test_the_viewer_says_seen_size_not_assessable_and_which_edge(clinician):
    patient = PatientFactory(patient_id="CUT-VIEW")
    baseline = processed(patient, dt.date(2024, 1, 10), candidates=1)
    follow_up = processed(patient, dt.date(2024, 4, 10), candidates=1)
    lesion = LesionFactory(patient=patient, label="Liver 1", organ="liver")
    LesionMeasurementFactory(lesion=lesion, study=baseline, status="new",
                             longest_diameter_mm=30.5, volume_ml=14.2)  # fmt: skip
    cut = _cut(lesion, follow_up, edges_reached=["field_of_view"])
    page = clinician.get(
        reverse("lesions:viewer", args=[patient.pk]), {"study": follow_up.pk}
    ).content.decode()
    row = _row(page, f'id="follow_up-{cut.pk}"')
    assert "seen, size not assessable (reaches the edge of the field of view)" in row
    assert "23.7" not in row and "4.32" not in row and "18.3" not in row
