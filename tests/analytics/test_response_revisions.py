"""What an equivocal new lesion does to what people and systems are told, end to end:
the patient page says what counts ("PD pending confirmation of one equivocal new lesion,
first seen on <date>"); when a later study confirms it, the earlier study's category is
revised to PD (dated from the first sighting) with the revision and its reason on the
page, in export_responses and in the FHIR DiagnosticReport; the best overall response is
on the page, in the export and in FHIR. (The DICOM SR side, a new SR naming the one it
replaces once a finding's state changes, is `tests.interop.test_dicom_export_service`.)
"""

from __future__ import annotations

import csv
import datetime as dt
import io

import numpy as np
import pytest
from django.core.management import call_command
from django.urls import reverse

from analytics.fhir.build import patient_resources_build
from analytics.fhir.codes import PROGRESSION_DATED_FROM_EXTENSION, RESPONSE_REVISION_EXTENSION
from analytics.fhir.ids import response_fhir_id
from analytics.fhir.record import patient_record_load
from analytics.lesions.tracking.track import patient_track
from imaging.models import Registration, Segmentation
from tests.imaging.factories import SeriesFactory, StudyFactory
from tests.imaging.test_review import (
    BASELINE_DATE,
    LIVER,
    LUNG,
    SHIFT,
    candidate,
    patient_with_studies,
    responses,
)
from tests.patients.factories import UserFactory

pytestmark = pytest.mark.django_db

FAR = np.array([-40.0, -30.0, -200.0])
PLAN = [
    [(1, "liver", LIVER, 14.0, 32.0), (2, "lung", LUNG, 1.8, 16.0)],
    [(1, "liver", LIVER, 9.0, 27.0), (2, "lung", LUNG, 1.2, 14.0), (6, "liver", FAR, 0.9, 12.0)],
]
#: The third study: the new lesion seen again, larger.
THIRD = [(1, "liver", LIVER, 9.0, 27.0), (2, "lung", LUNG, 1.2, 14.0), (6, "liver", FAR, 1.6, 15.0)]


def _third_study(patient, day: int) -> None:
    study = StudyFactory(patient=patient, study_date=BASELINE_DATE + dt.timedelta(days=day))
    series = SeriesFactory(study=study, state="processed")
    study.chosen_series = series
    study.save()
    Segmentation.objects.create(
        series=series,
        mask_path=f"masks/{patient.patient_id}-2.nii.gz",
        model_name="test",
        model_version="1",
        lesions=[candidate(k, o, c + SHIFT, v, d) for k, o, c, v, d in THIRD],
    )
    matrix = np.eye(4)
    matrix[:3, 3] = SHIFT
    Registration.objects.create(
        moving_series=series,
        fixed_series=patient.studies.order_by("study_date").first().chosen_series,
        backend="test",
        matrix_fixed_to_moving=matrix.tolist(),
    )


def _page(client, patient) -> str:
    client.force_login(UserFactory(groups=["clinician"]))
    return client.get(reverse("patients:detail", args=[patient.pk])).content.decode()


def _export(patient) -> list[dict[str, str]]:
    out = io.StringIO()
    call_command(
        "export_responses", "--patient", patient.patient_id, stdout=out, stderr=io.StringIO()
    )
    return list(csv.DictReader(io.StringIO(out.getvalue())))


def _report(patient, study) -> dict:
    resources = patient_resources_build(record=patient_record_load(pk=patient.pk))
    return next(
        r for r in resources.reports if r["id"] == response_fhir_id(study.study_instance_uid)
    )


def test_pending_then_confirmed_is_revised_on_the_page_in_the_export_and_in_fhir(client):
    patient = patient_with_studies("REV-1", PLAN)
    follow_up = responses(patient)[1]
    seen = follow_up.study.study_date  # 2024-04-10
    # Seen once at 12 mm: equivocal, pending; the page says what counts and since when.
    assert follow_up.recist_response == "SD" and follow_up.pending_new_lesions == 1
    page = _page(client, patient)
    assert "PD pending confirmation of one equivocal new lesion: Liver 2 (12.0 mm), " in page
    assert f"first seen on {seen}" in page
    assert 'data-testid="best-response"' in page

    _third_study(patient, day=182)
    patient_track(patient=patient, trigger="the study of 2024-07-10 was processed")

    follow_up = responses(patient)[1]
    assert follow_up.recist_response == "PD" and follow_up.progression_dated_from == seen
    (revision,) = [r for r in follow_up.revisions if r["field"] == "recist_response"]
    assert (revision["from"], revision["to"]) == ("SD", "PD")
    assert revision["reason"].startswith("the study of 2024-07-10 was processed; now: ")
    assert f"new lesion: Liver 2 (first seen on {seen})" in revision["reason"]

    page = _page(client, patient)
    assert "Revised recist SD → PD" in page and "the study of 2024-07-10 was processed" in page

    rows = _export(patient)
    assert [r["recist_response"] for r in rows] == ["", "PD", "PD"]
    assert '"from": "SD"' in rows[1]["revisions"] and rows[1]["progression_dated_from"] == str(seen)
    # PD is terminal: the best overall response is PD from the first sighting, everywhere.
    assert {r["best_overall_response"] for r in rows} == {"PD"}
    assert {r["best_overall_response_date"] for r in rows} == {str(seen)}

    report = _report(patient, follow_up.study)
    revised = [
        {e["url"]: e.get("valueString") for e in extension["extension"]}
        for extension in report["extension"]
        if extension["url"] == RESPONSE_REVISION_EXTENSION
    ]
    (parts,) = [p for p in revised if p["field"] == "RECIST 1.1"]
    assert (parts["from"], parts["to"]) == ("SD", "PD") and "processed" in parts["reason"]
    (dated,) = [e for e in report["extension"] if e["url"] == PROGRESSION_DATED_FROM_EXTENSION]
    assert dated["valueDate"] == str(seen)
    assert report["conclusionCode"][0]["coding"][0]["code"] == "PD"
    resources = patient_resources_build(record=patient_record_load(pk=patient.pk))
    (best,) = resources.best_responses
    assert best["valueCodeableConcept"]["coding"][0]["code"] == "PD"
    assert best["effectiveDateTime"] == str(seen)
