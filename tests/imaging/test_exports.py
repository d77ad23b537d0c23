"""``export_measurements``: the published columns then the later ones, values in force,
resolved and not-found rows, audit."""

import csv
import datetime as dt
import io
import json

import pytest
from django.core.management import CommandError, call_command

from analytics.layouts import MEASUREMENT_COLUMNS, MEASUREMENT_EXTRA_COLUMNS
from imaging.models import LesionMeasurement
from patients.models import AuditEvent
from tests.imaging.factories import LesionFactory, LesionMeasurementFactory, StudyFactory
from tests.patients.factories import PatientFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def timeline():
    patient = PatientFactory(patient_id="MRN-7")
    baseline = StudyFactory(patient=patient, study_date=dt.date(2024, 1, 10))
    follow_up = StudyFactory(patient=patient, study_date=dt.date(2024, 4, 10))
    lesion = LesionFactory(patient=patient, label="Liver 1")
    LesionMeasurementFactory(lesion=lesion, study=baseline, status="new", is_target=True)
    LesionMeasurementFactory(
        lesion=lesion,
        study=follow_up,
        volume_ml=0.0,
        longest_diameter_mm=0.0,
        short_axis_mm=0.0,
        status=LesionMeasurement.Status.RESOLVED,
    )
    missed = LesionFactory(patient=patient, label="Liver 2")
    LesionMeasurementFactory(lesion=missed, study=baseline, status="new")
    LesionMeasurementFactory(
        lesion=missed,
        study=follow_up,
        volume_ml=0.0,
        longest_diameter_mm=0.0,
        short_axis_mm=0.0,
        status=LesionMeasurement.Status.NOT_FOUND,
        finding_state=LesionMeasurement.FindingState.NOT_FOUND,
        state_reason="not found at this study",
    )
    edited = LesionFactory(patient=patient, label="Right lung 1", organ="lung")
    LesionMeasurementFactory(
        lesion=edited,
        study=follow_up,
        status="new",
        longest_diameter_mm=12.0,
        override_longest_diameter_mm=14.5,
        review_state="edited",
        review_reason="boundary includes a vessel",
    )
    PatientFactory(patient_id="OTHER")
    return patient


def _export(*args):
    out, err = io.StringIO(), io.StringIO()
    call_command("export_measurements", *args, stdout=out, stderr=err)
    return out.getvalue()


def test_csv_has_the_published_columns_and_one_row_per_lesion_per_study(timeline):
    rows = list(csv.DictReader(io.StringIO(_export("--format", "csv"))))

    # The published columns first, unchanged; later columns after them.
    assert tuple(rows[0].keys()) == (*MEASUREMENT_COLUMNS, *MEASUREMENT_EXTRA_COLUMNS)
    assert len(rows) == 5
    resolved = [r for r in rows if r["status"] == "resolved"]
    assert len(resolved) == 1 and float(resolved[0]["volume_ml"]) == 0.0
    # A lesion not found is never written as 0 or as resolved: its sizes are empty.
    missed = next(r for r in rows if r["status"] == "not_found")
    assert missed["volume_ml"] == missed["longest_diameter_mm"] == missed["short_axis_mm"] == ""
    assert missed["finding_state"] == "not_found" and missed["state_reason"]
    edited = next(r for r in rows if r["lesion_label"] == "Right lung 1")
    assert float(edited["longest_diameter_mm"]) == 14.5  # the radiologist's value is in force
    assert edited["review_state"] == "edited"


def test_json_export_for_one_patient_is_audited(timeline):
    rows = json.loads(_export("--format", "json", "--patient", "MRN-7"))

    assert {r["patient_id"] for r in rows} == {"MRN-7"}
    assert rows[0]["study_date"].count("-") == 2
    event = AuditEvent.objects.get(action="measurements.export")
    assert event.patient == timeline
    assert event.username.startswith("cli:")


def test_unknown_patient_is_a_usage_error(timeline):
    with pytest.raises(CommandError, match="no patient"):
        _export("--patient", "NOPE")
