"""Sending a response to the EHR the moment it becomes final, or must correct or withdraw
what the EHR accepted: the receiver of `analytics.lesions.responses.responses_written`
queues, once the transaction that wrote them commits, one HL7 send per study whose
response is due (`analytics.hl7.send.hl7_results_due`: final and not yet accepted, or a
correction of a final result the EHR holds) and one withdrawal per result the EHR
accepted for the patient that RadTrack no longer has a response for (the study moved to
another patient or removed). The scheduled `hl7_results_send_task` stays as the catch-up
for a send that could not be queued or failed. Without a broker (tasks run in-process,
the embedded default) the send runs in the process that committed, after the commit: a
review waits for the EHR's ACK there, so a site with an HL7 receiver runs a worker.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from django.db import transaction

from analytics.hl7.send import hl7_configured, hl7_results_due
from analytics.hl7.tasks import hl7_result_withdraw_task, hl7_study_send_task
from radtrack.celery import TRANSIENT_ERRORS

__all__ = ["responses_written_receive"]

logger = logging.getLogger(__name__)


def responses_written_receive(sender: Any, *, patient: Any, **kwargs: Any) -> None:
    """Queue, on commit, each withdrawal and send of ``patient``'s results due as they
    read now (nothing when no HL7 receiver is configured)."""
    if not hl7_configured():
        return
    due = hl7_results_due(patient_id=patient.pk)
    # Withdrawals first: a result the EHR must no longer show goes before anything new.
    for patient_pk, uid in due.withdrawals:
        transaction.on_commit(partial(_queue_withdrawal, patient_pk, uid))
    for assessment in due.assessments:
        transaction.on_commit(partial(_queue, assessment.pk))


def _queue(assessment_pk: int) -> None:
    try:
        hl7_study_send_task.delay(assessment_pk)
    except TRANSIENT_ERRORS as exc:
        # The scheduled catch-up sends it (hl7_results_send_task); no patient data here.
        logger.warning(
            "HL7 send of response %d not queued (%s); the scheduled catch-up will send it",
            assessment_pk,
            type(exc).__name__,
        )


def _queue_withdrawal(patient_pk: int, uid: str) -> None:
    try:
        hl7_result_withdraw_task.delay(patient_pk, uid)
    except TRANSIENT_ERRORS as exc:
        # The scheduled catch-up withdraws it; no patient data (nor the UID) here.
        logger.warning(
            "HL7 withdrawal of a result of patient %d not queued (%s); the scheduled "
            "catch-up will send it",
            patient_pk,
            type(exc).__name__,
        )
