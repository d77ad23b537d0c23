"""What the EHR holds follows what RadTrack stands by, over HL7 v2 and FHIR alike.

- A final result the EHR accepted is corrected (C) when RadTrack now says something
  else, final or not (a non-final correction says it is pending review), and withdrawn
  (OBX-11 W) under the patient it was sent for when RadTrack has no response of that
  study for them any more; the catch-up and the on-commit trigger both find these.
- C and FHIR ``amended`` come from what the EHR holds, never from the assessment's
  revision history: the first result is F / ``final``.
- One finality rule (`analytics.lesions.finality`) for HL7 and FHIR.
- A provisional lesion link is never sent as final.
- A pushed final FHIR result is never pushed back as preliminary.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import asdict

import numpy as np
import pytest

from analytics.fhir.build import patient_resources_build
from analytics.fhir.codes import LESION_LINK_SYSTEM, RESPONSE_REVISION_EXTENSION
from analytics.fhir.ids import measurement_fhir_id, response_fhir_id
from analytics.fhir.push import AWAITING_REVIEW, fhir_patient_push, fhir_push_plan
from analytics.fhir.record import patient_record_load
from analytics.hl7.send import (
    hl7_final_responses_unsent,
    hl7_results_due,
    hl7_results_send_due,
    hl7_study_send,
    study_result_load,
)
from analytics.hl7.tasks import hl7_results_send_task, hl7_study_send_task
from analytics.lesions.responses import responses_recompute
from analytics.lesions.review.measurements import measurement_accept
from analytics.lesions.tracking.track import patient_track
from analytics.models import ResponseAssessment
from imaging.models import FhirPushRecord, LesionMeasurement, Segmentation
from patients.models import ResultMessage
from tests.analytics import test_fhir_push
from tests.api.helpers import rows_make
from tests.imaging.factories import SeriesFactory, StudyFactory
from tests.imaging.test_review import BASELINE_DATE, LIVER, LUNG, candidate
from tests.interop import test_hl7_results
from tests.interop.test_hl7_results import _segments
from tests.patients.factories import PatientFactory, UserFactory

pytestmark = pytest.mark.django_db

#: Fixtures shared with the HL7 and FHIR push tests: an MLLP listener, a FHIR server.
listen = test_hl7_results.listen
ehr = test_fhir_push.ehr

NO_WAIT = {"sleep": lambda s: None}


def _obx(text: str) -> dict[str, list[str]]:
    return {o[3].split("^")[0]: o for o in _segments(text)["OBX"]}


def _notes_after(text: str, code: str) -> list[str]:
    """The NTE-3 texts after the OBX of ``code``."""
    out, inside = [], False
    for line in text.split("\r"):
        fields = line.split("|")
        if fields[0] == "OBX":
            inside = fields[3].split("^")[0] == code
        elif fields[0] == "NTE" and inside:
            out.append(fields[3])
    return out


def _revised_to_pd_pending_review(rows) -> ResponseAssessment:
    """The follow-up reprocessed: its measurement is pending review again, and the
    category went PR -> PD (the audit's case)."""
    LesionMeasurement.objects.filter(pk=rows.at_followup.pk).update(
        review_state="pending", override_longest_diameter_mm=None, longest_diameter_mm=45.0
    )
    ResponseAssessment.objects.filter(pk=rows.response.pk).update(
        recist_response="PD", sum_diameters_mm=45.0, pct_change_baseline=50.0,
        revisions=[{"at": "2024-05-01T00:00:00+00:00", "field": "recist_response",
                    "from": "PR", "to": "PD", "reason": "reprocessed"}],
    )  # fmt: skip
    rows.response.refresh_from_db()
    return rows.response


# --------------------------------------------------------------------------- 1: corrections
def test_a_final_result_now_not_final_is_corrected_saying_it_awaits_review(listen):
    rows = rows_make()
    server = listen()
    assert hl7_study_send(assessment=rows.response, **NO_WAIT).status == "sent"
    response = _revised_to_pd_pending_review(rows)
    assert not study_result_load(response).final
    assert response.pk in [a.pk for a in hl7_final_responses_unsent(patient_id=rows.alice.pk)]

    assert rows.followup.study_instance_uid in [
        o.study_instance_uid for o in hl7_results_send_due(**NO_WAIT)
    ]
    correction = server.received[-1]
    seg, obx = _segments(correction), _obx(correction)
    assert seg["OBR"][0][25] == "C" and {o[11] for o in seg["OBX"]} == {"C"}
    assert obx["RECIST11"][5].startswith("PD^")
    assert obx["RESSTATE"][5].startswith("pending-review^Not final")
    (why,) = _notes_after(correction, "RESSTATE")
    assert "no longer stands by" in why and "radiologist's review" in why
    assert ResultMessage.objects.filter(status="accepted").first().result_status == "C"
    # Held now: nothing more is due, by the catch-up or the queued task.
    assert hl7_results_due(patient_id=rows.alice.pk).assessments == []
    assert hl7_study_send_task(response.pk) == "not final"
    # Signed off again: the final PD corrects the pending one (a final was accepted).
    LesionMeasurement.objects.filter(pk=rows.at_followup.pk).update(review_state="accepted")
    assert hl7_study_send_task(response.pk) == "sent"
    seg = _segments(server.received[-1])
    assert seg["OBR"][0][25] == "C" and "RESSTATE" not in _obx(server.received[-1])


def test_the_on_commit_trigger_corrects_a_final_result_reprocessed_to_pending(
    listen, django_capture_on_commit_callbacks
):
    """Reprocessed: the follow-up's lesion now measures 45 mm (+50%, PD) and waits for
    review. The recomputation that writes it queues the correction once committed."""
    rows = rows_make()
    server = listen()
    with django_capture_on_commit_callbacks(execute=True):
        responses_recompute(patient=rows.alice)
    sent = len(server.received)
    assert sent == 2 and all(_segments(t)["OBR"][0][25] == "F" for t in server.received)
    LesionMeasurement.objects.filter(pk=rows.at_followup.pk).update(
        review_state="pending", override_longest_diameter_mm=None, longest_diameter_mm=45.0
    )
    with django_capture_on_commit_callbacks(execute=True):
        responses_recompute(patient=rows.alice, trigger="reprocessed")
    (text,) = server.received[sent:]
    assert rows.followup.study_instance_uid in text
    assert _segments(text)["OBR"][0][25] == "C"
    assert _obx(text)["RECIST11"][5].startswith("PD^")
    assert _obx(text)["RESSTATE"][5].startswith("pending-review^")


def test_a_result_never_accepted_as_final_is_not_corrected(listen):
    """A preliminary sent by hand is no final result: it goes on its own only once
    final, and then as F."""
    rows = rows_make()
    server = listen()
    LesionMeasurement.objects.filter(pk=rows.at_followup.pk).update(review_state="pending")
    assert hl7_study_send(assessment=rows.response, **NO_WAIT).status == "sent"  # by hand
    assert _segments(server.received[0])["OBR"][0][25] == "P"
    assert _obx(server.received[0])["RESSTATE"][11] == "P"
    rows.response.recist_response = "SD"
    rows.response.save()
    assert hl7_final_responses_unsent(patient_id=rows.alice.pk) == [] or all(
        a.pk != rows.response.pk for a in hl7_final_responses_unsent(patient_id=rows.alice.pk)
    )
    LesionMeasurement.objects.filter(pk=rows.at_followup.pk).update(review_state="accepted")
    assert hl7_study_send_task(rows.response.pk) == "sent"
    assert _segments(server.received[-1])["OBR"][0][25] == "F"


def test_changed_final_values_go_as_a_correction_and_the_first_result_as_final(listen):
    rows = rows_make()
    server = listen()
    # Revised before anything was sent (NE until links were confirmed): still the first
    # result the EHR gets, so F, and FHIR final, the revision riding along.
    ResponseAssessment.objects.filter(pk=rows.response.pk).update(
        revisions=[{"at": "2024-04-11T09:00:00+00:00", "field": "recist_response",
                    "from": "NE", "to": "PR", "reason": "review: proposed links confirmed"}]
    )  # fmt: skip
    rows.response.refresh_from_db()
    assert hl7_study_send(assessment=rows.response, **NO_WAIT).status == "sent"
    assert _segments(server.received[0])["OBR"][0][25] == "F"
    assert "RESPREV" in _obx(server.received[0])
    report = patient_resources_build(record=patient_record_load(pk=rows.alice.pk)).find(
        "DiagnosticReport", response_fhir_id(rows.followup.study_instance_uid)
    )
    assert report["status"] == "final"
    assert [e for e in report["extension"] if e["url"] == RESPONSE_REVISION_EXTENSION]
    assert fhir_push_plan(resources=[report], previous={}).resources[0]["status"] == "final"

    # A radiologist edits the diameter again; PR stays PR: the EHR's final differs.
    LesionMeasurement.objects.filter(pk=rows.at_followup.pk).update(
        override_longest_diameter_mm=24.0
    )
    ResponseAssessment.objects.filter(pk=rows.response.pk).update(
        sum_diameters_mm=24.0, pct_change_baseline=-20.0, pct_change_nadir=-20.0
    )
    rows.response.refresh_from_db()
    assert hl7_study_send(assessment=rows.response, **NO_WAIT).status == "sent"
    seg = _segments(server.received[1])
    assert seg["OBR"][0][25] == "C" and {o[11] for o in seg["OBX"]} == {"C"}
    assert _obx(server.received[1])["SOD"][5] == "24"
    assert "RESSTATE" not in _obx(server.received[1])  # final: nothing pending to say


def test_a_final_result_sent_before_these_fields_is_not_sent_again(listen):
    """Digests kept before a result could say it is pending or provisionally linked stay
    valid for a final result that says the same: no flood of resends."""
    rows = rows_make()
    server = listen()
    result = study_result_load(rows.response)
    old = {k: v for k, v in asdict(result).items()}
    for name in ("computed_at", "pending", "correction"):
        old.pop(name)
    for target in old["targets"]:
        target.pop("link_provisional")
    digest = hashlib.sha256(json.dumps(old, sort_keys=True, default=str).encode()).hexdigest()
    ResultMessage.objects.create(
        patient=rows.alice, study_instance_uid=result.study_instance_uid, control_id="OLD1",
        content_sha256=digest, result_status="F", destination="x:1", status="accepted",
    )  # fmt: skip
    assert rows.response.pk not in [a.pk for a in hl7_results_due().assessments]
    assert hl7_study_send(assessment=rows.response, **NO_WAIT).status == "unchanged"
    assert server.received == []


# --------------------------------------------------------------------------- 1: withdrawals
def _move_followup_to_bob(rows) -> None:
    LesionMeasurement.objects.filter(study=rows.followup).delete()
    rows.followup.patient = rows.bob
    rows.followup.save()


def test_a_study_moved_away_is_withdrawn_under_the_patient_it_was_sent_for(listen):
    rows = rows_make()
    server = listen()
    assert hl7_study_send(assessment=rows.response, **NO_WAIT).status == "sent"
    _move_followup_to_bob(rows)
    responses_recompute(patient=rows.alice, trigger="study moved")
    assert not ResponseAssessment.objects.filter(study=rows.followup, patient=rows.alice).exists()

    outcomes = hl7_results_send_due(**NO_WAIT)  # the scheduled catch-up
    uid = rows.followup.study_instance_uid
    (withdrawn,) = [o for o in outcomes if o.message.result_status == "W"]
    assert withdrawn.status == "sent" and "(withdrawal)" in withdrawn.line()
    (text,) = [t for t in server.received[1:] if uid in t]
    seg, obx = _segments(text), _obx(text)
    assert seg["PID"][0][3].startswith("MRN-A^") and "MRN-B" not in text and "Jones" not in text
    assert seg["OBR"][0][25] == "C" and {o[11] for o in seg["OBX"]} == {"W"}
    assert obx["110180"][5] == uid
    assert "wrong patient" in obx["RESPWDRN"][5]
    assert obx["RECIST11"][5] == "" and obx["SOD"][5] == ""  # marked wrong, no value
    assert (
        ResultMessage.objects.filter(patient=rows.alice, study_instance_uid=uid)
        .first()
        .result_status
        == "W"
    )
    # Withdrawn once: the catch-up finds nothing more.
    assert hl7_results_due().withdrawals == []
    assert hl7_results_send_due(**NO_WAIT) == []


def test_the_on_commit_trigger_withdraws_a_study_moved_away(
    listen, django_capture_on_commit_callbacks
):
    rows = rows_make()
    server = listen()
    assert hl7_study_send(assessment=rows.response, **NO_WAIT).status == "sent"
    _move_followup_to_bob(rows)
    with django_capture_on_commit_callbacks(execute=False) as queued:
        responses_recompute(patient=rows.alice, trigger="study moved")
    assert len(server.received) == 1  # nothing leaves before the commit
    for callback in queued:
        callback()
    uid = rows.followup.study_instance_uid
    (text,) = [t for t in server.received[1:] if uid in t]
    assert {o[11] for o in _segments(text)["OBX"]} == {"W"}


def test_a_removed_study_is_withdrawn_and_so_counted_by_the_task(listen):
    rows = rows_make()
    rows.followup.accession_number = "ACC-FOLLOWUP"
    rows.followup.save()
    server = listen()
    assert hl7_study_send(assessment=rows.response, **NO_WAIT).status == "sent"
    assert (
        hl7_study_send(
            assessment=ResponseAssessment.objects.get(study=rows.baseline), **NO_WAIT
        ).status
        == "sent"
    )
    uid = rows.followup.study_instance_uid
    accession, study_date = rows.followup.accession_number, rows.followup.study_date
    assert accession and study_date
    for series in rows.followup.series.all():  # studies, series and instances are protected
        series.instances.all().delete()
        series.delete()
    rows.followup.delete()  # its assessment and measurements go with it
    assert hl7_results_send_task() == 1
    text = server.received[-1]
    assert uid in text and "removed" in _obx(text)["RESPWDRN"][5]
    assert {o[11] for o in _segments(text)["OBX"]} == {"W"}
    # The EHR matches the withdrawal to the order its result answered, kept when sent.
    obr = _segments(text)["OBR"][0]
    assert obr[3] == f"{accession}^RADTRACK" and obr[18] == accession
    assert obr[7] == study_date.strftime("%Y%m%d")
    assert hl7_results_send_task() == 0


def test_a_study_back_after_a_withdrawal_is_a_new_final_result(listen):
    rows = rows_make()
    server = listen()
    assert hl7_study_send(assessment=rows.response, **NO_WAIT).status == "sent"
    response_values = {
        f.name: getattr(rows.response, f.name)
        for f in ResponseAssessment._meta.fields
        if f.name not in {"id", "patient", "study", "computed_at"}
    }
    rows.response.delete()
    hl7_results_send_due(**NO_WAIT)
    uid = rows.followup.study_instance_uid
    assert ResultMessage.objects.filter(study_instance_uid=uid).first().result_status == "W"
    back = ResponseAssessment.objects.create(
        patient=rows.alice, study=rows.followup, **response_values
    )
    assert hl7_study_send(assessment=back, **NO_WAIT).status == "sent"
    assert _segments(server.received[-1])["OBR"][0][25] == "F"


# --------------------------------------------------------------------------- 2: one finality rule
@pytest.mark.parametrize(
    "response, measurement",
    [
        ({"possible_non_target_progression": True, "needs_attention": True}, {}),
        ({"needs_attention": True}, {}),
        ({"pending_new_lesions": 1}, {}),
        ({"possible_non_target_progression": True}, {}),
        ({"recist_response": "NE"}, {}),
        ({"irecist_response": "NE"}, {}),
        ({}, {"finding_state": "equivocal"}),
        ({}, {"finding_state": "not_found"}),
        ({}, {"review_state": "pending"}),
        ({}, {"link_provisional": True}),
    ],
)
def test_hl7_and_fhir_agree_a_response_is_not_final(response, measurement):
    rows = rows_make()
    ResponseAssessment.objects.filter(pk=rows.response.pk).update(**response)
    LesionMeasurement.objects.filter(pk=rows.at_followup.pk).update(**measurement)
    rows.response.refresh_from_db()
    report = patient_resources_build(record=patient_record_load(pk=rows.alice.pk)).find(
        "DiagnosticReport", response_fhir_id(rows.followup.study_instance_uid)
    )
    assert (study_result_load(rows.response).status, report["status"]) == ("P", "preliminary")


def test_hl7_and_fhir_agree_a_response_is_final():
    rows = rows_make()
    report = patient_resources_build(record=patient_record_load(pk=rows.alice.pk)).find(
        "DiagnosticReport", response_fhir_id(rows.followup.study_instance_uid)
    )
    assert (study_result_load(rows.response).status, report["status"]) == ("F", "final")


# --------------------------------------------------------------------------- 3: provisional links
def test_a_provisional_link_is_never_final_in_fhir_or_hl7():
    rows = rows_make()
    LesionMeasurement.objects.filter(pk=rows.at_followup.pk).update(
        link_provisional=True, review_state="accepted"
    )
    resources = patient_resources_build(record=patient_record_load(pk=rows.alice.pk))
    group_id = measurement_fhir_id(rows.lesion.tracking_uid, rows.followup.study_instance_uid)
    group = resources.find("Observation", group_id)
    assert group["status"] == "preliminary"
    (link,) = [c for c in group["component"] if c["code"]["coding"][0]["code"] == "link"]
    coding = link["valueCodeableConcept"]["coding"][0]
    assert (coding["system"], coding["code"]) == (LESION_LINK_SYSTEM, "provisional")
    for suffix in ("-volume", "-long-axis", "-short-axis"):
        assert resources.find("Observation", f"{group_id}{suffix}")["status"] == "preliminary"
    # The baseline's row is not provisional: final, and no link component.
    base = resources.find(
        "Observation",
        measurement_fhir_id(rows.lesion.tracking_uid, rows.baseline.study_instance_uid),
    )
    assert base["status"] == "final"
    assert not [c for c in base["component"] if c["code"]["coding"][0]["code"] == "link"]


def test_a_provisional_link_is_sent_as_preliminary_over_hl7_with_its_note(listen):
    rows = rows_make()
    server = listen()
    LesionMeasurement.objects.filter(pk=rows.at_followup.pk).update(
        link_provisional=True, review_state="accepted"
    )
    rows.response.refresh_from_db()
    assert hl7_final_responses_unsent(patient_id=rows.alice.pk) == [
        ResponseAssessment.objects.get(study=rows.baseline)
    ]
    assert hl7_study_send(assessment=rows.response, **NO_WAIT).status == "sent"  # by hand
    text = server.received[0]
    lesion_rows = [o for o in _segments(text)["OBX"] if o[4] == "1"]
    assert lesion_rows and {o[11] for o in lesion_rows} <= {"P", "X"}
    assert any("provisional" in n for n in _notes_after(text, "FINDSTATE"))


def test_measurements_accepted_with_provisional_links_stay_preliminary_in_fhir():
    """The realistic path: no registration of the follow-up, links placed by landmarks;
    a radiologist accepts each measurement, which does not confirm its link."""
    patient = PatientFactory(patient_id="PROV-1")
    plan = [
        [(1, "liver", LIVER, 14.0, 32.0), (2, "lung", LUNG, 1.8, 16.0)],
        [(1, "liver", LIVER, 9.0, 27.0), (2, "lung", LUNG, 1.2, 14.0)],
    ]
    for index, found in enumerate(plan):
        study = StudyFactory(
            patient=patient, study_date=BASELINE_DATE + dt.timedelta(days=91 * index)
        )
        series = SeriesFactory(study=study, state="processed")
        study.chosen_series = series
        study.save()
        Segmentation.objects.create(
            series=series, mask_path=f"m/{index}.nii.gz", model_name="t", model_version="1",
            lesions=[candidate(k, o, np.asarray(c), v, d) for k, o, c, v, d in found],
        )  # fmt: skip
    patient_track(patient=patient)
    user = UserFactory(groups=["radiologist"])
    found = LesionMeasurement.objects.filter(lesion__patient=patient)
    for lesion_uid, study_id in found.values_list("lesion__tracking_uid", "study_id"):
        # Each decision rebuilds the patient's rows: look the next one up afresh.
        row = found.get(lesion__tracking_uid=lesion_uid, study_id=study_id)
        measurement_accept(user=user, measurement=row)
    rows = list(
        LesionMeasurement.objects.filter(lesion__patient=patient).select_related("study", "lesion")
    )
    provisional = [m for m in rows if m.link_provisional]
    assert provisional and all(m.review_state == "accepted" for m in rows)
    resources = patient_resources_build(record=patient_record_load(pk=patient.pk))
    for m in provisional:
        group = resources.find(
            "Observation", measurement_fhir_id(m.lesion.tracking_uid, m.study.study_instance_uid)
        )
        assert group["status"] == "preliminary"
        assert any(c["code"]["coding"][0]["code"] == "link" for c in group["component"])
    follow_up = provisional[0].study
    report = resources.find("DiagnosticReport", response_fhir_id(follow_up.study_instance_uid))
    assert report["status"] == "preliminary"
    assessment = ResponseAssessment.objects.get(study=follow_up)
    assert study_result_load(assessment).status == "P"


# --------------------------------------------------------------------------- 6: FHIR push
def test_the_push_plan_never_takes_a_final_report_back_to_preliminary():
    before = {"resourceType": "DiagnosticReport", "id": "r1", "status": "final",
              "code": {"text": "x"}, "conclusion": "PR"}  # fmt: skip
    from analytics.fhir.push import _content_hash

    previous = {
        "DiagnosticReport/r1": {
            "hash": _content_hash(before),
            "status": "final",
            "resource": before,
        }
    }
    plan = fhir_push_plan(
        resources=[{**before, "status": "preliminary", "conclusion": "PD"}], previous=previous
    )
    (sent,) = plan.resources
    assert sent["status"] == "amended" and plan.amended == 1
    assert sent["conclusion"].startswith(AWAITING_REVIEW) and sent["conclusion"].endswith("PD")
    # The same content, now preliminary only (a sign-off gone stale): amended too.
    plan = fhir_push_plan(resources=[{**before, "status": "preliminary"}], previous=previous)
    assert plan.resources[0]["status"] == "amended"
    # Final again after an amendment: amended, without the word about review.
    again = {"DiagnosticReport/r1": plan.state["DiagnosticReport/r1"]}
    plan = fhir_push_plan(resources=[before], previous=again)
    assert plan.resources[0]["status"] == "amended" and plan.resources[0]["conclusion"] == "PR"
    # Never pushed as final before: preliminary stays preliminary.
    plan = fhir_push_plan(resources=[{**before, "status": "preliminary"}], previous={})
    assert plan.resources[0]["status"] == "preliminary" and plan.amended == 0


def test_a_pushed_final_report_whose_response_changed_and_awaits_review_goes_as_amended(ehr):
    rows = rows_make()
    fhir_patient_push(pk=rows.alice.pk, server_url=ehr.url, retry_wait_s=0)
    report_ref = f"DiagnosticReport/{response_fhir_id(rows.followup.study_instance_uid)}"
    group_ref = f"Observation/{measurement_fhir_id(rows.lesion.tracking_uid, rows.followup.study_instance_uid)}"
    pushed = FhirPushRecord.objects.get(patient=rows.alice).resources
    assert pushed[report_ref]["status"] == "final" and pushed[group_ref]["status"] == "final"

    _revised_to_pd_pending_review(rows)
    result = fhir_patient_push(pk=rows.alice.pk, server_url=ehr.url, retry_wait_s=0)
    sent = {e["fullUrl"].split("/fhir/")[-1] if "/fhir/" in e.get("fullUrl", "") else
            f"{e['resource']['resourceType']}/{e['resource']['id']}": e["resource"]
            for e in ehr.received[-1]["entry"]}  # fmt: skip
    report = sent[report_ref]
    assert report["status"] == "amended" and report["conclusion"].startswith(AWAITING_REVIEW)
    assert any(c["coding"][0]["code"] == "PD" for c in report["conclusionCode"])
    group = sent[group_ref]
    assert group["status"] == "amended" and group["note"][0]["text"] == AWAITING_REVIEW
    assert result.amended >= 2
    assert "preliminary" not in {
        sent[ref]["status"] for ref in sent if pushed.get(ref, {}).get("status") == "final"
    }
