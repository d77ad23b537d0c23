"""Celery tasks of HL7 results out (`analytics.hl7.send`): one response sent when it becomes
final (queued by `analytics.hl7.events`), and the catch-up that sends every final response
the EHR has not accepted yet, scheduled every ``RADTRACK_HL7_INTERVAL_S`` when
``RADTRACK_HL7_HOST`` is set (``CELERY_BEAT_SCHEDULE``). Both wait on the EHR's MLLP
peer, so they go to the ``export`` queue with the other sends out (docs/deploy.md,
"Queues"), never holding a ``cpu`` worker."""

from analytics.hl7.send import (
    hl7_configured,
    hl7_results_send_due,
    hl7_study_send,
    study_result_load,
)
from analytics.models import ResponseAssessment
from radtrack.celery import radtrack_task


@radtrack_task(queue="export")
def hl7_study_send_task(assessment_pk: int) -> str:
    """Send one study's response if it is still final: ``sent``, ``unchanged``,
    ``rejected`` or ``failed`` (the catch-up tries again), or why nothing was sent
    (``gone``, ``not final``, ``not configured``)."""
    assessment = (
        ResponseAssessment.objects.select_related("patient", "study")
        .filter(pk=assessment_pk)
        .first()
    )
    if assessment is None:
        return "gone"
    if not hl7_configured():
        return "not configured"
    if not study_result_load(assessment).final:
        return "not final"
    return hl7_study_send(assessment=assessment).status


@radtrack_task(queue="export")
def hl7_results_send_task() -> int:
    """Send each final response not yet accepted; returns how many messages were sent."""
    return len(hl7_results_send_due())
