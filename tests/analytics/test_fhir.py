"""FHIR R4 resources: each validated with fhir.resources, codes checked, and /fhir/ reads."""

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient as FHIRPatient
from fhir.resources.R4B.riskassessment import RiskAssessment

from analytics.fhir import (
    DCM,
    MRN_SYSTEM,
    SCT,
    UCUM,
    FHIRBuildError,
    fhir_resource_validate,
    fhir_transaction_build,
    patient_pk_from_fhir_id,
    patient_record_load,
    patient_resources_build,
)
from patients.models import AuditEvent
from tests.api.helpers import rows_make
from tests.patients.factories import UserFactory

pytestmark = pytest.mark.django_db

# Required bindings fhir.resources does not check (it checks structure, not value sets).
OBSERVATION_STATUSES = {"registered", "preliminary", "final", "amended", "corrected",
                        "cancelled", "entered-in-error", "unknown"}  # fmt: skip
REPORT_STATUSES = {"registered", "partial", "preliminary", "final", "amended", "corrected",
                   "appended", "cancelled", "entered-in-error", "unknown"}  # fmt: skip
IMAGING_STUDY_STATUSES = {"registered", "available", "cancelled", "entered-in-error", "unknown"}
RISK_STATUSES = OBSERVATION_STATUSES
GENDERS = {"male", "female", "other", "unknown"}


@pytest.fixture
def rows():
    return rows_make()


@pytest.fixture
def resources(rows):
    return patient_resources_build(record=patient_record_load(pk=rows.alice.pk))


def _coding(concept, system):
    return [c for c in concept.get("coding", []) if c["system"] == system]


def test_every_resource_validates_and_uses_codes_from_its_value_sets(resources):
    models = {
        "Patient": FHIRPatient,
        "ImagingStudy": ImagingStudy,
        "Observation": Observation,
        "DiagnosticReport": DiagnosticReport,
        "RiskAssessment": RiskAssessment,
    }
    for resource in resources.all():
        model = models.get(resource["resourceType"])
        if model is not None:
            model.model_validate(resource)
    assert resources.patient["gender"] in GENDERS
    assert {s["status"] for s in resources.imaging_studies} <= IMAGING_STUDY_STATUSES
    assert {o["status"] for o in resources.observations} <= OBSERVATION_STATUSES
    assert {r["status"] for r in resources.reports} <= REPORT_STATUSES
    assert {r["status"] for r in resources.risk_assessments} <= RISK_STATUSES
    Bundle.model_validate(fhir_transaction_build(resources=resources.all()))


def test_patient_carries_the_mrn_name_sex_and_birth_date(rows, resources):
    patient = resources.patient
    assert patient["id"] == f"patient-{rows.alice.pk}"
    assert patient["identifier"][0]["system"] == MRN_SYSTEM
    assert patient["identifier"][0]["value"] == "MRN-A"
    assert patient["name"][0]["family"] == "Smith"
    assert patient["name"][0]["given"] == ["Alice"]
    assert (patient["gender"], patient["birthDate"]) == ("female", "1960-05-17")


def test_imaging_studies_carry_uids_series_and_instance_counts(rows, resources):
    by_id = {s["id"]: s for s in resources.imaging_studies}
    followup = by_id[f"study-{rows.followup.pk}"]
    assert followup["identifier"][0] == {
        "system": "urn:dicom:uid",
        "value": f"urn:oid:{rows.followup.study_instance_uid}",
    }
    assert followup["started"] == "2024-04-10"
    assert (followup["numberOfSeries"], followup["numberOfInstances"]) == (1, 3)
    assert followup["series"][0]["modality"] == {"system": DCM, "code": "CT"}
    baseline = by_id[f"study-{rows.baseline.pk}"]
    assert baseline["identifier"][1]["value"] == "A1"  # accession number


def test_one_measurement_group_per_lesion_and_study_with_tracking_ids_and_ucum(rows, resources):
    groups = [o for o in resources.observations if _coding(o["code"], DCM)]
    assert sorted(g["id"] for g in groups) == sorted(
        [f"measurement-{rows.at_baseline.pk}", f"measurement-{rows.at_followup.pk}"]
    )  # the rejected false positive is not sent
    group = next(g for g in groups if g["id"] == f"measurement-{rows.at_followup.pk}")
    assert _coding(group["code"], DCM)[0]["code"] == "125007"
    components = {c["code"]["coding"][0]["code"]: c for c in group["component"]}
    assert components["112039"]["valueString"] == "Liver 1"
    assert components["112040"]["valueString"] == rows.lesion.tracking_uid
    assert group["focus"] == [{"reference": f"BodyStructure/lesion-{rows.lesion.pk}"}]
    assert group["derivedFrom"] == [{"reference": f"ImagingStudy/study-{rows.followup.pk}"}]
    assert group["status"] == "final"  # edited by a radiologist

    members = {o["id"]: o for o in resources.observations}
    values = {}
    for ref in group["hasMember"]:
        member = members[ref["reference"].split("/")[1]]
        (code,) = _coding(member["code"], SCT)
        quantity = member["valueQuantity"]
        assert quantity["system"] == UCUM and quantity["code"] == quantity["unit"]
        values[code["code"]] = (quantity["value"], quantity["code"])
    assert values == {
        "118565006": (5.0, "mL"),
        "103339001": (19.5, "mm"),  # the radiologist's override, not the automated 25
        "103340004": (15.0, "mm"),
    }
    lesion = resources.lesions[0]
    assert {i["type"]["coding"][0]["code"]: i["value"] for i in lesion["identifier"]} == {
        "112039": "Liver 1",
        "112040": f"urn:oid:{rows.lesion.tracking_uid}",
    }


