"""iRECIST switched on by an immune checkpoint inhibitor in an EHR import: the responses
are recomputed with iRECIST beside RECIST 1.1, the reason and the file are kept, an
unrelated drug changes nothing, and a clinician's decision is never overridden."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from analytics.lesions.review import irecist_ehr
from analytics.lesions.review.irecist import irecist_set
from analytics.models import BestOverallResponse, ResponseSettings
from imaging.models import ReviewEvent
from patients.ehr import fhir_bundle as service
from patients.ehr.checkpoint_inhibitors import ATC_SYSTEMS, RXNORM_SYSTEM
from patients.ehr.importer import ehr_import
from patients.models import PatientMedication
from tests.imaging.test_review import patient_with_studies, responses
from tests.imaging.test_review_findings import PLAN
from tests.patients.factories import UserFactory

pytestmark = pytest.mark.django_db

PEMBROLIZUMAB = {"coding": [{"system": RXNORM_SYSTEM, "code": "1547545"}], "text": "Keytruda"}
METFORMIN = {"coding": [{"system": ATC_SYSTEMS[0], "code": "A10BA02", "display": "metformin"}]}
REASON = "iRECIST on: pembrolizumab started 2024-03-01 (EHR import meds.json)"


@pytest.fixture
def patient():
    return patient_with_studies("IMMUNO-1", PLAN)


def medication_bundle(mrn, medication, *, status="active", when="2024-03-01"):
    patient = {
        "resourceType": "Patient",
        "identifier": [{"system": service.MRN_SYSTEM, "value": mrn}],
    }
    statement = {
        "resourceType": "MedicationStatement",
        "status": status,
        "subject": {"reference": "urn:uuid:p"},
        "medicationCodeableConcept": medication,
        "effectiveDateTime": when,
    }
    entries = [{"fullUrl": "urn:uuid:p", "resource": patient}, {"resource": statement}]
    return json.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries}).encode()


def page(client, patient):
    client.force_login(UserFactory(groups=["radiologist"]))
    return client.get(reverse("patients:detail", args=[patient.pk])).content.decode()


def irecist_categories(patient):
    return [r.irecist_response for r in responses(patient)]


def test_a_pembrolizumab_statement_switches_irecist_on_with_its_reason(patient, client):
    assert irecist_categories(patient) == ["", "", ""]
    assert '<th scope="col">iRECIST</th>' not in page(client, patient)

    result = ehr_import(
        path_or_bytes=medication_bundle("IMMUNO-1", PEMBROLIZUMAB), source_name="meds.json"
    )

    setting = ResponseSettings.objects.get(patient=patient)
    assert (setting.irecist, setting.reason, setting.set_by) == (True, REASON, None)
    assert irecist_categories(patient) == ["", "iSD", "NE"]  # recomputed at once
    assert BestOverallResponse.objects.get(patient=patient).irecist == "iSD"
    event = ReviewEvent.objects.get(patient=patient, action="irecist")
    assert (event.user, event.reason, event.before["irecist"]) == (None, REASON, False)
    assert event.after["medication"]["checkpoint_inhibitor"] == "pembrolizumab"
    assert [r["irecist_response"] for r in event.after["responses"]] == ["", "iSD", "NE"]
    assert result.notes == [f"patient IMMUNO-1: {REASON}"]
    html = page(client, patient)
    assert '<th scope="col">iRECIST</th>' in html and REASON in html

    again = ehr_import(
        path_or_bytes=medication_bundle("IMMUNO-1", PEMBROLIZUMAB), source_name="meds.json"
    )
    assert again.notes == [] and ReviewEvent.objects.filter(action="irecist").count() == 1  # fmt: skip


def test_an_unrelated_drug_or_one_not_taken_switches_nothing(patient, client):
    ehr_import(path_or_bytes=medication_bundle("IMMUNO-1", METFORMIN))
    ehr_import(path_or_bytes=medication_bundle("IMMUNO-1", PEMBROLIZUMAB, status="not-taken"))
    ehr_import(path_or_bytes=medication_bundle("IMMUNO-1", PEMBROLIZUMAB, status="intended", when="2024-05-01"))  # fmt: skip

    assert PatientMedication.objects.filter(patient=patient).count() == 3
    assert not ResponseSettings.objects.filter(patient=patient).exists()
    assert irecist_categories(patient) == ["", "", ""]
    assert '<th scope="col">iRECIST</th>' not in page(client, patient)


def test_a_clinicians_explicit_off_is_not_overridden_by_a_later_import(patient):
    clinician = UserFactory(groups=["clinician"])
    irecist_set(
        user=clinician, patient=patient, enabled=False, reason="trial reads RECIST 1.1 only"
    )

    result = ehr_import(
        path_or_bytes=medication_bundle("IMMUNO-1", PEMBROLIZUMAB), source_name="meds.json"
    )

    setting = ResponseSettings.objects.get(patient=patient)
    assert (setting.irecist, setting.set_by, setting.reason) == (
        False,
        clinician,
        "trial reads RECIST 1.1 only",
    )
    assert irecist_categories(patient) == ["", "", ""]
    assert len(result.notes) == 1
    assert result.notes[0].startswith(
        "patient IMMUNO-1: iRECIST left off although pembrolizumab started 2024-03-01: switched "
        "off by a clinician on "
    ) and "(trial reads RECIST 1.1 only)" in result.notes[0]  # fmt: skip
    assert list(ReviewEvent.objects.filter(action="irecist").values_list("user", flat=True)) == [
        clinician.pk
    ]


def test_an_import_never_switches_off_and_a_clinicians_later_off_stands(patient):
    ehr_import(path_or_bytes=medication_bundle("IMMUNO-1", PEMBROLIZUMAB), source_name="meds.json")
    ehr_import(path_or_bytes=medication_bundle("IMMUNO-1", METFORMIN, when="2024-06-01"))
    assert ResponseSettings.objects.get(patient=patient).irecist  # a new drug switches nothing off

    irecist_set(
        user=UserFactory(groups=["clinician"]), patient=patient, enabled=False, reason="stopped"
    )
    nivolumab = {"coding": [{"system": ATC_SYSTEMS[0], "code": "L01FF01"}]}
    result = ehr_import(path_or_bytes=medication_bundle("IMMUNO-1", nivolumab, when="2024-07-01"))
    assert not ResponseSettings.objects.get(patient=patient).irecist
    assert "iRECIST left off although pembrolizumab started 2024-03-01" in result.notes[0]


def test_a_medications_csv_row_switches_irecist_on_naming_the_file(patient):
    csv = (
        "patient_id,code_system,code,name,start_date\n"
        "IMMUNO-1,ATC,L01FF01,,2024-02-15\n"
        "IMMUNO-1,ATC,L01FX04,Yervoy,2024-02-15\n"
    )
    result = ehr_import(path_or_bytes=csv.encode(), source_name="medications.csv")

    setting = ResponseSettings.objects.get(patient=patient)
    assert setting.irecist and setting.reason == (
        "iRECIST on: nivolumab started 2024-02-15 (EHR import medications.csv)"
    )
    assert result.notes == [f"patient IMMUNO-1: {setting.reason}"]
    assert irecist_categories(patient) == ["", "iSD", "NE"]


def test_a_failure_while_switching_leaves_nothing_of_the_import(patient, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("rebuild failed")

    monkeypatch.setattr(irecist_ehr, "patient_recompute", fail)
    with pytest.raises(RuntimeError, match="rebuild failed"):
        ehr_import(path_or_bytes=medication_bundle("IMMUNO-1", PEMBROLIZUMAB))
    assert not PatientMedication.objects.exists()
    assert not ResponseSettings.objects.filter(patient=patient).exists()
