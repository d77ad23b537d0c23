"""Sending a response to the EHR the moment it becomes final: the receiver of
`analytics.lesions.responses.responses_written` queues one HL7 send per study whose
response is final and not yet accepted by the EHR (`analytics.hl7.send`), once the
transaction that wrote it commits. The scheduled `hl7_results_send_task` stays as the
catch-up for a send that could not be queued or failed. Without a broker (tasks run
in-process, the embedded default) the send runs in the process that committed, after
the commit: a review waits for the EHR's ACK there, so a site with an HL7 receiver runs
a worker.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from django.db import transaction

from analytics.hl7.send import hl7_configured, hl7_final_responses_unsent
from analytics.hl7.tasks import hl7_study_send_task
from radtrack.celery import TRANSIENT_ERRORS

__all__ = ["responses_written_receive"]

logger = logging.getLogger(__name__)


def responses_written_receive(sender: Any, *, patient: Any, **kwargs: Any) -> None:
    """Queue, on commit, the send of each of ``patient``'s final responses the EHR has not
    accepted as they read now (nothing when no HL7 receiver is configured)."""
    if not hl7_configured():
        return
    for assessment in hl7_final_responses_unsent(patient_id=patient.pk):
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
