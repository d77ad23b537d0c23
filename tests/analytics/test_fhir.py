"""FHIR R4 resources: each validated with fhir.resources, codes checked, and /fhir/ reads."""

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient as FHIRPatient
from fhir.resources.R4B.riskassessment import RiskAssessment

from analytics.fhir.build import patient_resources_build
from analytics.fhir.bundles import fhir_transaction_build
from analytics.fhir.codes import DCM, SCT, UCUM
from analytics.fhir.ids import (
    lesion_fhir_id,
    measurement_fhir_id,
    patient_pk_from_fhir_id,
    response_fhir_id,
)
from analytics.fhir.record import patient_record_load
from analytics.fhir.validation import FHIRBuildError, fhir_resource_validate
from analytics.models import ResponseAssessment, RiskScore
from imaging.models import LesionMeasurement
from patients.ehr.fhir_bundle import MRN_SYSTEM
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
    uid = rows.lesion.tracking_uid
    followup_id = measurement_fhir_id(uid, rows.followup.study_instance_uid)
    assert sorted(g["id"] for g in groups) == sorted(
        [measurement_fhir_id(uid, rows.baseline.study_instance_uid), followup_id]
    )  # the rejected false positive is not sent
    group = next(g for g in groups if g["id"] == followup_id)
    assert _coding(group["code"], DCM)[0]["code"] == "125007"
    components = {c["code"]["coding"][0]["code"]: c for c in group["component"]}
    assert components["112039"]["valueString"] == "Liver 1"
    assert components["112040"]["valueString"] == rows.lesion.tracking_uid
    assert group["focus"] == [{"reference": f"BodyStructure/{lesion_fhir_id(uid)}"}]
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
    report = next(
        r
        for r in resources.reports
        if r["id"] == response_fhir_id(rows.followup.study_instance_uid)
    )
    assert report["conclusionCode"][0]["coding"][0]["code"] == "PR"
    assert "-35.0% from baseline" in report["conclusion"]
    group_id = measurement_fhir_id(rows.lesion.tracking_uid, rows.followup.study_instance_uid)
    assert report["result"] == [{"reference": f"Observation/{group_id}"}]
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
        FHIRBuildError,
        match=r"Observation/x is not valid FHIR \(checked against the R4B "
        r"models\): code: Field required",
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
    # Observations: 2 measurement groups of 4 resources each, and the imported lab.
    [("Observation", 9), ("DiagnosticReport", 2), ("RiskAssessment", 1)],
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


# -- ids that survive re-tracking (finding 4) ---------------------------------------------
def _ids(resources) -> set[str]:
    return {f"{r['resourceType']}/{r['id']}" for r in resources.all()}


def test_ids_survive_retracking_which_rebuilds_measurement_and_response_rows(rows, resources):

    before = _ids(resources)
    # What tracking does: delete every measurement and response row and create new ones.
    kept = []
    for m in LesionMeasurement.objects.filter(lesion__patient=rows.alice).order_by("pk"):
        values = {f.attname: getattr(m, f.attname) for f in m._meta.concrete_fields}
        values.pop("id")
        kept.append(values)
        m.delete()
    for values in kept:
        LesionMeasurement.objects.create(**values)
    for a in ResponseAssessment.objects.filter(patient=rows.alice).order_by("pk"):
        a.pk = None
        ResponseAssessment.objects.filter(study=a.study).delete()
        a.save()
    after = _ids(patient_resources_build(record=patient_record_load(pk=rows.alice.pk)))
    assert after == before
    assert f"BodyStructure/{lesion_fhir_id(rows.lesion.tracking_uid)}" in after
    assert f"DiagnosticReport/{response_fhir_id(rows.followup.study_instance_uid)}" in after


def test_ids_are_valid_fhir_ids_under_64_characters(resources):
    import re

    for ref in _ids(resources):
        assert re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", ref.split("/")[1]), ref


# -- preliminary until reviewed (finding 11) ----------------------------------------------
def _status_by_study(resources, rows):
    return {
        study: next(
            r["status"]
            for r in resources.reports
            if r["id"] == response_fhir_id(study.study_instance_uid)
        )
        for study in (rows.baseline, rows.followup)
    }


def test_reports_and_risk_are_final_only_when_every_measurement_was_reviewed(rows, resources):
    # Fixture: both measurements reviewed (accepted, edited).
    assert set(_status_by_study(resources, rows).values()) == {"final"}
    assert resources.risk_assessments[0]["status"] == "final"

    rows.at_followup.review_state = "pending"
    rows.at_followup.save()
    pending = patient_resources_build(record=patient_record_load(pk=rows.alice.pk))
    assert _status_by_study(pending, rows) == {
        rows.baseline: "final",  # the baseline rests on the reviewed baseline measurement
        rows.followup: "preliminary",
    }
    assert pending.risk_assessments[0]["status"] == "preliminary"

    rows.at_followup.review_state = "accepted"
    rows.at_followup.save()
    rows.at_baseline.review_state = "pending"
    rows.at_baseline.save()
    baseline_pending = patient_resources_build(record=patient_record_load(pk=rows.alice.pk))
    # The follow-up's percent change is against the baseline, so it is preliminary too.
    assert set(_status_by_study(baseline_pending, rows).values()) == {"preliminary"}
    group_statuses = {o["status"] for o in baseline_pending.observations}
    assert group_statuses == {"final", "preliminary"}


