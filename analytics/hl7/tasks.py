"""Celery tasks of HL7 results out (`analytics.hl7.send`): one response sent when it becomes
final or must correct what the EHR holds, and one result withdrawn when RadTrack has no
response of its study for that patient any more (both queued by `analytics.hl7.events`),
and the catch-up that sends every result due (`hl7_results_send_due`), scheduled every
``RADTRACK_HL7_INTERVAL_S`` when ``RADTRACK_HL7_HOST`` is set (``CELERY_BEAT_SCHEDULE``).
All wait on the EHR's MLLP peer, so they go to the ``export`` queue with the other sends
out (docs/deploy.md, "Queues"), never holding a ``cpu`` worker."""

from analytics.hl7.send import (
    hl7_assessment_due,
    hl7_configured,
    hl7_result_withdraw,
    hl7_results_send_due,
    hl7_study_send,
    study_result_load,
)
from analytics.models import ResponseAssessment
from radtrack.celery import radtrack_task


@radtrack_task(queue="export")
def hl7_study_send_task(assessment_pk: int) -> str:
    """Send one study's response if it is still due (final and not accepted yet, or a
    correction of a final result the EHR accepted): ``sent``, ``unchanged``,
    ``rejected`` or ``failed`` (the catch-up tries again), or why nothing was sent
    (``gone``, ``not final``, ``not configured``)."""
    assessment = (
        ResponseAssessment.objects.select_related("patient", "study")
        .filter(pk=assessment_pk)
        .first()
    )
    if assessment is None or assessment.study.patient_id != assessment.patient_id:
        return "gone"  # a study moved away is withdrawn, never sent for this patient
    if not hl7_configured():
        return "not configured"
    if not study_result_load(assessment).final and not hl7_assessment_due(assessment):
        return "not final"  # and no final result the EHR holds to correct
    return hl7_study_send(assessment=assessment).status


@radtrack_task(queue="export")
def hl7_result_withdraw_task(patient_pk: int, study_instance_uid: str) -> str:
    """Withdraw the result the EHR accepted for that study under that patient, if
    RadTrack still has no response of it for them: ``sent``, ``unchanged``, ``rejected``
    or ``failed`` (the catch-up tries again), or ``not configured``."""
    if not hl7_configured():
        return "not configured"
    return hl7_result_withdraw(patient_id=patient_pk, study_instance_uid=study_instance_uid).status


@radtrack_task(queue="export")
def hl7_results_send_task() -> int:
    """Send each result due (withdrawals, final responses not yet accepted, corrections);
    returns how many messages were sent."""
    return len(hl7_results_send_due())
