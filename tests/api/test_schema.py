"""The OpenAPI 3 schema, its docs page, and schemathesis against it: no 5xx anywhere.

Schemathesis loads the schema from the running WSGI application (as a token-holding
admin, so every operation is reachable) and sends generated requests to every operation,
valid and invalid, in-process.
"""

import hypothesis
import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections, transaction

from radtrack.api.tokens import api_token_issue
from tests.api.helpers import rows_make
from tests.patients.factories import UserFactory

pytestmark = pytest.mark.django_db

EXAMPLES_PER_OPERATION = 12
READ_PATHS = [
    "/api/v1/patients/",
    "/api/v1/labs/",
    "/api/v1/studies/",
    "/api/v1/series/",
    "/api/v1/lesions/",
    "/api/v1/measurements/",
    "/api/v1/responses/",
    "/api/v1/risk-scores/",
    "/api/v1/worklist/",
    "/api/v1/ingest-sessions/",
    "/fhir/Observation",
    "/fhir/Patient/{resource_id}/$everything",
]


def test_schema_needs_a_login_and_lists_every_resource(client):
    assert client.get("/api/schema/").status_code in (401, 403)
    client.force_login(UserFactory(groups=["clinician"]))
    response = client.get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    assert set(READ_PATHS) <= set(schema["paths"])
    docs = client.get("/api/docs/")
    assert docs.status_code == 200
    assert b"swagger-ui" in docs.content


@pytest.fixture
def wsgi_app():
    """The project's WSGI application, sharing the test's database transaction.

    As Django's test client does, requests must not close the connection at their end
    (it is inside the test's transaction, and PostgreSQL would lose the test data).
    """
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield get_wsgi_application()
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.mark.slow
def test_no_generated_request_gets_a_server_error(wsgi_app):
    rows_make()
    admin = UserFactory(groups=["admin"])
    headers = {"Authorization": f"Token {api_token_issue(user=admin)}"}
    schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", wsgi_app, headers=headers)
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @hypothesis.settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(hypothesis.HealthCheck),
            phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        )
        @hypothesis.given(case=operation.as_strategy())
        def send(case):
            # A savepoint per request: a database error stays with the request that hit it.
            with transaction.atomic():
                response = case.call(headers=headers)
            if response.status_code >= 500:
                failures.append(
                    f"{case.method.upper()} {case.formatted_path} query={case.query!r}: "
                    f"{response.status_code} {response.text[:200]}"
                )

        send()
    assert operations >= len(READ_PATHS)
    assert not failures, "\n".join(failures[:20])


# -- responses as documented (issue 20, "API schema") ------------------------------------
def _path_values(rows, session_pk: int) -> dict[str, object]:
    from imaging.models import Series

    return {
        "/api/v1/patients/{id}/": rows.alice.pk,
        "/api/v1/labs/{id}/": rows.lab.pk,
        "/api/v1/lesions/{id}/": rows.lesion.pk,
        "/api/v1/measurements/{id}/": rows.at_baseline.pk,
        "/api/v1/responses/{id}/": rows.response.pk,
        "/api/v1/risk-scores/{id}/": rows.score.pk,
        "/api/v1/series/{id}/": Series.objects.order_by("pk").first().pk,
        "/api/v1/studies/{id}/": rows.baseline.pk,
        "/api/v1/ingest-sessions/{id}/": session_pk,
    }


def _cases(operation, rows, session_pk: int) -> list[tuple[str, object]]:
    """A real request (200 expected) and, where the path names a record, an unknown one."""
    path = operation.path
    fhir_patient = f"patient-{rows.alice.pk}"
    query = {}
    for parameter in operation.query:
        if parameter.is_required and parameter.name == "patient":
            query["patient"] = fhir_patient
        elif parameter.is_required and parameter.name == "identifier":
            query["identifier"] = rows.alice.patient_id
    found: dict[str, object] = {}
    missing: dict[str, object] = {}
    for parameter in operation.path_parameters:
        if parameter.name == "id":
            found["id"], missing["id"] = _path_values(rows, session_pk)[path], 987654321
        elif parameter.name == "resource_id" and path.startswith("/fhir/AuditEvent/"):
            from patients.audit import audit_record

            event = audit_record(action="patient.view", username="someone", patient=rows.alice)
            found["resource_id"], missing["resource_id"] = f"audit-{event.pk}", "audit-987654321"
        elif parameter.name == "resource_id":
            found["resource_id"], missing["resource_id"] = fhir_patient, "patient-987654321"
        elif parameter.name == "resource_type":
            found["resource_type"] = missing["resource_type"] = "Patient"
    cases = [("real", operation.Case(path_parameters=found or None, query=query or None))]
    if missing:
        cases.append(("unknown", operation.Case(path_parameters=missing, query=query or None)))
    return cases


