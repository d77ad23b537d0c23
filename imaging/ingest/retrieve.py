"""A user's request to retrieve one study from the PACS: checked, audited and queued.

The worker does the work (`imaging.ingest.pacs.pacs_study_retrieve`), so a slow or
unreachable PACS never holds a web request.
"""

from __future__ import annotations

import re

from django.conf import settings
from django.db import transaction

from imaging.ingest.tasks import pacs_study_retrieve_task
from imaging.models import Study
from patients.audit import audit_record

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class RetrieveRequestError(ValueError):
    """A retrieve cannot be queued; the message names the field and the reason."""


def pacs_retrieve_queue(*, study_instance_uid: str, user=None, request=None) -> str:
    """Queue the retrieve of one study from the configured PACS; return the UID.

    The worker does the work (`pacs_study_retrieve`), so a slow or unreachable PACS never
    holds a web request; its outcome is a `PacsTransfer` on the pipeline page.
    """
    uid = (study_instance_uid or "").strip()
    if not uid or len(uid) > 64 or not _UID.match(uid):
        raise RetrieveRequestError(
            "study_instance_uid: a DICOM UID is digits and dots, at most 64 characters"
        )
    if not getattr(settings, "RADTRACK_PACS_DICOMWEB_URL", ""):
        raise RetrieveRequestError(
            "no PACS is configured (set RADTRACK_PACS_DICOMWEB_URL on the server)"
        )
    local = Study.objects.filter(study_instance_uid=uid).first()
    audit_record(
        request=request,
        user=user,
        action="pacs.retrieve",
        object=f"study {uid}",
        patient=local.patient_id if local is not None else None,
    )
    transaction.on_commit(lambda: pacs_study_retrieve_task.delay(uid))
    return uid
