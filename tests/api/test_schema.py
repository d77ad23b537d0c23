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
from rest_framework.authtoken.models import Token

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


def test_no_generated_request_gets_a_server_error(wsgi_app):
    rows_make()
    admin = UserFactory(groups=["admin"])
    headers = {"Authorization": f"Token {Token.objects.create(user=admin).key}"}
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
