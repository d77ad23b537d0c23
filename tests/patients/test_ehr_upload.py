"""EHR upload: the page and POST /api/v1/ehr/, for FHIR Bundles and cohort CSVs."""

import json

import pytest
from django.urls import reverse
from django.utils.html import escape

from imaging.core.synthetic.cohort import cohort_simulate
from imaging.core.synthetic.ehr import ehr_bundle_build, events_csv_write, labs_csv_write
from patients.models import AuditEvent, ClinicalEvent, LabResult, UnmatchedEHRRecord
from radtrack.api.tokens import api_token_issue
from tests.patients.factories import PatientFactory, UserFactory

pytestmark = pytest.mark.django_db

PAGE = "patients:ehr-upload"
API = "api-ehr-import"


@pytest.fixture(scope="module")
def cohort():
    return cohort_simulate(n_patients=3, n_timepoints=2, seed=5)


@pytest.fixture
def files(cohort, tmp_path):
    (tmp_path / "ehr_bundle.json").write_text(json.dumps(ehr_bundle_build(cohort)))
    labs_csv_write(cohort, tmp_path / "labs.csv")
    events_csv_write(cohort, tmp_path / "events.csv")
    return tmp_path


@pytest.fixture
def known(cohort):
    """The first two patients exist; the third does not."""
    return [PatientFactory(patient_id=p.patient_id) for p in cohort.patients[:2]]


@pytest.fixture
def radiologist(client):
    user = UserFactory(groups=["radiologist"])
    client.force_login(user)
    return user


def labs_of(cohort, n):
    return sum(len(p.labs) for p in cohort.patients[:n])


# -- the page -------------------------------------------------------------------------
def test_page_needs_login_and_the_import_permission(client):
    url = reverse(PAGE)
    response = client.get(url)
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]
    client.force_login(UserFactory(groups=["clinician"]))
    assert client.get(url).status_code == 403
    client.force_login(UserFactory(groups=["admin"]))
    assert client.get(url).status_code == 200


def test_page_imports_a_bundle_and_shows_the_result(client, radiologist, cohort, files, known):
    with (files / "ehr_bundle.json").open("rb") as f:
        response = client.post(reverse(PAGE), {"file": f})
    assert response.status_code == 200
    page = response.content.decode()
    result = response.context["result"]
    assert result["format"] == "FHIR Bundle"
    assert result["created"] > 0 and result["rejected"] == []
    assert result["unmatched_identifiers"] == [cohort.patients[2].patient_id]
    assert LabResult.objects.count() == labs_of(cohort, 2)
    assert cohort.patients[2].patient_id in page
    assert "Every record was used." in page
    source = set(LabResult.objects.values_list("source", flat=True))
    assert source == {f"upload ehr_bundle.json by {radiologist.username}"}
    audit = AuditEvent.objects.get(action="ehr.import")
    assert audit.user == radiologist and "created" in audit.object

    # The same file again: nothing new, all unchanged.
    with (files / "ehr_bundle.json").open("rb") as f:
        again = client.post(reverse(PAGE), {"file": f}).context["result"]
    assert (again["created"], again["updated"]) == (0, 0)
    assert again["unchanged"] == result["created"] + result["updated"] + result["unchanged"]
    assert AuditEvent.objects.filter(action="ehr.import").count() == 2


def test_page_takes_fhir_bulk_data_ndjson(client, radiologist, cohort, files, known):
    page = client.get(reverse(PAGE)).content.decode()
    picker = next(
        line for line in page.splitlines() if 'id="ehr-file"' in line and "<input" in line
    )
    assert ".ndjson" in picker and "application/fhir+ndjson" in picker
    assert "FHIR Bulk Data NDJSON" in page
    bundle = json.loads((files / "ehr_bundle.json").read_text())
    # Bulk Data has no fullUrl: references name Type/id, as an export writes them.
    names = {}
    for n, entry in enumerate(bundle["entry"]):
        entry["resource"].setdefault("id", f"r{n}")
        names[entry["fullUrl"]] = f"{entry['resource']['resourceType']}/{entry['resource']['id']}"
    text = json.dumps([e["resource"] for e in bundle["entry"]])
    for full_url, name in names.items():
        text = text.replace(f'"{full_url}"', f'"{name}"')
    lines = "\n".join(json.dumps(r) for r in json.loads(text)) + "\n"
    (files / "Observation.ndjson").write_text(lines)
    with (files / "Observation.ndjson").open("rb") as f:
        response = client.post(reverse(PAGE), {"file": f})
    assert response.status_code == 200
    result = response.context["result"]
    assert result["format"] == "FHIR NDJSON" and result["rejected"] == []
    assert LabResult.objects.count() == labs_of(cohort, 2)


