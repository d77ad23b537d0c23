"""Pushing FHIR transaction Bundles: against a real HTTP server on 127.0.0.1 playing the EHR."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core.management import CommandError, call_command
from fhir.resources.R4B.bundle import Bundle

from analytics.fhir.push import FHIRPushError, fhir_patient_push
from imaging.models import FhirPushRecord, LesionMeasurement
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


ECHOING_OUTCOME = {
    "resourceType": "OperationOutcome",
    "issue": [
        {
            "severity": "error",
            "code": "invalid",
            "diagnostics": "Patient.name: Smith^Alice born 1960-05-17 (MRN-A) is a duplicate",
        }
    ],
}


def test_a_refusal_is_not_retried_and_names_the_status_and_issue_codes(ehr, rows):
    ehr.answers = [(422, ECHOING_OUTCOME)]
    with pytest.raises(FHIRPushError, match=r"HTTP 422 \(OperationOutcome issue codes: invalid\)"):
        fhir_patient_push(pk=rows.alice.pk, server_url=ehr.url, attempts=3, retry_wait_s=0)
    assert len(ehr.received) == 1


# -- what the server says stays out of logs and messages (finding 16) --------------------
def test_the_servers_diagnostics_never_reach_the_log_or_the_message(ehr, rows, caplog):
    caplog.set_level("DEBUG")
    ehr.answers = [(500, ECHOING_OUTCOME), (503, {"echo": "Smith^Alice"}), (422, ECHOING_OUTCOME)]
    with pytest.raises(FHIRPushError) as refused:
        fhir_patient_push(pk=rows.alice.pk, server_url=ehr.url, attempts=3, retry_wait_s=0)
    assert "HTTP 422" in str(refused.value)
    for text in (caplog.text, str(refused.value)):
        assert "Smith" not in text and "MRN-A" not in text and "1960" not in text
    assert "HTTP 500 (OperationOutcome issue codes: invalid)" in caplog.text
    # The detail is kept apart for the operator.
    assert "duplicate" in refused.value.detail

    ehr.answers = [(503, ECHOING_OUTCOME)]
    with pytest.raises(FHIRPushError) as gave_up:
        fhir_patient_push(pk=rows.alice.pk, server_url=ehr.url, attempts=1, retry_wait_s=0)
    assert "Smith" not in str(gave_up.value) and "Smith" in gave_up.value.detail
    assert "Smith" not in caplog.text


def test_push_fhir_shows_the_operator_the_servers_words_without_logging_them(
    ehr, rows, settings, capsys, caplog
):
    settings.RADTRACK_FHIR_SERVER_URL = ehr.url
    settings.RADTRACK_FHIR_PUSH_ATTEMPTS = 1
    ehr.answers = [(422, ECHOING_OUTCOME)]
    with pytest.raises(CommandError):
        call_command("push_fhir", "--patient", "MRN-A")
    assert "is a duplicate" in capsys.readouterr().err
    assert "Smith" not in caplog.text


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


# -- superseded resources are marked at the EHR (finding 4) -------------------------------
def _by_url(bundle: dict) -> dict[str, dict]:
    return {e["request"]["url"]: e["resource"] for e in bundle["entry"]}


def test_retracking_gives_the_same_ids_and_leaves_nothing_stale(ehr, rows):

    fhir_patient_push(pk=rows.alice.pk, server_url=ehr.url)
    # Re-tracking deletes and rebuilds the rows with the same values.
    m = rows.at_followup
    values = {f.attname: getattr(m, f.attname) for f in m._meta.concrete_fields if f.name != "id"}
    m.delete()
    LesionMeasurement.objects.create(**values)
    result = fhir_patient_push(pk=rows.alice.pk, server_url=ehr.url)
    first, second = ehr.received
    assert set(_by_url(second)) == set(_by_url(first))
    assert result.superseded == 0 and result.amended == 0
    statuses = {r.get("status") for r in _by_url(second).values()}
    assert "entered-in-error" not in statuses and "amended" not in statuses


def test_a_result_no_longer_built_is_marked_entered_in_error_in_the_same_transaction(ehr, rows):
    from tests.imaging.factories import LesionFactory

    fhir_patient_push(pk=rows.alice.pk, server_url=ehr.url)
    first = _by_url(ehr.received[0])
    # Re-tracking attributed the follow-up finding to a new lesion: the old lesion's
    # measurement group at the follow-up (and its members) no longer exists.
    other = LesionFactory(patient=rows.alice, label="Liver 3", organ="liver")
    LesionMeasurement.objects.filter(pk=rows.at_followup.pk).update(lesion=other)
    result = fhir_patient_push(pk=rows.alice.pk, server_url=ehr.url)
    second = _by_url(ehr.received[1])
    Bundle.model_validate(ehr.received[1])
    gone = set(first) - {url for url, r in second.items() if r.get("status") != "entered-in-error"}
    assert len(gone) == 4  # the group and its three measurements
    for url in gone:
        # The very resource sent before, now marked: the EHR keeps it, flagged.
        assert second[url]["status"] == "entered-in-error"
        assert {k: v for k, v in second[url].items() if k != "status"} == {
            k: v for k, v in first[url].items() if k != "status"
        }
    assert result.superseded == 4

    fhir_patient_push(pk=rows.alice.pk, server_url=ehr.url)
    third = _by_url(ehr.received[2])
    assert not gone & set(third)  # marked once, then forgotten


def test_a_lesion_merged_away_is_made_inactive(ehr, rows):

    fhir_patient_push(pk=rows.alice.pk, server_url=ehr.url)
    lesions = [u for u in _by_url(ehr.received[0]) if u.startswith("BodyStructure/")]
    LesionMeasurement.objects.filter(lesion=rows.lesion).update(review_state="rejected")
    fhir_patient_push(pk=rows.alice.pk, server_url=ehr.url)
    second = _by_url(ehr.received[1])
    assert [second[u]["active"] for u in lesions] == [False]


def test_a_lesion_rejected_later_for_its_whole_identity_goes_entered_in_error(ehr, rows):
    """A rejection at one study holds for the lesion at every study (finding state
    ``rejected``, whatever the row's own review): what was sent of it before is marked
    entered-in-error, and its BodyStructure inactive, in the next push."""
    fhir_patient_push(pk=rows.alice.pk, server_url=ehr.url)
    first = _by_url(ehr.received[0])
    lesion_url = next(u for u in first if u.startswith("BodyStructure/"))
    sent = {u for u, r in first.items() if r.get("focus") == [{"reference": lesion_url}]}
    assert len(sent) == 8  # two studies: a group and three measurements each
    LesionMeasurement.objects.filter(pk=rows.at_baseline.pk).update(review_state="rejected")
    LesionMeasurement.objects.filter(lesion=rows.lesion).update(finding_state="rejected")
    result = fhir_patient_push(pk=rows.alice.pk, server_url=ehr.url)
    second = _by_url(ehr.received[1])
    Bundle.model_validate(ehr.received[1])
    assert {second[u]["status"] for u in sent} == {"entered-in-error"}
    assert second[lesion_url]["active"] is False
    assert result.superseded == 9


def test_a_final_result_whose_value_changed_goes_as_amended(ehr, rows):
    fhir_patient_push(pk=rows.alice.pk, server_url=ehr.url)
    rows.at_followup.override_volume_ml = 4.0
    rows.at_followup.save()
    result = fhir_patient_push(pk=rows.alice.pk, server_url=ehr.url)
    second = _by_url(ehr.received[1])
    volumes = [r for u, r in second.items() if u.endswith("-volume")]
    by_value = {r["valueQuantity"]["value"]: r["status"] for r in volumes}
    assert by_value == {4.0: "amended", 8.0: "final"}
    assert result.amended >= 1
    # Unchanged on the next push: still amended, not back to final.
    fhir_patient_push(pk=rows.alice.pk, server_url=ehr.url)
    third = _by_url(ehr.received[2])
    assert {r["valueQuantity"]["value"]: r["status"] for u, r in third.items()
            if u.endswith("-volume")} == by_value  # fmt: skip


def test_nothing_is_recorded_when_the_server_refuses(ehr, rows):

    ehr.answers = [(422, ECHOING_OUTCOME)]
    with pytest.raises(FHIRPushError):
        fhir_patient_push(pk=rows.alice.pk, server_url=ehr.url, attempts=1, retry_wait_s=0)
    assert not FhirPushRecord.objects.exists()
    fhir_patient_push(pk=rows.alice.pk, server_url=ehr.url)
    record = FhirPushRecord.objects.get(patient=rows.alice, server_url=ehr.url)
    assert "resource" not in record.resources[f"Patient/patient-{rows.alice.pk}"]
