"""Hostile input and clients: control characters in parameters, anonymous and failing
API callers, token storage, and the headers every answer carries."""

import pytest
from django.urls import reverse
from rest_framework.authtoken.models import Token

from patients.models import AuditEvent
from radtrack.api.tokens import api_token_issue, token_digest
from tests.api.helpers import rows_make
from tests.patients.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def rows():
    return rows_make()


@pytest.fixture
def clinician_client(client):
    client.force_login(UserFactory(groups=["clinician"]))
    return client


# -- item 1: every query parameter that reaches the database ---------------------------


@pytest.mark.parametrize(
    ("url", "parameter"),
    [
        ("/?q=%00", "q"),
        ("/?tier=high%00", "tier"),
        ("/patients/?q=%00", "q"),
        ("/patients/?q=smith&page=1%00", "page"),
        ("/audit/?user=%00", "user"),
    ],
)
def test_pages_refuse_a_nul_in_a_parameter_naming_it(clinician_client, rows, url, parameter):
    response = clinician_client.get(url)
    assert response.status_code == 400
    page = response.content.decode()
    assert f"query parameter &#x27;{parameter}&#x27; contains a control character" in page


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/patients/?search=%00",
        "/api/v1/labs/?loinc_code=2039-6%00",
        "/api/v1/studies/?%00=1",
        "/api/v1/worklist/?search=a%01b",
        "/api/v1/ingest-sessions/?status=%00",
    ],
)
def test_the_api_refuses_control_characters_with_a_json_reason(clinician_client, rows, url):
    response = clinician_client.get(url)
    assert response.status_code == 400
    assert "control character" in response.json()["detail"]


@pytest.mark.parametrize(
    "url",
    [
        "/fhir/Observation?patient=%00",
        "/fhir/DiagnosticReport?patient=patient-1%00",
        "/fhir/Patient/patient-1?_format=%00json",
    ],
)
def test_fhir_refuses_control_characters_with_an_operation_outcome(clinician_client, rows, url):
    response = clinician_client.get(url)
    assert response.status_code == 400
    assert response["Content-Type"].startswith("application/fhir+json")
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "invalid"
    assert "control character" in outcome["issue"][0]["diagnostics"]


def test_ordinary_parameters_still_work(clinician_client, rows):
    assert clinician_client.get("/patients/", {"q": "Smith Alice"}).status_code == 200
    assert clinician_client.get("/api/v1/patients/", {"search": "tab\tok"}).status_code == 200


# -- item 8: anonymous callers get a challenge -----------------------------------------
@pytest.mark.parametrize(
    "url", ["/api/v1/patients/", "/api/v1/worklist/", "/fhir/Observation?patient=patient-1"]
)
def test_anonymous_api_calls_get_401_with_www_authenticate(client, url):
    response = client.get(url)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Token")


# -- item 3: tokens stored as digests ---------------------------------------------------
def test_tokens_are_stored_as_digests_and_work(client, rows):
    user = UserFactory(groups=["clinician"])
    raw = api_token_issue(user=user)
    stored = Token.objects.get(user=user).key
    assert stored != raw and stored == token_digest(raw)
    assert client.get("/api/v1/patients/", HTTP_AUTHORIZATION=f"Token {raw}").status_code == 200
    # The stored value is not a credential.
    assert client.get("/api/v1/patients/", HTTP_AUTHORIZATION=f"Token {stored}").status_code == 401
    again = api_token_issue(user=user)
    assert client.get("/api/v1/patients/", HTTP_AUTHORIZATION=f"Token {raw}").status_code == 401
    assert client.get("/api/v1/patients/", HTTP_AUTHORIZATION=f"Token {again}").status_code == 200


def test_a_token_made_before_digests_keeps_working_after_the_migration():
    from importlib import import_module

    from django.apps import apps

    migration = import_module("patients.migrations.0005_api_token_digests")
    user = UserFactory()
    Token.objects.create(user=user, key="0123456789abcdef0123456789abcdef01234567")

    class _Editor:
        class connection:
            alias = "default"

    migration.tokens_to_digests(apps, _Editor)
    assert Token.objects.get(user=user).key == token_digest(
        "0123456789abcdef0123456789abcdef01234567"
    )


# -- item 5: API authentication failures throttled -------------------------------------
def test_repeated_bad_tokens_are_throttled_429(client, rows, settings):
    settings.RADTRACK_API_AUTH_FAILURE_LIMIT = 5
    good = api_token_issue(user=UserFactory(groups=["clinician"]))
    codes = [
        client.get("/api/v1/patients/", HTTP_AUTHORIZATION=f"Token wrong-{n}").status_code
        for n in range(8)
    ]
    assert codes[:5] == [401] * 5
    assert codes[5:] == [429] * 3
    blocked = client.get("/api/v1/patients/", HTTP_AUTHORIZATION=f"Token {good}")
    assert blocked.status_code == 429 and int(blocked["Retry-After"]) > 0
    # Another address is not blocked.
    other = client.get(
        "/api/v1/patients/", HTTP_AUTHORIZATION=f"Token {good}", REMOTE_ADDR="198.51.100.9"
    )
    assert other.status_code == 200


# -- item 6: no-store and the Content-Security-Policy ------------------------------------
@pytest.mark.parametrize(
    "url", ["/", "/patients/", "/api/v1/patients/", "/fhir/Observation?patient=patient-1"]
)
def test_answers_with_patient_data_are_not_stored(clinician_client, rows, url):
    response = clinician_client.get(url)
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]


def test_patient_page_and_viewer_are_not_stored(clinician_client, rows):
    for url in (
        reverse("patients:detail", args=[rows.alice.pk]),
        reverse("lesions:viewer", args=[rows.alice.pk]),
    ):
        response = clinician_client.get(url)
        assert response.status_code == 200, url
        assert "no-store" in response["Cache-Control"]


def test_every_page_carries_a_csp_without_inline_scripts(client):
    response = client.get(reverse("login"))
    policy = response["Content-Security-Policy"]
    script = next(d.split() for d in policy.split(";") if d.strip().startswith("script-src"))
    assert "'self'" in script
    assert "'unsafe-inline'" not in script and "'unsafe-eval'" not in script
    assert "object-src 'none'" in policy and "frame-ancestors 'self'" in policy


def test_api_docs_need_no_inline_script(clinician_client):
    page = clinician_client.get("/api/docs/")
    assert page.status_code == 200
    assert b"<script>" not in page.content  # the split view: its script comes from a URL
    script = clinician_client.get("/api/docs/?script=")
    assert script.status_code == 200 and b"SwaggerUIBundle" in script.content


def test_audit_rows_are_written_for_refused_parameters_nowhere(clinician_client, rows):
    clinician_client.get("/patients/?q=%00")
    assert not AuditEvent.objects.filter(action="patient.list").exists()
