"""Sending each assessed study's response to the EHR as an ORU^R01 over MLLP, and recording it.

The destination is ``RADTRACK_HL7_HOST:RADTRACK_HL7_PORT``. Each message waits for its
ACK: AA is accepted; AE (application error), no answer or a broken connection are tried
again (``RADTRACK_HL7_ATTEMPTS`` in all, waiting 1 s then doubling); AR (rejected) is
not, and the reason the EHR gave is kept. Every message sent is a `ResultMessage` row
with its control id, the ACK code and the error (no patient data in it, nor in logs).
A study whose last accepted message said the same (`study_result_digest`) is not sent
again unless forced.

A response is **final** by the one rule FHIR follows too
(`analytics.lesions.finality`): nothing about it waits for a person. Final responses go
out on their own, as F: the moment one becomes final (`analytics.hl7.events` queues it
when its responses are written), and on the scheduled catch-up (`hl7_results_send_due`)
for any a send missed or failed. Preliminary ones go out only when asked for by hand
(``push_hl7``), as P.

What the EHR holds decides corrections, not the assessment's own revision history
(`EHRHolds`, read from the accepted `ResultMessage` rows of the study and the patient
it was sent for): once the EHR accepted a final result for a study, anything RadTrack
says differently afterwards goes on its own as a correction (C), whether or not it is
final now (a result that is not final any more says so: pending review, and why), and
a study RadTrack no longer has a response of for that patient (moved to another patient,
removed, its findings all rejected) gets a withdrawal under the patient the result was
sent for (`hl7_result_withdraw`; OBX-11 W). The first result the EHR gets for a study
is never a correction, whatever its category went through before. Both the on-commit
trigger and the catch-up find these (`hl7_results_due`).

Values a lesion does not have at the study (not found, merged into another lesion,
too small to measure, no volume when measured by hand) are sent as missing, with the
reason, never as 0 (`lesion_result`); so are those of a lesion seen whose size is not
assessable (it reaches the edge of what was imaged: never its cut numbers); findings rejected by a radiologist, at that row or
for the whole lesion, are not sent.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from dataclasses import dataclass, field, replace

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from analytics.hl7.holds import EHRHolds, accepted_holds, last_accepted
from analytics.hl7.message import (
    CORRECTION_STATUS,
    WITHDRAWN_STATUS,
    Ack,
    AckError,
    LesionResult,
    ResultWithdrawal,
    StudyResult,
    ack_read,
    oru_r01_build,
    oru_r01_withdrawal_build,
    study_result_digest,
    withdrawal_digest,
)
from analytics.hl7.mllp import MLLPError, mllp_exchange
from analytics.lesions.core.readings import TOO_SMALL_MM
from analytics.lesions.finality import (
    measurements_up_to,
    response_is_final,
    response_pending_reasons,
)
from analytics.models import ResponseAssessment
from imaging.models import LesionMeasurement, Study
from patients.ehr.identifiers import mrn_system
from patients.models import Patient, ResultMessage

__all__ = [
    "HL7Due",
    "HL7NotConfigured",
    "HL7SendOutcome",
    "hl7_assessment_due",
    "hl7_configured",
    "hl7_final_responses_unsent",
    "hl7_result_withdraw",
    "hl7_results_due",
    "hl7_results_send_due",
    "hl7_study_send",
    "lesion_result",
    "response_is_final",
    "study_result_load",
]

logger = logging.getLogger(__name__)
Status = LesionMeasurement.Status
State = LesionMeasurement.FindingState
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
        if self.message is not None and self.message.result_status == WITHDRAWN_STATUS:
            text += " (withdrawal)"
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


def _absent_reason(m: LesionMeasurement) -> str:
    """Why the lesion has no values at this study ("" when it has them)."""
    if m.status == Status.MERGED:
        into = m.merged_into.label if m.merged_into_id and m.merged_into else "another lesion"
        return f"merged into {into}: measured as part of it (RECIST 1.1 section 4.3.2)"
    if m.status == Status.NOT_FOUND or m.finding_state == State.NOT_FOUND:
        return m.state_reason or "not found at this study, needs review"
    if m.finding_state == State.NOT_ASSESSABLE:
        # Seen, but cut by the edge of what was imaged: its numbers are a lower bound.
        return m.state_reason or (
            "seen, but it reaches the edge of what was imaged, so only part of it was "
            "imaged: its size is not assessable at this study"
        )
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
        link_provisional=m.link_provisional,
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


def _patient_names(patient: Patient) -> tuple[str, str]:
    """Family and given name of a DICOM PN (``Family^Given``)."""
    parts = patient.name.split("^")
    return (parts[0].strip() if parts else "", parts[1].strip() if len(parts) > 1 else "")


def study_result_load(
    assessment: ResponseAssessment, *, measurements: list[LesionMeasurement] | None = None
) -> StudyResult:
    """What the ORU^R01 of ``assessment``'s study says (values in force).

    ``measurements``: the patient's (`patient_measurements`), when already loaded.
    """
    rows = patient_measurements(assessment.patient_id) if measurements is None else measurements
    measurements = measurements_up_to(assessment, rows)
    pending = response_pending_reasons(assessment=assessment, measurements=measurements)
    patient: Patient = assessment.patient
    family, given = _patient_names(patient)
    targets = [m for m in measurements if m.study_id == assessment.study_id and m.is_target]
    return StudyResult(
        mrn=patient.patient_id,
        mrn_system=mrn_system(),
        family_name=family,
        given_name=given,
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
        final=not pending,
        targets=tuple(lesion_result(m) for m in sorted(targets, key=lambda m: m.lesion.label)),
        irecist=assessment.irecist_response or "",
        progression_dated_from=assessment.progression_dated_from,
        revisions=_revision_lines(assessment),
        pending=pending,
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


def _send_status(*, result: StudyResult, digest: str, holds: EHRHolds | None) -> str | None:
    """What ``result`` goes out as on its own: F (final, not yet accepted), C (the EHR
    accepted a final result for the study and this one differs, final or not), or None
    (the EHR holds the same, or it is preliminary and the EHR holds no final result)."""
    if holds is not None and holds.says(digest):
        return None
    if holds is not None and holds.final:
        return CORRECTION_STATUS
    return "F" if result.final else None


def _moved_away(assessment: ResponseAssessment) -> bool:
    """The assessment's study is no longer its patient's (moved, not yet recomputed):
    RadTrack does not stand by it for that patient."""
    return assessment.study.patient_id != assessment.patient_id


# --------------------------------------------------------------------------- sending
def _deliver(text: str, row: ResultMessage, sleep, *, patient_id: int, uid: str) -> HL7SendOutcome:
    """Send ``text`` until accepted, rejected or out of attempts, and save ``row``."""
    ack = _exchange(text, row.control_id, row, sleep)
    if ack is not None and ack.accepted:
        row.status = ResultMessage.Status.ACCEPTED
    elif ack is not None and ack.code in {"AE", "AR", "CE", "CR"}:
        row.status = ResultMessage.Status.REJECTED
        row.error = row.error or f"the EHR answered {ack.code} without a reason"
    row.save()
    logger.info(
        "HL7 ORU^R01 (%s) of patient %d: %s after %d attempt(s)",
        row.result_status,
        patient_id,
        row.status,
        row.attempts,
    )
    status = {"accepted": "sent", "rejected": "rejected"}.get(row.status, "failed")
    return HL7SendOutcome(uid, status, row)


def hl7_study_send(
    *, assessment: ResponseAssessment, force: bool = False, sleep=time.sleep
) -> HL7SendOutcome:
    """Send ``assessment``'s study as an ORU^R01 unless the EHR already accepted the same:
    F or P, or C when the EHR accepted a final result for the study before and this one
    says something else (module docstring).

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
    key = (assessment.patient_id, uid)
    holds = accepted_holds(patient_id=assessment.patient_id, study_uids={uid}).get(key)
    if holds is not None and holds.says(digest) and not force:
        return HL7SendOutcome(uid, "unchanged")
    # A correction only of a final result the EHR accepted, and only when this differs.
    result = replace(
        result, correction=holds is not None and holds.final and not holds.says(digest)
    )
    control_id = uuid.uuid4().hex[:20]
    text = oru_r01_build(result=result, **_envelope(control_id))
    row = _message_row(
        patient_id=assessment.patient_id, uid=uid, control_id=control_id, digest=digest,
        result_status=result.status, host=host, port=port,
        order=(result.accession_number, result.study_date),
    )  # fmt: skip
    return _deliver(text, row, sleep, patient_id=assessment.patient_id, uid=uid)