def test_every_get_answers_as_the_schema_documents(wsgi_app):
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    from tests.imaging.factories import IngestIssueFactory, IngestSessionFactory, InstanceFactory

    rows = rows_make()
    # A session of the listener: no account (user is null), one issue, one image.
    session = IngestSessionFactory(user=None, source="dimse", rejected=1, files_seen=2)
    IngestIssueFactory(session=session, file_name="bad.dcm", reason="empty file")
    InstanceFactory(ingest_session=session)
    admin = UserFactory(groups=["admin"])
    headers = {"Authorization": f"Token {api_token_issue(user=admin)}"}
    schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", wsgi_app, headers=headers)
    checks = [response_schema_conformance, status_code_conformance, content_type_conformance]
    failures, answered = [], {}
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.method.upper() != "GET":
            continue
        for kind, case in _cases(operation, rows, session.pk):
            for auth in (headers, {}):  # with a token, and anonymous (401 documented)
                response = case.call(headers=auth)
                answered[(operation.path, kind, bool(auth))] = response.status_code
                try:
                    case.validate_response(response, checks=checks, headers=auth)
                except BaseExceptionGroup as group:  # schemathesis: one failure per check
                    for exc in group.exceptions:
                        failures.append(f"{operation.path} {kind} auth={bool(auth)}: {exc}"[:700])
    assert not failures, "\n".join(failures)
    real = {path: code for (path, kind, auth), code in answered.items() if kind == "real" and auth}
    assert len(real) >= len(READ_PATHS)
    assert {code for path, code in real.items() if path != "/fhir/metadata"} == {200}, real
    anonymous = {
        code for (p, kind, auth), code in answered.items() if not auth and p != "/fhir/metadata"
    }
    assert anonymous == {401}
    unknown = {code for (p, kind, auth), code in answered.items() if kind == "unknown" and auth}
    assert unknown == {404}


def _body_path_values(rows) -> dict[str, dict[str, object]]:
    """Real path values for the operations that read a body (so the body is what fails)."""
    return {
        "/api/v1/studies/{study_instance_uid}/lesions/": {
            "study_instance_uid": rows.baseline.study_instance_uid
        },
        "/api/v1/measurements/{id}/mask/": {"id": rows.at_baseline.pk},
        "/api/v1/lesions/{id}/organ/": {"id": rows.lesion.pk},
    }


def test_refusals_answer_as_the_schema_documents(wsgi_app):
    """403 for an account without the view permissions (a researcher), 406 for FHIR XML,
    415 for a body no operation reads: each documented, with the body it really has;
    FHIR operations document FHIR's ``_format``, never DRF's ``format``."""
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    from tests.imaging.factories import IngestSessionFactory

    rows = rows_make()
    admin = {"Authorization": f"Token {api_token_issue(user=UserFactory(groups=['admin']))}"}
    researcher = UserFactory(groups=["researcher"])
    outsider = {"Authorization": f"Token {api_token_issue(user=researcher)}"}
    schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", wsgi_app, headers=admin)
    checks = [response_schema_conformance, status_code_conformance, content_type_conformance]
    failures, answered = [], {}

    def check(label: str, case, headers: dict) -> None:
        response = case.call(headers=headers)
        answered[label] = response.status_code
        try:
            case.validate_response(response, checks=checks, headers=headers)
        except BaseExceptionGroup as group:
            failures.extend(f"{label}: {exc}"[:700] for exc in group.exceptions)

    for result in schema.get_all_operations():
        operation = result.ok()
        path, method = operation.path, operation.method.upper()
        names = {p.name for p in operation.query}
        if path.startswith("/fhir/"):
            assert "_format" in names and "format" not in names, path
        if method == "GET":
            found = dict(_cases(operation, rows, session_pk=0)[0][1].path_parameters or {})
            if "id" in found and path.startswith("/api/v1/ingest-sessions/"):
                found["id"] = IngestSessionFactory(user=None).pk  # not the researcher's
            query = {"patient": f"patient-{rows.alice.pk}", "identifier": "MRN-A"}
            query = {k: v for k, v in query.items() if k in names}
            if path != "/fhir/metadata":
                case = operation.Case(path_parameters=found or None, query=query or None)
                check(f"403 GET {path}", case, outsider)
            if path.startswith("/fhir/"):
                xml = operation.Case(
                    path_parameters=found or None, query={**query, "_format": "xml"}
                )
                check(f"406 GET {path}", xml, admin)
        elif operation.body:
            values = _body_path_values(rows).get(path)
            case = operation.Case(
                path_parameters=values, body="plain text", media_type="text/plain"
            )
            check(f"415 {method} {path}", case, admin)
    assert not failures, "\n".join(failures)
    # Any account lists its own ingest sessions (a researcher has none): not a refusal.
    assert answered.pop("403 GET /api/v1/ingest-sessions/") == 200
    expected = {label: int(label[:3]) for label in answered}
    assert answered == expected
    assert {label[:3] for label in answered} == {"403", "406", "415"}