# -- FHIR validation models (finding 19) --------------------------------------------------
def test_resources_are_checked_against_r4b_and_say_so_because_no_r4_package_exists():
    import importlib.util

    import analytics.fhir.validation as fhir_module

    # If fhir.resources ever ships R4 models, validate against them and drop this.
    assert importlib.util.find_spec("fhir.resources.R4") is None
    assert fhir_module.FHIR_VALIDATION_PACKAGE == "fhir.resources.R4B"
    assert fhir_module.get_fhir_model_class.__module__.startswith("fhir.resources.R4B")
    assert "no R4 package" in fhir_module.__doc__ and "R4B" in fhir_module.__doc__
    with pytest.raises(FHIRBuildError, match="checked against the R4B models"):
        fhir_resource_validate({"resourceType": "Observation", "id": "x", "status": "final"})


# -- errors and search parameters (finding 12) --------------------------------------------
def test_a_resource_that_does_not_build_is_a_500_operation_outcome(fhir, rows):

    ResponseAssessment.objects.filter(pk=rows.response.pk).update(recist_response="XX")
    response = fhir.get(f"/fhir/Patient/patient-{rows.alice.pk}/$everything")
    assert response.status_code == 500
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["code"] == "exception"
    assert "'XX' is not one of" in body["issue"][0]["diagnostics"]


def test_an_unexpected_error_is_a_500_operation_outcome_without_its_text(fhir, rows, caplog):

    RiskScore.objects.filter(pk=rows.score.pk).update(tier="Smith^Alice")  # no such tier
    response = fhir.get("/fhir/RiskAssessment", {"patient": f"patient-{rows.alice.pk}"})
    assert response.status_code == 500
    issue = response.json()["issue"][0]
    assert issue["code"] == "exception"
    assert "Smith" not in issue["diagnostics"]
    assert "Smith" not in caplog.text


def test_unsupported_search_parameters_are_ignored_unless_strict_handling_is_asked(fhir, rows):
    """R4 search: a server ignores what it does not support (and leaves it out of the
    self link), unless the client sends Prefer: handling=strict."""
    patient = f"patient-{rows.alice.pk}"
    lenient = fhir.get("/fhir/Observation", {"patient": patient, "date": "ge2024-03-01"})
    assert lenient.status_code == 200
    body = lenient.json()
    assert body["link"][0]["url"].endswith(f"/fhir/Observation?patient={patient}")
    (outcome,) = [e for e in body["entry"] if e["search"]["mode"] == "outcome"]
    assert outcome["resource"]["issue"][0]["severity"] == "warning"
    assert "date" in outcome["resource"]["issue"][0]["diagnostics"]
    refused = fhir.get(
        "/fhir/Observation",
        {"patient": patient, "date": "ge2024-03-01"},
        HTTP_PREFER="handling=strict",
    )
    assert refused.status_code == 400
    issue = refused.json()["issue"][0]
    assert issue["code"] == "not-supported"
    assert "date" in issue["diagnostics"] and "patient" in issue["diagnostics"]
    everything = fhir.get(
        f"/fhir/Patient/{patient}/$everything", {"_count": "1", "_since": "x", "_summary": "true"}
    )
    assert everything.status_code == 200 and len(everything.json()["entry"]) == 2  # + outcome
    (ignored,) = [e for e in everything.json()["entry"] if e["search"]["mode"] == "outcome"]
    said = ignored["resource"]["issue"][0]["diagnostics"]
    assert "_since" in said and "_summary" in said
    # The format override still works; the self link is the query applied.
    ok = fhir.get("/fhir/Observation", {"patient": patient, "_format": "json"})
    assert ok.status_code == 200
    assert ok.json()["link"][0]["url"].endswith(f"/fhir/Observation?patient={patient}&_format=json")


def test_metadata_is_a_valid_capability_statement_of_what_is_served(client):
    """`GET /fhir/metadata` needs no login (no patient data) and lists exactly the
    interactions the endpoints answer, validated with fhir.resources."""
    response = client.get("/fhir/metadata")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/fhir+json")
    statement = response.json()
    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["fhirVersion"] == "4.0.1" and statement["kind"] == "instance"
    resources = {r["type"]: r for r in statement["rest"][0]["resource"]}
    assert set(resources) == {
        "Patient", "ImagingStudy", "BodyStructure", "Observation", "DiagnosticReport",
        "RiskAssessment", "Device", "AuditEvent",
    }  # fmt: skip
    for kind, entry in resources.items():
        assert {"code": "read"} in entry["interaction"], kind
    assert resources["Patient"]["operation"][0]["name"] == "everything"
    assert {p["name"] for p in resources["Patient"]["searchParam"]} == {
        "identifier", "_count", "_offset",
    }  # fmt: skip
    for kind in ("Observation", "DiagnosticReport", "RiskAssessment"):
        assert {"patient", "subject", "_count"} <= {
            p["name"] for p in resources[kind]["searchParam"]
        }
    assert "Device" not in {k for k, r in resources.items() if "searchParam" in r}
    # The base answers the same statement; XML is not served.
    assert client.get("/fhir/").json()["resourceType"] == "CapabilityStatement"
    xml = client.get("/fhir/metadata?_format=xml")
    assert xml.status_code == 406 and xml.json()["resourceType"] == "OperationOutcome"


def test_a_score_with_no_imaging_reviewed_is_preliminary_and_carries_its_notes(rows):
    # Bob has a score and no measurement at all: nothing a radiologist signed off, so the
    # RiskAssessment cannot be final, and the caveats of the score go with it.
    note = "no value at this landmark, so the model filled in its training cohort's: cea_slope"
    RiskScore.objects.filter(patient=rows.bob).update(explanation={"notes": [note]})
    built = patient_resources_build(record=patient_record_load(pk=rows.bob.pk))
    (risk,) = built.risk_assessments
    assert risk["status"] == "preliminary"
    assert note in [n["text"] for n in risk["note"]]