def _envelope(control_id: str) -> dict:
    """The message header's parts every ORU^R01 RadTrack sends shares."""
    return {
        "control_id": control_id,
        "sending_facility": settings.RADTRACK_HL7_SENDING_FACILITY,
        "receiving_application": settings.RADTRACK_HL7_RECEIVING_APPLICATION,
        "receiving_facility": settings.RADTRACK_HL7_RECEIVING_FACILITY,
        "at": timezone.now(),
    }


def _message_row(
    *, patient_id: int, uid: str, control_id: str, digest: str, result_status: str,
    host: str, port: int, order: tuple[str, dt.date | None],
) -> ResultMessage:  # fmt: skip
    """The record of a message about to be sent: failed until its ACK says otherwise.
    ``order``: the accession number and study date it names (OBR-3/18, OBR-7)."""
    return ResultMessage(
        patient_id=patient_id,
        study_instance_uid=uid,
        accession_number=order[0][:64],
        study_date=order[1],
        control_id=control_id,
        content_sha256=digest,
        result_status=result_status,
        destination=f"{host}:{port}"[:255],
        status=ResultMessage.Status.FAILED,
    )


def _withdrawal_load(patient: Patient, uid: str, study: Study | None) -> ResultWithdrawal:
    """The withdrawal of ``uid``'s result sent for ``patient``; ``study``: RadTrack's
    study of that UID, if it still has one (its accession number names the order; of a
    study removed since, the order the accepted result named)."""
    accession, study_date = "", None
    if study is not None:
        accession, study_date = study.accession_number or "", study.study_date
    else:
        sent = last_accepted(patient.pk, uid)
        if sent is not None:
            accession, study_date = sent.accession_number, sent.study_date
    if study is None:
        reason = "the study was removed from RadTrack"
    elif study.patient_id != patient.pk:
        reason = "the study is no longer filed under this patient: sent for the wrong patient"
    else:
        reason = "RadTrack no longer has a response assessment of this study"
    family, given = _patient_names(patient)
    return ResultWithdrawal(
        mrn=patient.patient_id,
        mrn_system=mrn_system(),
        family_name=family,
        given_name=given,
        birth_date=patient.birth_date,
        sex=patient.sex,
        study_instance_uid=uid,
        accession_number=accession,
        study_date=study_date,
        reason=f"Result withdrawn: {reason}. RadTrack no longer stands by it.",
    )


