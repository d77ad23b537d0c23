"""HL7 v2.5.1 ORU^R01 results out over MLLP, against a local MLLP listener started here.

The listener parses what it receives with hl7apy (independently of how RadTrack built
it) and answers each message with the ACK code the test scripts: AA, AE or AR, or
nothing at all.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import socketserver
import threading
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from hl7apy.parser import parse_message

from analytics.hl7.message import ack_read, hl7_escape
from analytics.hl7.send import (
    HL7NotConfigured,
    hl7_results_send_due,
    hl7_study_send,
    patient_measurements,
    response_is_final,
)
from analytics.hl7.tasks import hl7_results_send_task, hl7_study_send_task
from analytics.lesions.responses import responses_recompute
from analytics.models import ResponseAssessment
from imaging.models import LesionMeasurement
from patients.models import AuditEvent, ResultMessage
from tests.analytics.finding_rows import NOT_FOUND_REASON, finding_rows_make
from tests.api.helpers import rows_make

pytestmark = pytest.mark.django_db

VT, FS_CR = b"\x0b", b"\x1c\x0d"


class Listener(socketserver.ThreadingTCPServer):
    """An MLLP receiver: keeps every message it got, answers from ``script`` in turn."""

    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, script: list[str]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script = list(script)
        self.received: list[str] = []

    @property
    def port(self) -> int:
        return self.server_address[1]


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data = b""
        while FS_CR not in data:
            chunk = self.request.recv(65536)
            if not chunk:
                return
            data += chunk
        text = data[data.index(VT) + 1 : data.index(FS_CR)].decode("utf-8")
        self.server.received.append(text)
        code = self.server.script.pop(0) if self.server.script else "AA"
        if code == "silent":  # hold the connection, answer nothing, until the client gives up
            self.request.settimeout(5)
            with contextlib.suppress(OSError):
                self.request.recv(1)
            return
        control_id = parse_message(text, find_groups=False).msh.msh_10.value
        code, _, said = code.partition("|")  # "AE|the EHR's text" scripts MSA-3 too
        said = said or ("bad OBX" if code != "AA" else "")
        ack = (
            "MSH|^~\\&|EHR|HOSP|RADTRACK|RADTRACK|20240101120000||ACK^R01^ACK|A1|P|2.5.1\r"
            f"MSA|{code}|{control_id}|{said}\r"
        )
        self.request.sendall(VT + ack.encode() + FS_CR)


@pytest.fixture
def listen(settings):
    servers = []

    def start(*script: str) -> Listener:
        server = Listener(list(script))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        settings.RADTRACK_HL7_HOST = "127.0.0.1"
        settings.RADTRACK_HL7_PORT = server.port
        settings.RADTRACK_HL7_TIMEOUT_S = 2.0
        settings.RADTRACK_HL7_ATTEMPTS = 3
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _segments(text: str) -> dict[str, list[list[str]]]:
    out: dict[str, list[list[str]]] = {}
    for line in text.split("\r"):
        if line:
            fields = line.split("|")
            out.setdefault(fields[0], []).append(fields)
    return out


def test_oru_r01_carries_pid_obr_and_an_obx_per_value_and_target_lesion(listen):
    rows = rows_make()
    server = listen("AA")
    outcome = hl7_study_send(assessment=rows.response, sleep=lambda s: None)
    assert outcome.status == "sent"
    (text,) = server.received
    message = parse_message(text)  # hl7apy reads it as a v2.5.1 ORU^R01
    assert message.msh.msh_9.value == "ORU^R01^ORU_R01" and message.msh.msh_12.value == "2.5.1"
    seg = _segments(text)
    pid = seg["PID"][0]
    assert pid[3].startswith("MRN-A^^^RADTRACK&") and pid[3].endswith("^MR")
    assert pid[5] == "Smith^Alice" and pid[8] == "F"
    obr = seg["OBR"][0]
    assert obr[4] == "18748-4^Diagnostic imaging study^LN"
    assert obr[7] == "20240410" and obr[25] == "F"
    obx = {(o[3].split("^")[0], o[4]): o for o in seg["OBX"]}
    assert obx[("RECIST11", "")][5] == "PR^Partial response^99RTKRECIST"
    assert obx[("SOD", "")][5] == "19.5" and obx[("SOD", "")][6] == "mm^millimeter^UCUM"
    assert obx[("TOTVOL", "")][5] == "5" and obx[("TOTVOL", "")][6].startswith("mL^")
    assert obx[("PCTBASE", "")][5] == "-35" and obx[("PCTBASE", "")][6].startswith("%^")
    assert obx[("NEWLES", "")][5].startswith("N^")
    assert obx[("110180", "")][5] == rows.followup.study_instance_uid
    # The one target lesion, values in force (the radiologist's 19.5 mm long axis).
    assert obx[("112039", "1")][5] == "Liver 1"
    assert obx[("103339001", "1")][5] == "19.5" and obx[("103339001", "1")][6].startswith("mm^")
    assert obx[("118565006", "1")][5] == "5"
    assert {o[11] for o in seg["OBX"]} == {"F"}
    row = ResultMessage.objects.get()
    assert (row.status, row.ack_code, row.result_status, row.attempts) == ("accepted", "AA", "F", 1)
    assert row.control_id == message.msh.msh_10.value


def test_the_same_result_is_not_sent_twice_and_a_change_is(listen):
    rows = rows_make()
    server = listen()
    assert hl7_study_send(assessment=rows.response).status == "sent"
    assert hl7_study_send(assessment=rows.response).status == "unchanged"
    rows.response.recist_response = "SD"
    rows.response.save()
    assert hl7_study_send(assessment=rows.response).status == "sent"
    assert len(server.received) == 2
    assert "SD^Stable disease" in server.received[1]


def test_ae_is_retried_and_ar_is_reported_with_the_ehrs_reason(listen):
    rows = rows_make()
    server = listen("AE", "AA")
    waits: list[float] = []
    assert hl7_study_send(assessment=rows.response, sleep=waits.append).status == "sent"
    assert len(server.received) == 2 and waits == [1.0]
    assert ResultMessage.objects.get().attempts == 2

    server.script[:] = ["AR"]
    outcome = hl7_study_send(assessment=rows.response, force=True, sleep=waits.append)
    assert outcome.status == "rejected"
    assert outcome.message.ack_code == "AR" and "bad OBX" in outcome.message.error
    assert len(server.received) == 3  # a rejection is not retried


def test_what_an_ehr_answers_is_kept_only_as_text_a_database_holds(listen):
    """An ACK is the EHR's text: control characters (a NUL, which PostgreSQL refuses) are
    cleaned from the reason kept, and an acknowledgment code that is none of HL7's six
    (longer than the 2 characters kept) is a failed attempt, never a database error."""
    rows = rows_make()
    listen("AR|bad\x00 OBX\x1b[0m")
    outcome = hl7_study_send(assessment=rows.response, sleep=lambda s: None)
    assert outcome.status == "rejected"
    assert ResultMessage.objects.get().error == "bad OBX[0m"
    for code in ("ACK", "A\x00", "ZZ"):
        listen(f"{code}|x", f"{code}|x", f"{code}|x")
        outcome = hl7_study_send(assessment=rows.response, force=True, sleep=lambda s: None)
        assert outcome.status == "failed" and outcome.message.attempts == 3
        assert "acknowledgment code" in outcome.message.error
        assert "\x00" not in outcome.message.error and outcome.message.ack_code == ""


def test_no_ack_and_no_listener_are_failures_after_the_attempts(listen, settings):
    rows = rows_make()
    server = listen("silent", "silent", "silent")
    settings.RADTRACK_HL7_TIMEOUT_S = 0.3
    outcome = hl7_study_send(assessment=rows.response, sleep=lambda s: None)
    assert outcome.status == "failed" and "no answer" in outcome.message.error
    assert outcome.message.attempts == 3 and len(server.received) == 3
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        settings.RADTRACK_HL7_PORT = sock.getsockname()[1]  # bound, not listening
    outcome = hl7_study_send(assessment=rows.response, sleep=lambda s: None)
    assert outcome.status == "failed" and "cannot reach" in outcome.message.error
    settings.RADTRACK_HL7_HOST = ""
    with pytest.raises(HL7NotConfigured):
        hl7_study_send(assessment=rows.response)


def test_the_task_sends_only_final_responses_not_yet_accepted(listen):
    rows = rows_make()
    server = listen()
    # The baseline response rests on an accepted measurement, the follow-up on an edited
    # one: both final. A pending measurement makes the follow-up preliminary.
    rows.at_followup.review_state = "pending"
    rows.at_followup.save()
    assert hl7_results_send_task() == 1
    assert len(server.received) == 1 and rows.baseline.study_instance_uid in server.received[0]
    assert hl7_results_send_due() == []  # nothing new


def test_push_hl7_command_reports_each_study_and_audits(listen):
    rows = rows_make()
    listen("AA", "AR")
    out, err = StringIO(), StringIO()
    with pytest.raises(CommandError, match="1 sent, 0 unchanged, 1 rejected"):
        call_command("push_hl7", "--patient", "MRN-A", stdout=out, stderr=err)
    assert "sent (control id" in out.getvalue()
    assert "rejected" in err.getvalue() and "bad OBX" in err.getvalue()
    assert AuditEvent.objects.filter(action="hl7.push", patient=rows.alice).count() == 2


def test_text_is_escaped_and_acks_are_read_strictly():
    assert hl7_escape("a|b^c&d~e\\f\ng") == "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f\\.br\\g"
    ack = ack_read("MSH|^~\\&|E|H|R|R|2024||ACK|1|P|2.3\rMSA|AE|X1|no such patient\r")
    assert (ack.code, ack.control_id, ack.retry, ack.accepted) == ("AE", "X1", True, False)
    with pytest.raises(ValueError, match="not an HL7 ACK"):
        ack_read("HTTP/1.1 200 OK")


# -- findings as the response rules read them ------------------------------------------
def _observations(text: str) -> list[tuple[list[str], list[str]]]:
    """Each OBX with the NTE segments after it."""
    out: list[tuple[list[str], list[str]]] = []
    for line in text.split("\r"):
        fields = line.split("|")
        if fields[0] == "OBX":
            out.append((fields, []))
        elif fields[0] == "NTE" and out:
            out[-1][1].append(fields[3])
    return out


def test_findings_not_measured_are_never_sent_as_zero_and_rejected_ones_not_at_all(listen):
    rows = rows_make()
    findings = finding_rows_make(rows)
    server = listen()
    assert hl7_study_send(assessment=rows.response, sleep=lambda s: None).status == "sent"
    (text,) = server.received
    parse_message(text)  # still a valid v2.5.1 ORU^R01
    observations = _observations(text)
    by_lesion: dict[str, dict[str, tuple[list[str], list[str]]]] = {}
    labels = {o[4]: o[5] for o, _ in observations if o[3].startswith("112039^")}
    for obx, notes in observations:
        if obx[4]:
            by_lesion.setdefault(labels[obx[4]], {})[obx[3].split("^")[0]] = (obx, notes)
    assert set(by_lesion) == {"Liver 1", "Liver 3", "Liver 4", "Liver 6", "Node 1"}  # no Liver 5
    for label, why in (
        ("Liver 3", NOT_FOUND_REASON),
        ("Liver 4", "merged into Liver 1"),
        ("Liver 6", "too small to measure"),
    ):
        for code in ("103339001", "103340004", "118565006"):
            obx, notes = by_lesion[label][code]
            assert (obx[2], obx[5], obx[11]) == ("", "", "X"), (label, code)
            assert why in hl7_unescape(notes[0]), (label, code)
    state, notes = by_lesion["Liver 3"]["FINDSTATE"]
    assert state[5].startswith("not_found^Not found, needs review^")
    assert hl7_unescape(notes[0]) == NOT_FOUND_REASON
    node = by_lesion["Node 1"]
    assert node["103339001"][0][5] == "22" and node["103340004"][0][5] == "16"
    assert node["118565006"][0][11] == "X" and "by hand" in node["118565006"][1][0]
    assert by_lesion["Liver 1"]["103339001"][0][5] == "19.5"
    # A finding not found waits for a radiologist: the response is not final.
    assert _segments(text)["OBR"][0][25] == "P"
    assert findings.rejected_followup.lesion.tracking_uid not in text


def hl7_unescape(text: str) -> str:
    return text.replace("\\.br\\", "\n").replace("\\F\\", "|").replace("\\S\\", "^")


def test_irecist_the_date_pd_is_dated_from_and_a_revised_first_result_is_final(listen):
    rows = rows_make()
    server = listen()
    ResponseAssessment.objects.filter(pk=rows.response.pk).update(
        recist_response="PD", irecist_response="iUPD", progression_dated_from=dt.date(2024, 3, 1),
        response_note="new lesion: Liver 7 (first seen on 2024-03-01)",
        revisions=[{"at": "2024-05-02T10:00:00+00:00", "field": "recist_response",
                    "from": "SD", "to": "PD", "reason": "a later study confirmed Liver 7"}],
    )  # fmt: skip
    rows.response.refresh_from_db()
    assert hl7_study_send(assessment=rows.response, sleep=lambda s: None).status == "sent"
    seg = _segments(server.received[0])
    obx = {o[3].split("^")[0]: o for o in seg["OBX"]}
    assert obx["IRECIST"][5] == "iUPD^Immune unconfirmed progressive disease^99RTKIRECIST"
    assert obx["PDDATE"][2:6:3] == ["DT", "20240301"]
    assert "RECIST 1.1 SD -> PD" in obx["RESPREV"][5]
    assert "Liver 7" in obx["RESPNOTE"][5]
    # Final (everything reviewed), and the EHR holds nothing for this study yet: its first
    # result is final, revised or not (a correction is for a result the EHR holds).
    assert seg["OBR"][0][25] == "F" and {o[11] for o in seg["OBX"]} == {"F"}
    assert ResultMessage.objects.get().result_status == "F"


@pytest.mark.parametrize(
    "change, final",
    [
        ({}, True),
        ({"recist_response": "NE"}, False),
        ({"pending_new_lesions": 1}, False),
        ({"needs_attention": True}, False),
        ({"irecist_response": "NE"}, False),
    ],
)
def test_what_makes_a_response_final(change, final):
    rows = rows_make()
    ResponseAssessment.objects.filter(pk=rows.response.pk).update(**change)
    rows.response.refresh_from_db()
    measurements = patient_measurements(rows.alice.pk)
    assert response_is_final(assessment=rows.response, measurements=measurements) is final


@pytest.mark.parametrize("state", ["equivocal", "not_found"])
def test_an_unsettled_finding_at_the_study_keeps_it_from_being_final(state):
    rows = rows_make()
    LesionMeasurement.objects.filter(pk=rows.at_followup.pk).update(finding_state=state)
    measurements = patient_measurements(rows.alice.pk)
    assert not response_is_final(assessment=rows.response, measurements=measurements)


# -- sent when it becomes final ---------------------------------------------------------
def test_a_response_is_sent_on_commit_when_it_becomes_final_and_once(
    listen, django_capture_on_commit_callbacks
):
    rows = rows_make()
    server = listen()
    LesionMeasurement.objects.filter(pk=rows.at_followup.pk).update(review_state="pending")
    with django_capture_on_commit_callbacks(execute=False) as queued:
        responses_recompute(patient=rows.alice)
    assert len(queued) == 1  # the baseline only: the follow-up is not reviewed yet
    assert server.received == []  # nothing leaves before the commit
    for callback in queued:
        callback()
    assert len(server.received) == 1 and rows.baseline.study_instance_uid in server.received[0]

    # A radiologist accepts the follow-up: it becomes final and goes out, once.
    LesionMeasurement.objects.filter(pk=rows.at_followup.pk).update(review_state="edited")
    with django_capture_on_commit_callbacks(execute=True):
        responses_recompute(patient=rows.alice)
    assert len(server.received) == 2 and rows.followup.study_instance_uid in server.received[1]
    assert "PR^Partial response" in server.received[1]
    with django_capture_on_commit_callbacks(execute=True) as again:
        responses_recompute(patient=rows.alice)  # nothing changed
    assert again == [] and len(server.received) == 2


def test_without_a_receiver_nothing_is_queued(settings, django_capture_on_commit_callbacks):
    rows = rows_make()
    settings.RADTRACK_HL7_HOST = ""
    with django_capture_on_commit_callbacks(execute=False) as queued:
        responses_recompute(patient=rows.alice)
    assert queued == []


def test_the_queued_task_sends_only_what_is_still_final(listen):
    rows = rows_make()
    server = listen()
    LesionMeasurement.objects.filter(pk=rows.at_followup.pk).update(review_state="pending")
    assert hl7_study_send_task(rows.response.pk) == "not final"
    assert hl7_study_send_task(0) == "gone"
    LesionMeasurement.objects.filter(pk=rows.at_followup.pk).update(review_state="edited")
    assert hl7_study_send_task(rows.response.pk) == "sent"
    assert hl7_study_send_task(rows.response.pk) == "unchanged"
    assert len(server.received) == 1