def test_response_report_and_risk_assessment(rows, resources):
    report = next(r for r in resources.reports if r["id"] == f"response-{rows.response.pk}")
    assert report["conclusionCode"][0]["coding"][0]["code"] == "PR"
    assert "-35.0% from baseline" in report["conclusion"]
    assert report["result"] == [{"reference": f"Observation/measurement-{rows.at_followup.pk}"}]
    assert report["imagingStudy"] == [{"reference": f"ImagingStudy/study-{rows.followup.pk}"}]

    (risk,) = resources.risk_assessments
    prediction = risk["prediction"][0]
    assert prediction["qualitativeRisk"]["coding"][0]["code"] == "high"
    assert prediction["relativeRisk"] == pytest.approx(2.2255, abs=1e-4)  # exp(0.8)
    extensions = {e["url"].rsplit("/", 1)[1]: e for e in risk["extension"]}
    assert extensions["risk-score"]["valueDecimal"] == 0.8
    assert extensions["risk-model-version"]["valueString"] == f"{rows.version.pk} cox-pfs-test"
    assert "cox-pfs-test" in risk["method"]["text"]


def test_an_invalid_resource_is_refused_naming_it():
    with pytest.raises(
        FHIRBuildError, match=r"Observation/x is not valid FHIR R4: code: Field required"
    ):
        fhir_resource_validate({"resourceType": "Observation", "id": "x", "status": "final"})


def test_patient_ids_are_parsed_strictly():
    assert patient_pk_from_fhir_id("patient-12") == 12
    assert patient_pk_from_fhir_id("Patient/patient-12") == 12
    assert patient_pk_from_fhir_id("12") is None
    assert patient_pk_from_fhir_id("patient-1e3") is None


# -- /fhir/ -------------------------------------------------------------------------------
@pytest.fixture
def fhir(client):
    client.force_login(UserFactory(groups=["clinician"]))
    return client


def test_fhir_reads_need_a_login(client, rows):
    response = client.get(f"/fhir/Patient/patient-{rows.alice.pk}")
    assert response.status_code in (401, 403)
    assert response.json()["resourceType"] == "OperationOutcome"


def test_patient_read_and_everything(fhir, rows):
    response = fhir.get(f"/fhir/Patient/patient-{rows.alice.pk}")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/fhir+json")
    FHIRPatient.model_validate(response.json())

    bundle = fhir.get(f"/fhir/Patient/patient-{rows.alice.pk}/$everything").json()
    Bundle.model_validate(bundle)
    types = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert bundle["type"] == "searchset" and bundle["total"] == len(types)
    assert {"Patient", "ImagingStudy", "BodyStructure", "Observation", "DiagnosticReport",
            "RiskAssessment"} == set(types)  # fmt: skip
    assert bundle["entry"][0]["fullUrl"].endswith(f"/fhir/Patient/patient-{rows.alice.pk}")
    events = AuditEvent.objects.filter(patient=rows.alice)
    assert {e.action for e in events} == {"fhir.patient.read", "fhir.patient.everything"}


@pytest.mark.parametrize(
    "resource_type, expected",
    [("Observation", 8), ("DiagnosticReport", 2), ("RiskAssessment", 1)],
)
def test_searches_by_patient(fhir, rows, resource_type, expected):
    bundle = fhir.get(f"/fhir/{resource_type}", {"patient": f"Patient/patient-{rows.alice.pk}"})
    body = bundle.json()
    Bundle.model_validate(body)
    assert body["total"] == expected
    assert {e["resource"]["resourceType"] for e in body["entry"]} == {resource_type}
    assert AuditEvent.objects.get(action=f"fhir.{resource_type.lower()}.search").patient_id == (
        rows.alice.pk
    )
    nobody = fhir.get(f"/fhir/{resource_type}", {"subject": "patient-999999"}).json()
    assert nobody["total"] == 0


def test_fhir_errors_are_operation_outcomes(fhir, rows):
    missing = fhir.get("/fhir/Observation")
    assert missing.status_code == 400
    assert "patient=" in missing.json()["issue"][0]["diagnostics"]
    unknown = fhir.get("/fhir/Patient/patient-99999999")
    assert unknown.status_code == 404
    assert unknown.json()["issue"][0]["code"] == "not-found"
    assert fhir.get("/fhir/Patient/12").status_code == 404