def _response_exists(patient_id: int, uid: str) -> bool:
    return ResponseAssessment.objects.filter(
        patient_id=patient_id,
        study__study_instance_uid=uid,
        study__patient_id=patient_id,
    ).exists()


def hl7_result_withdraw(
    *, patient_id: int, study_instance_uid: str, sleep=time.sleep
) -> HL7SendOutcome:
    """Withdraw the result the EHR accepted for ``study_instance_uid`` under the patient
    with primary key ``patient_id``, when RadTrack has no response of that study for that
    patient any more (module docstring): ``sent`` (the EHR accepted the withdrawal),
    ``rejected`` or ``failed`` (the catch-up tries again), or ``unchanged`` (nothing to
    withdraw: none held, already withdrawn, or the response is back).

    Raises `HL7NotConfigured` without a destination.
    """
    host, port = _destination()
    uid = study_instance_uid
    with transaction.atomic():
        # One withdrawal of a patient's result at a time (the event task and the catch-up).
        patient = Patient.objects.select_for_update().filter(pk=patient_id).first()
        holds = accepted_holds(patient_id=patient_id, study_uids={uid}).get((patient_id, uid))
        if patient is None or holds is None or holds.withdrawn or _response_exists(patient_id, uid):
            return HL7SendOutcome(uid, "unchanged")
        study = Study.objects.filter(study_instance_uid=uid).first()
        withdrawal = _withdrawal_load(patient, uid, study)
        control_id = uuid.uuid4().hex[:20]
        text = oru_r01_withdrawal_build(withdrawal=withdrawal, **_envelope(control_id))
        row = _message_row(
            patient_id=patient_id, uid=uid, control_id=control_id,
            digest=withdrawal_digest(withdrawal), result_status=WITHDRAWN_STATUS,
            host=host, port=port, order=(withdrawal.accession_number, withdrawal.study_date),
        )  # fmt: skip
        return _deliver(text, row, sleep, patient_id=patient_id, uid=uid)


