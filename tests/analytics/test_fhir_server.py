"""The FHIR server as an EHR uses it: every reference readable, patients found by MRN,
searches paged, unknown parameters ignored unless strict, JSON only, imported labs in the
record with their identifiers."""

from __future__ import annotations

import datetime as dt
import re
from urllib.parse import urlsplit

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.device import Device

from analytics.fhir.responses import fhir_response_build
from imaging.models import Segmentation
from patients.ehr.fhir_bundle import MRN_SYSTEM
from patients.models import AuditEvent, LabResult, PatientIdentifier
from tests.api.helpers import rows_make
from tests.imaging.factories import SeriesFactory
from tests.patients.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def rows():
    rows = rows_make()
    series = rows.followup.series.first() or SeriesFactory(study=rows.followup)
    segmentation = Segmentation.objects.create(
        series=series, mask_path="m.nii.gz", model_name="lesion-unet", model_version="2.1.0",
        model_sha256="ab" * 32,
    )  # fmt: skip
    rows.at_followup.segmentation = segmentation
    rows.at_followup.save()
    LabResult.objects.create(
        patient=rows.alice, loinc_code="2039-6", comparator="<", value=0.5, unit="ng/mL",
        observed_at=dt.datetime(2024, 5, 1, 9, tzinfo=dt.UTC),
        identifiers=[{"system": "https://lab.example/id", "value": "L-77"}],
    )  # fmt: skip
    return rows


@pytest.fixture
def fhir(client):
    client.force_login(UserFactory(groups=["clinician"]))
    return client


def _path(url: str) -> str:
    return urlsplit(url).path


def _references(value) -> list[str]:
    if isinstance(value, dict):
        found = [value["reference"]] if isinstance(value.get("reference"), str) else []
        return found + [r for v in value.values() for r in _references(v)]
    if isinstance(value, list):
        return [r for v in value for r in _references(v)]
    return []


def test_every_full_url_and_reference_in_everything_can_be_read(fhir, rows):
    bundle = fhir.get(f"/fhir/Patient/patient-{rows.alice.pk}/$everything", {"_count": 500}).json()
    Bundle.model_validate(bundle)
    resources = {
        f"{e['resource']['resourceType']}/{e['resource']['id']}": e
        for e in bundle["entry"]
        if e["search"]["mode"] == "match"
    }
    assert {"Device", "BodyStructure", "ImagingStudy", "RiskAssessment"} <= {
        key.split("/")[0] for key in resources
    }
    for key, entry in resources.items():
        answer = fhir.get(_path(entry["fullUrl"]))
        assert answer.status_code == 200, key
        assert answer.json() == entry["resource"], key
    references = {r for e in resources.values() for r in _references(e["resource"])}
    assert references, "the resources refer to each other"
    for reference in references:
        assert reference in resources, f"{reference} is not in $everything"
        assert fhir.get(f"/fhir/{reference}").status_code == 200, reference
    Device.model_validate(
        fhir.get(f"/fhir/{next(r for r in resources if r.startswith('Device/'))}").json()
    )
    reads = {e.action for e in AuditEvent.objects.filter(patient=rows.alice)}
    assert {
        "fhir.observation.read",
        "fhir.bodystructure.read",
        "fhir.diagnosticreport.read",
    } <= reads


@pytest.mark.parametrize(
    "path",
    [
        "/fhir/Observation/measurement-0123456789abcdef0123456789abcdef",
        "/fhir/Observation/lab-999999",
        "/fhir/DiagnosticReport/response-0123456789abcdef0123456789abcdef",
        "/fhir/BodyStructure/lesion-0123456789abcdef0123456789abcdef",
        "/fhir/ImagingStudy/study-999999",
        "/fhir/RiskAssessment/risk-999999",
        "/fhir/Device/device-0123456789abcdef0123456789abcdef",
        "/fhir/Patient/patient-999999",
        "/fhir/Encounter/e1",
        "/fhir/Patient/x/_history/1",
        "/fhir/no/such/path",
    ],
)
def test_unknown_ids_and_paths_are_404_operation_outcomes(fhir, rows, path):
    answer = fhir.get(path)
    assert answer.status_code == 404
    assert answer["Content-Type"].startswith("application/fhir+json")
    assert answer.json()["resourceType"] == "OperationOutcome"
    assert answer.json()["issue"][0]["code"] == "not-found"


def test_patient_search_by_identifier(fhir, rows, settings):
    PatientIdentifier.objects.create(
        patient=rows.bob, system="urn:oid:2.16.840.1.113883.2.4.6.3", value="738472983"
    )

    def found(token: str) -> list[str]:
        body = fhir.get("/fhir/Patient", {"identifier": token}).json()
        Bundle.model_validate(body)
        assert body["type"] == "searchset" and body["total"] == len(body.get("entry", []))
        return [e["resource"]["id"] for e in body.get("entry", [])]

    assert found(f"{MRN_SYSTEM}|MRN-A") == [f"patient-{rows.alice.pk}"]
    assert found("MRN-A") == [f"patient-{rows.alice.pk}"]
    assert found("urn:oid:2.16.840.1.113883.2.4.6.3|738472983") == [f"patient-{rows.bob.pk}"]
    assert found("738472983") == [f"patient-{rows.bob.pk}"]
    # The same digits in another hospital's system are another identifier.
    assert found("http://other-hospital.example/mrn|MRN-A") == []
    assert found(f"{MRN_SYSTEM}|MRN-NONE") == []
    assert found("|MRN-A") == []
    assert len(found(f"{MRN_SYSTEM}|")) == 2
    bob = fhir.get(f"/fhir/Patient/patient-{rows.bob.pk}").json()
    assert {"system": "urn:oid:2.16.840.1.113883.2.4.6.3", "value": "738472983"} in bob[
        "identifier"
    ]
    settings.RADTRACK_MRN_SYSTEM = "urn:oid:1.2.3"
    assert found("urn:oid:1.2.3|MRN-A") == [f"patient-{rows.alice.pk}"]
    assert found(f"{MRN_SYSTEM}|MRN-A") == []
    assert fhir.get("/fhir/Patient").status_code == 400
    assert AuditEvent.objects.filter(action="fhir.patient.search", patient=rows.bob).exists()


