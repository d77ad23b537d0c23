"""Sending each assessed study's response to the EHR as an ORU^R01 over MLLP, and recording it.

The destination is ``RADTRACK_HL7_HOST:RADTRACK_HL7_PORT``. Each message waits for its
ACK: AA is accepted; AE (application error), no answer or a broken connection are tried
again (``RADTRACK_HL7_ATTEMPTS`` in all, waiting 1 s then doubling); AR (rejected) is
not, and the reason the EHR gave is kept. Every message sent is a `ResultMessage` row
with its control id, the ACK code and the error (no patient data in it, nor in logs).
A study whose last accepted message said the same (`study_result_digest`) is not sent
again unless forced.

A response is **final** (`response_is_final`) when nothing about it waits for a person:
a radiologist reviewed (accepted or edited) every measurement it rests on (this study's
and every earlier one's, rejected findings left out); no finding at the study is
equivocal or not found; no equivocal new lesion awaits confirmation (a PD pending
confirmation is not final); its category is not NE (RECIST 1.1, nor iRECIST when it
applies); and it is not flagged for attention (a provisional link, a possible
non-target progression a radiologist has not decided). Only final responses go out on
their own, as F, or as C when a category was revised after being assessed: the moment
one becomes final (`analytics.hl7.events` queues it when its responses are written), and
on the scheduled catch-up (`hl7_results_send_due`) for any a send missed or failed.
Preliminary ones go out only when asked for by hand (``push_hl7``), as P.

Values a lesion does not have at the study (not found, merged into another lesion,
too small to measure, no volume when measured by hand) are sent as missing, with the
reason, never as 0 (`lesion_result`); findings rejected by a radiologist, at that row or
for the whole lesion, are not sent.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from analytics.hl7.message import (
    Ack,
    AckError,
    LesionResult,
    StudyResult,
    ack_read,
    oru_r01_build,
    study_result_digest,
)
from analytics.hl7.mllp import MLLPError, mllp_exchange
from analytics.lesions.core.readings import TOO_SMALL_MM
from analytics.models import ResponseAssessment
from imaging.models import LesionMeasurement, Study
from patients.ehr.identifiers import mrn_system
from patients.models import Patient, ResultMessage

__all__ = [
    "HL7NotConfigured",
    "HL7SendOutcome",
    "hl7_configured",
    "hl7_final_responses_unsent",
    "hl7_results_send_due",
    "hl7_study_send",
    "lesion_result",
    "response_is_final",
    "study_result_load",
]

logger = logging.getLogger(__name__)
_REVIEWED = {LesionMeasurement.Review.ACCEPTED, LesionMeasurement.Review.EDITED}
Status = LesionMeasurement.Status
State = LesionMeasurement.FindingState
#: Finding states at the study that keep its response from being final.
_UNSETTLED = {State.EQUIVOCAL, State.NOT_FOUND}
_FIELD_NAMES = {
    "recist_response": "RECIST 1.1",
    "volumetric_response": "volumetric",
    "irecist_response": "iRECIST",
}


class HL7NotConfigured(RuntimeError):
    """No ``RADTRACK_HL7_HOST`` is set."""


@dataclass(frozen=True)
class HL7SendOutcome:
    """What became of one study: ``sent`` (accepted), ``unchanged`` (not sent again),
    ``rejected`` or ``failed``, with the message row when one was sent."""

    study_instance_uid: str
    status: str
    message: ResultMessage | None = None

    def line(self) -> str:
        text = f"study {self.study_instance_uid}: {self.status}"
        if self.message is not None:
            text += f" (control id {self.message.control_id}"
            text += f", ACK {self.message.ack_code})" if self.message.ack_code else ")"
            if self.message.error:
                text += f": {self.message.error}"
        return text


def patient_measurements(patient_id: int) -> list[LesionMeasurement]:
    """The patient's measurements a response may rest on: rejected findings (the row,
    or the whole lesion) left out."""
    return list(
        LesionMeasurement.objects.filter(lesion__patient_id=patient_id)
        .exclude(review_state=LesionMeasurement.Review.REJECTED)
        .exclude(finding_state=State.REJECTED)
        .select_related("lesion", "study", "merged_into")
    )


def _measurements_up_to(
    assessment: ResponseAssessment, rows: list[LesionMeasurement]
) -> list[LesionMeasurement]:
    """Of ``rows``, those at this study and every earlier one (undated ones count: the
    safe side), which the response rests on."""
    day = assessment.study.study_date
    return [
        m
        for m in rows
        if m.study_id == assessment.study_id
        or day is None
        or m.study.study_date is None
        or m.study.study_date <= day
    ]


def response_is_final(
    *, assessment: ResponseAssessment, measurements: list[LesionMeasurement]
) -> bool:
    """Whether ``assessment`` is final (module docstring); ``measurements`` are those it
    rests on (`patient_measurements`, up to its study)."""
    a = assessment
    if a.recist_response == "NE" or a.irecist_response == "NE":
        return False
    if a.pending_new_lesions or a.needs_attention:
        return False
    if any(m.study_id == a.study_id and m.finding_state in _UNSETTLED for m in measurements):
        return False
    return all(m.review_state in _REVIEWED for m in measurements)


def _absent_reason(m: LesionMeasurement) -> str:
    """Why the lesion has no values at this study ("" when it has them)."""
    if m.status == Status.MERGED:
        into = m.merged_into.label if m.merged_into_id and m.merged_into else "another lesion"
        return f"merged into {into}: measured as part of it (RECIST 1.1 section 4.3.2)"
    if m.status == Status.NOT_FOUND or m.finding_state == State.NOT_FOUND:
        return m.state_reason or "not found at this study, needs review"
    if m.too_small and m.status != Status.RESOLVED:
        return (
            f"present but too small to measure: RECIST 1.1 counts it {TOO_SMALL_MM:g} mm "
            "(section 4.3.2)"
        )
    return ""


def lesion_result(m: LesionMeasurement) -> LesionResult:
    """A target lesion's OBX values: in force, 0 when confirmed gone, None (with the
    reason) when it has none here."""
    why = _absent_reason(m)
    if why:
        long_mm = short_mm = volume = None
    elif m.status == Status.RESOLVED:
        long_mm = short_mm = volume = 0.0
    else:
        long_mm, short_mm = m.effective_longest_diameter_mm, m.effective_short_axis_mm
        volume = m.effective_volume_ml
        if volume is None:
            why = "no volume: the lesion was measured by hand"
    return LesionResult(
        tracking_id=m.lesion.label,
        tracking_uid=m.lesion.tracking_uid,
        long_axis_mm=long_mm,
        short_axis_mm=short_mm,
        volume_ml=volume,
        finding_state=m.finding_state,
        state_reason=m.state_reason,
        absent_reason=why,
    )


def _revision_lines(assessment: ResponseAssessment) -> tuple[str, ...]:
    lines = []
    for r in assessment.revisions or []:
        if isinstance(r, dict):
            what = _FIELD_NAMES.get(r.get("field", ""), str(r.get("field", "")))
            lines.append(
                f"{what} {r.get('from', '')} -> {r.get('to', '')} on {r.get('at', '')}: "
                f"{r.get('reason', '')}"
            )
    return tuple(lines)


def study_result_load(
    assessment: ResponseAssessment, *, measurements: list[LesionMeasurement] | None = None
) -> StudyResult:
    """What the ORU^R01 of ``assessment``'s study says (values in force).

    ``measurements``: the patient's (`patient_measurements`), when already loaded.
    """
    rows = patient_measurements(assessment.patient_id) if measurements is None else measurements
    measurements = _measurements_up_to(assessment, rows)
    patient: Patient = assessment.patient
    parts = patient.name.split("^")
    targets = [m for m in measurements if m.study_id == assessment.study_id and m.is_target]
    return StudyResult(
        mrn=patient.patient_id,
        mrn_system=mrn_system(),
        family_name=parts[0].strip() if parts else "",
        given_name=parts[1].strip() if len(parts) > 1 else "",
        birth_date=patient.birth_date,
        sex=patient.sex,
        study_instance_uid=assessment.study.study_instance_uid,
        accession_number=assessment.study.accession_number or "",
        study_date=assessment.study.study_date,
        computed_at=assessment.computed_at,
        is_baseline=assessment.is_baseline,
        recist=assessment.recist_response or "",
        volumetric=assessment.volumetric_response or "",
        note=str(assessment.response_note or ""),
        sum_diameters_mm=assessment.sum_diameters_mm,
        total_volume_ml=assessment.total_volume_ml,
        pct_change_baseline=assessment.pct_change_baseline,
        pct_change_nadir=assessment.pct_change_nadir,
        new_lesions=assessment.new_lesions,
        final=response_is_final(assessment=assessment, measurements=measurements),
        targets=tuple(lesion_result(m) for m in sorted(targets, key=lambda m: m.lesion.label)),
        irecist=assessment.irecist_response or "",
        progression_dated_from=assessment.progression_dated_from,
        revisions=_revision_lines(assessment),
    )


def hl7_configured() -> bool:
    """Whether a receiver is set (``RADTRACK_HL7_HOST``)."""
    return bool(settings.RADTRACK_HL7_HOST)


def _destination() -> tuple[str, int]:
    host = settings.RADTRACK_HL7_HOST
    if not host:
        raise HL7NotConfigured(
            "no HL7 receiver is configured: set RADTRACK_HL7_HOST (and RADTRACK_HL7_PORT)"
        )
    return host, int(settings.RADTRACK_HL7_PORT)


def _exchange(text: str, control_id: str, row: ResultMessage, sleep) -> Ack | None:
    """Send until accepted, rejected or out of attempts; the last ACK (None if none)."""
    host, port = _destination()
    attempts = max(1, int(settings.RADTRACK_HL7_ATTEMPTS))
    wait = 1.0
    ack: Ack | None = None
    for attempt in range(1, attempts + 1):
        row.attempts = attempt
        try:
            answer = mllp_exchange(
                host=host,
                port=port,
                message=text.encode("utf-8"),
                timeout_s=settings.RADTRACK_HL7_TIMEOUT_S,
            )
            ack = ack_read(answer.decode("utf-8", errors="replace"))
            if ack.control_id and ack.control_id != control_id:
                raise AckError(f"the ACK is for control id {ack.control_id[:20]}, not this message")
            row.ack_code, row.error = ack.code, ack.text[:500] if not ack.accepted else ""
            if ack.accepted or not ack.retry:
                return ack
            problem = f"ACK {ack.code}"
        except (MLLPError, AckError) as exc:
            row.error = str(exc)[:500]
            problem = type(exc).__name__
        logger.warning("HL7 ORU^R01 attempt %d of %d failed: %s", attempt, attempts, problem)
        if attempt < attempts:
            sleep(wait)
            wait *= 2
    return ack


def hl7_study_send(
    *, assessment: ResponseAssessment, force: bool = False, sleep=time.sleep
) -> HL7SendOutcome:
    """Send ``assessment``'s study as an ORU^R01 unless the EHR already accepted the same.

    Raises `HL7NotConfigured` without a destination.
    """
    host, port = _destination()
    # One sender per study at a time (the event task and the catch-up job may meet): the
    # study's row stays locked until this message's outcome is saved, so a second sender
    # sees it and finds the content unchanged.
    with transaction.atomic():
        Study.objects.select_for_update().filter(pk=assessment.study_id).first()
        return _study_send_locked(assessment, host, port, force=force, sleep=sleep)


def _study_send_locked(
    assessment: ResponseAssessment, host: str, port: int, *, force: bool, sleep
) -> HL7SendOutcome:
    result = study_result_load(assessment)
    digest = study_result_digest(result)
    uid = result.study_instance_uid
    already = ResultMessage.objects.filter(
        study_instance_uid=uid, status=ResultMessage.Status.ACCEPTED
    ).first()
    if already is not None and already.content_sha256 == digest and not force:
        return HL7SendOutcome(uid, "unchanged")
    control_id = uuid.uuid4().hex[:20]
    text = oru_r01_build(
        result=result,
        control_id=control_id,
        sending_facility=settings.RADTRACK_HL7_SENDING_FACILITY,
        receiving_application=settings.RADTRACK_HL7_RECEIVING_APPLICATION,
        receiving_facility=settings.RADTRACK_HL7_RECEIVING_FACILITY,
        at=timezone.now(),
    )
    row = ResultMessage(
        patient_id=assessment.patient_id,
        study_instance_uid=uid,
        control_id=control_id,
        content_sha256=digest,
        result_status=result.status,
        destination=f"{host}:{port}"[:255],
        status=ResultMessage.Status.FAILED,
    )
    ack = _exchange(text, control_id, row, sleep)
    if ack is not None and ack.accepted:
        row.status = ResultMessage.Status.ACCEPTED
    elif ack is not None and ack.code in {"AE", "AR", "CE", "CR"}:
        row.status = ResultMessage.Status.REJECTED
        row.error = row.error or f"the EHR answered {ack.code} without a reason"
    row.save()
    logger.info(
        "HL7 ORU^R01 of patient %d: %s after %d attempt(s)",
        assessment.patient_id,
        row.status,
        row.attempts,
    )
    status = {"accepted": "sent", "rejected": "rejected"}.get(row.status, "failed")
    return HL7SendOutcome(uid, status, row)


def _accepted_digests(study_uids: set[str]) -> dict[str, str]:
    """The content digest of the latest message the EHR accepted, per Study Instance UID."""
    latest: dict[str, str] = {}
    accepted = (
        ResultMessage.objects.filter(
            study_instance_uid__in=study_uids, status=ResultMessage.Status.ACCEPTED
        )
        .order_by("-created_at", "-pk")
        .values_list("study_instance_uid", "content_sha256")
    )
    for uid, digest in accepted:
        latest.setdefault(uid, digest)
    return latest


def hl7_final_responses_unsent(*, patient_id: int | None = None) -> list[ResponseAssessment]:
    """The final responses (of one patient, or all) whose content the EHR has not
    accepted yet, by patient and study date: the patient's measurements are read once."""
    assessments = ResponseAssessment.objects.select_related("patient", "study").order_by(
        "patient_id", "study__study_date", "pk"
    )
    if patient_id is not None:
        assessments = assessments.filter(patient_id=patient_id)
    by_patient: dict[int, list[ResponseAssessment]] = {}
    for assessment in assessments:
        by_patient.setdefault(assessment.patient_id, []).append(assessment)
    due = []
    for pk, mine in by_patient.items():
        rows = patient_measurements(pk)
        accepted = _accepted_digests({a.study.study_instance_uid for a in mine})
        for assessment in mine:
            result = study_result_load(assessment, measurements=rows)
            if result.final and accepted.get(result.study_instance_uid) != study_result_digest(
                result
            ):
                due.append(assessment)
    return due


def hl7_results_send_due(*, sleep=time.sleep) -> list[HL7SendOutcome]:
    """Send every final response whose content the EHR has not accepted yet (the
    scheduled catch-up behind the sends queued when a response becomes final)."""
    outcomes = []
    for assessment in hl7_final_responses_unsent():
        outcome = hl7_study_send(assessment=assessment, sleep=sleep)
        if outcome.status != "unchanged":
            outcomes.append(outcome)
    return outcomes