# --------------------------------------------------------------------------- what is due
@dataclass
class HL7Due:
    """What goes to the EHR on its own: ``assessments`` to send (final and not yet
    accepted, or a correction of a final result the EHR accepted), by patient and study
    date; ``withdrawals``: (patient pk, Study Instance UID) of results the EHR accepted
    that RadTrack has no response for any more."""

    assessments: list[ResponseAssessment] = field(default_factory=list)
    withdrawals: list[tuple[int, str]] = field(default_factory=list)


def hl7_results_due(*, patient_id: int | None = None) -> HL7Due:
    """What the EHR should be sent (`HL7Due`), of one patient or all, compared with what
    it accepted; each patient's measurements are read once."""
    assessments = ResponseAssessment.objects.select_related("patient", "study").order_by(
        "patient_id", "study__study_date", "pk"
    )
    if patient_id is not None:
        assessments = assessments.filter(patient_id=patient_id)
    by_patient: dict[int, list[ResponseAssessment]] = {}
    for assessment in assessments:
        if not _moved_away(assessment):
            by_patient.setdefault(assessment.patient_id, []).append(assessment)
    accepted = accepted_holds(patient_id=patient_id)
    due = HL7Due()
    current: set[tuple[int, str]] = set()
    for pk, mine in by_patient.items():
        rows = patient_measurements(pk)
        for assessment in mine:
            result = study_result_load(assessment, measurements=rows)
            key = (pk, result.study_instance_uid)
            current.add(key)
            digest = study_result_digest(result)
            if _send_status(result=result, digest=digest, holds=accepted.get(key)):
                due.assessments.append(assessment)
    due.withdrawals = sorted(
        key for key, holds in accepted.items() if key not in current and not holds.withdrawn
    )
    return due


def hl7_final_responses_unsent(*, patient_id: int | None = None) -> list[ResponseAssessment]:
    """The responses (of one patient, or all) to send on their own: final ones whose
    content the EHR has not accepted yet, and corrections of a final result it accepted
    (`hl7_results_due`, whose withdrawals this leaves out)."""
    return hl7_results_due(patient_id=patient_id).assessments


def hl7_assessment_due(assessment: ResponseAssessment) -> bool:
    """Whether ``assessment`` goes to the EHR on its own now (final and not accepted
    yet, or a correction; module docstring)."""
    if _moved_away(assessment):
        return False
    result = study_result_load(assessment)
    uid = result.study_instance_uid
    holds = accepted_holds(patient_id=assessment.patient_id, study_uids={uid}).get(
        (assessment.patient_id, uid)
    )
    return _send_status(result=result, digest=study_result_digest(result), holds=holds) is not None


def hl7_results_send_due(*, sleep=time.sleep) -> list[HL7SendOutcome]:
    """The scheduled catch-up behind the sends queued on commit: withdraw each result the
    EHR accepted that RadTrack no longer has a response for, then send every final
    response the EHR has not accepted and every correction of one it has."""
    due = hl7_results_due()
    outcomes = []
    for patient_id, uid in due.withdrawals:
        outcome = hl7_result_withdraw(patient_id=patient_id, study_instance_uid=uid, sleep=sleep)
        if outcome.status != "unchanged":
            outcomes.append(outcome)
    for assessment in due.assessments:
        outcome = hl7_study_send(assessment=assessment, sleep=sleep)
        if outcome.status != "unchanged":
            outcomes.append(outcome)
    return outcomes
