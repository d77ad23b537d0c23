"""Pushing FHIR transaction Bundles: against a real HTTP server on 127.0.0.1 playing the EHR."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core.management import CommandError, call_command
from fhir.resources.R4B.bundle import Bundle

from analytics.fhir_push import FHIRPushError, fhir_patient_push
from patients.models import AuditEvent
from tests.api.helpers import rows_make

pytestmark = pytest.mark.django_db


class FakeEHR:
    """Answers POSTs with the queued (status, body) pairs, then 200 with a transaction-response."""

    def __init__(self):
        self.answers: list[tuple[int, dict]] = []
        self.received: list[dict] = []
        self.headers: list[dict] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.received.append(body)
                owner.headers.append(dict(self.headers))
                if owner.answers:
                    code, answer = owner.answers.pop(0)
                else:
                    code = 200
                    answer = {
                        "resourceType": "Bundle",
                        "type": "transaction-response",
                        "entry": [{"response": {"status": "201 Created"}} for _ in body["entry"]],
                    }
                data = json.dumps(answer).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/fhir"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def ehr():
    with FakeEHR() as server:
        yield server


@pytest.fixture
def rows():
    return rows_make()


def test_a_patient_goes_as_one_valid_transaction_of_puts(ehr, rows):
    result = fhir_patient_push(pk=rows.alice.pk, server_url=ehr.url, token="s3cret")
    (bundle,) = ehr.received
    Bundle.model_validate(bundle)
    assert bundle["type"] == "transaction"
    assert result.resources == len(bundle["entry"]) and result.attempts == 1
    urls = [e["request"]["url"] for e in bundle["entry"]]
    assert urls[0] == f"Patient/patient-{rows.alice.pk}"
    assert {e["request"]["method"] for e in bundle["entry"]} == {"PUT"}
    assert ehr.headers[0]["Authorization"] == "Bearer s3cret"
    assert ehr.headers[0]["Content-Type"] == "application/fhir+json"


def test_unavailable_answers_are_retried(ehr, rows):
    ehr.answers = [(503, {}), (502, {})]
    result = fhir_patient_push(pk=rows.alice.pk, server_url=ehr.url, attempts=3, retry_wait_s=0)
    assert result.attempts == 3
    assert len(ehr.received) == 3


def test_a_refusal_is_not_retried_and_names_the_reason(ehr, rows):
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "invalid", "diagnostics": "bad reference"}],
    }
    ehr.answers = [(422, outcome)]
    with pytest.raises(FHIRPushError, match="HTTP 422: bad reference"):
        fhir_patient_push(pk=rows.alice.pk, server_url=ehr.url, attempts=3, retry_wait_s=0)
    assert len(ehr.received) == 1


def test_a_failed_entry_in_the_transaction_response_is_an_error(ehr, rows):
    ehr.answers = [
        (200, {"resourceType": "Bundle", "type": "transaction-response",
               "entry": [{"response": {"status": "400 Bad Request"}}]}),
    ]  # fmt: skip
    with pytest.raises(FHIRPushError, match=r"failed 1 of .*entry\[0\] 400 Bad Request"):
        fhir_patient_push(pk=rows.alice.pk, server_url=ehr.url, retry_wait_s=0)


def test_an_unreachable_server_fails_after_every_attempt(rows):
    with FakeEHR() as gone:
        url = gone.url
    with pytest.raises(FHIRPushError, match="after 2 attempts; last: ConnectionError"):
        fhir_patient_push(pk=rows.alice.pk, server_url=url, attempts=2, retry_wait_s=0)


def test_push_fhir_command(ehr, rows, settings, capsys):
    settings.RADTRACK_FHIR_SERVER_URL = ehr.url
    call_command("push_fhir", "--patient", "MRN-A")
    assert "1 of 1 patients pushed" in capsys.readouterr().out
    assert AuditEvent.objects.get(action="fhir.push").patient_id == rows.alice.pk

    ehr.answers = [(400, {"resourceType": "OperationOutcome", "issue": []})]
    settings.RADTRACK_FHIR_PUSH_ATTEMPTS = 1
    with pytest.raises(CommandError, match="1 of 2 patients pushed .*1 failed"):
        call_command("push_fhir")

    with pytest.raises(CommandError, match="no patient with ID 'NOPE'"):
        call_command("push_fhir", "--patient", "NOPE")
    settings.RADTRACK_FHIR_SERVER_URL = ""
    with pytest.raises(CommandError, match="RADTRACK_FHIR_SERVER_URL"):
        call_command("push_fhir")