def test_searches_are_paged_with_count_and_links(fhir, rows):
    everything = fhir.get(f"/fhir/Patient/patient-{rows.alice.pk}/$everything").json()
    total = everything["total"]
    seen, url, pages = [], f"/fhir/Patient/patient-{rows.alice.pk}/$everything?_count=4", 0
    while url:
        page = fhir.get(url).json()
        Bundle.model_validate(page)
        assert page["total"] == total and len(page["entry"]) <= 4
        seen += [e["fullUrl"] for e in page["entry"]]
        links = {link["relation"]: link["url"] for link in page["link"]}
        assert {"self", "first", "last"} <= set(links)
        nxt = links.get("next")
        url = nxt[nxt.index("/fhir/") :] if nxt else None
        pages += 1
    assert pages == -(-total // 4)
    assert seen == [e["fullUrl"] for e in everything["entry"]]
    assert re.search(r"_offset=\d+", links["last"])
    bad = fhir.get(f"/fhir/Patient/patient-{rows.alice.pk}/$everything", {"_count": "0"})
    assert bad.status_code == 400 and bad.json()["issue"][0]["code"] == "invalid"


def test_xml_is_not_served_406_with_an_operation_outcome(fhir, rows):
    for answer in (
        fhir.get(f"/fhir/Patient/patient-{rows.alice.pk}", {"_format": "xml"}),
        fhir.get(f"/fhir/Patient/patient-{rows.alice.pk}", {"_format": "application/fhir+xml"}),
        fhir.get(f"/fhir/Patient/patient-{rows.alice.pk}", HTTP_ACCEPT="application/fhir+xml"),
    ):
        assert answer.status_code == 406
        assert answer.json()["resourceType"] == "OperationOutcome"
        assert answer.json()["issue"][0]["code"] == "not-supported"


def test_imported_labs_are_observations_with_their_identifiers_and_comparator(fhir, rows):
    patient = f"patient-{rows.alice.pk}"
    labs = fhir.get("/fhir/Observation", {"patient": patient, "category": "laboratory"}).json()
    assert labs["total"] == 2
    by_id = {e["resource"]["id"]: e["resource"] for e in labs["entry"]}
    censored = next(r for r in by_id.values() if "comparator" in r["valueQuantity"])
    assert censored["valueQuantity"] == {
        "value": 0.5, "comparator": "<", "unit": "ng/mL", "system": "http://unitsofmeasure.org",
        "code": "ng/mL",
    }  # fmt: skip
    assert censored["identifier"] == [{"system": "https://lab.example/id", "value": "L-77"}]
    assert censored["category"][0]["coding"][0]["code"] == "laboratory"
    assert censored["code"]["coding"][0] == {
        "system": "http://loinc.org", "code": "2039-6",
        "display": "Carcinoembryonic Ag [Mass/volume] in Serum or Plasma",
    }  # fmt: skip
    imaging = fhir.get("/fhir/Observation", {"patient": patient, "category": "imaging"}).json()
    assert imaging["total"] == 8
    everything = fhir.get(f"/fhir/Patient/{patient}/$everything", {"_count": 500}).json()
    assert set(by_id) <= {e["resource"]["id"] for e in everything["entry"]}


def test_a_response_note_reaches_the_diagnostic_report(rows):
    """The reason for an NE or pending category (`response_note`, when the assessment
    has one) is part of the report's conclusion."""
    assessment = rows.response
    assessment.response_note = "NE: a target lesion was not measurable at this study."
    report = fhir_response_build(assessment=assessment)
    assert report["conclusion"].endswith("NE: a target lesion was not measurable at this study.")


def test_a_stale_remembered_patient_does_not_hide_a_resource(fhir, rows):
    """Ids hashed from UIDs are remembered per patient; a stale answer (rows re-tracked,
    or another patient) falls back to searching the rows."""
    from analytics.fhir.ids import lesion_fhir_id
    from analytics.fhir.locate import fhir_ids_remember

    lesion_id = lesion_fhir_id(rows.lesion.tracking_uid)
    fhir_ids_remember(
        patient_pk=rows.bob.pk, resources=[{"resourceType": "BodyStructure", "id": lesion_id}]
    )
    answer = fhir.get(f"/fhir/BodyStructure/{lesion_id}")
    assert answer.status_code == 200
    assert answer.json()["patient"]["reference"] == f"Patient/patient-{rows.alice.pk}"


@pytest.mark.parametrize(
    "path, params",
    [
        ("/fhir/Observation", {"patient": "\x00"}),
        ("/fhir/Patient", {"identifier": "a\x00b"}),
        ("/fhir/DiagnosticReport", {"patient": "patient-1", "x\x00": "1"}),
    ],
)
def test_a_nul_in_a_query_is_a_400_operation_outcome(fhir, rows, path, params):
    """Refused before any query (radtrack.middleware), as an OperationOutcome here."""
    answer = fhir.get(path, params)
    assert answer.status_code == 400
    assert answer.json()["resourceType"] == "OperationOutcome"
    assert "control character" in answer.json()["issue"][0]["diagnostics"]