def test_page_imports_csv_and_lists_rejected_rows_with_reasons(
    client, radiologist, cohort, files, known
):
    text = (files / "labs.csv").read_text()
    mrn = cohort.patients[0].patient_id
    text += f"{mrn},2039-6,CEA,4.0,mmol/L,2024-01-01T08:00:00+00:00\n"  # not a mass unit
    bad = files / "bad_labs.csv"
    bad.write_text(text)
    with bad.open("rb") as f:
        response = client.post(reverse(PAGE), {"file": f})
    assert response.status_code == 200
    result = response.context["result"]
    assert result["format"] == "labs CSV"
    assert len(result["rejected"]) == 1
    problem = result["rejected"][0]
    assert "line" in problem["where"] and "mmol/L" in problem["reason"]
    assert escape(problem["reason"]) in response.content.decode()
    assert LabResult.objects.count() == labs_of(cohort, 2)
    assert UnmatchedEHRRecord.objects.count() == len(cohort.patients[2].labs)

    with (files / "events.csv").open("rb") as f:
        events = client.post(reverse(PAGE), {"file": f}).context["result"]
    assert events["created"] == ClinicalEvent.objects.count() > 0


def test_page_refuses_an_unreadable_file_with_the_reason(client, radiologist, files):
    bad = files / "notes.json"
    bad.write_text('{"resourceType": "Patient"}')
    with bad.open("rb") as f:
        response = client.post(reverse(PAGE), {"file": f})
    assert response.status_code == 400
    assert "not a FHIR Bundle" in response.content.decode()
    assert "refused" in AuditEvent.objects.get(action="ehr.import").object
    assert client.post(reverse(PAGE), {}).status_code == 400


def test_page_refuses_a_file_over_the_limit(client, radiologist, files, settings):
    settings.RADTRACK_MAX_UPLOAD_BYTES = 100
    with (files / "labs.csv").open("rb") as f:
        response = client.post(reverse(PAGE), {"file": f})
    assert response.status_code == 413
    assert not LabResult.objects.exists()


# -- the API --------------------------------------------------------------------------
def test_api_needs_an_account_that_may_import(client, files):
    url = reverse(API)
    body = (files / "ehr_bundle.json").read_bytes()
    assert client.post(url, body, content_type="application/fhir+json").status_code in (401, 403)
    client.force_login(UserFactory(groups=["clinician"]))
    response = client.post(url, body, content_type="application/fhir+json")
    assert response.status_code == 403
    assert "radiologist or admin" in response.json()["detail"]


@pytest.mark.parametrize("content_type", ["application/fhir+json", "application/json"])
def test_api_takes_a_bundle_body(client, radiologist, cohort, files, known, content_type):
    body = (files / "ehr_bundle.json").read_bytes()
    response = client.post(reverse(API), body, content_type=content_type)
    assert response.status_code == 201
    answer = response.json()
    assert answer["format"] == "FHIR Bundle"
    assert answer["records"] == len(json.loads(body)["entry"])
    assert answer["unmatched_identifiers"] == [cohort.patients[2].patient_id]
    assert answer["rejected"] == [] and answer["skipped"] == []
    assert LabResult.objects.count() == labs_of(cohort, 2)
    assert AuditEvent.objects.filter(action="ehr.import", user=radiologist).count() == 1

    again = client.post(reverse(API), body, content_type=content_type)
    assert again.status_code == 200
    assert again.json()["created"] == 0
    assert again.json()["unchanged"] == answer["created"] + answer["updated"] + answer["unchanged"]


def test_api_takes_csv_as_body_or_multipart_with_a_token(client, cohort, files, known):
    user = UserFactory(groups=["radiologist"])
    token = api_token_issue(user=user)
    auth = {"HTTP_AUTHORIZATION": f"Token {token}"}
    response = client.post(
        reverse(API), (files / "events.csv").read_bytes(), content_type="text/csv", **auth
    )
    assert response.status_code == 201
    assert response.json()["format"] == "events CSV"
    assert response.json()["created"] == ClinicalEvent.objects.count() > 0

    with (files / "labs.csv").open("rb") as f:
        response = client.post(reverse(API), {"file": f}, **auth)
    assert response.status_code == 201
    assert response.json()["source"] == f"upload labs.csv by {user.username}"
    assert LabResult.objects.count() == labs_of(cohort, 2)


def test_api_bad_requests(client, radiologist):
    url = reverse(API)
    response = client.post(url, b"{not json", content_type="application/json")
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["detail"]
    assert client.post(url, b"", content_type="text/csv").status_code == 400
    response = client.post(url, {"other": b"x"})
    assert response.status_code == 400 and "'file'" in response.json()["detail"]
    response = client.post(url, b"a,b\n1,2\n", content_type="text/csv")
    assert response.status_code == 400


def test_api_is_in_the_schema(client):
    client.force_login(UserFactory(groups=["clinician"]))
    response = client.get(reverse("schema"), HTTP_ACCEPT="application/vnd.oai.openapi+json")
    schema = json.loads(response.content)
    operation = schema["paths"]["/api/v1/ehr/"]["post"]
    assert operation["operationId"] == "ehr_import"
    assert {"multipart/form-data", "application/fhir+json", "text/csv"} <= set(
        operation["requestBody"]["content"]
    )
