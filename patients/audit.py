"""The audit trail: one `AuditEvent` row for every view or export of a patient's data,
and every administrative act on an account.

The client address comes from `radtrack.addresses.client_address` (``X-Forwarded-For``
only from the trusted proxies in ``settings.RADTRACK_TRUSTED_PROXIES``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

from django.db import transaction
from django.http import HttpRequest

from patients.models import AuditEvent, Patient
from radtrack.addresses import client_address

__all__ = ["audit_patients_shown", "audit_record", "client_address"]


def audit_record(
    *,
    request: HttpRequest | None = None,
    user=None,
    action: str,
    object: str = "",  # the model field's name, kept for symmetry
    patient: Patient | int | None = None,
    username: str = "",
) -> AuditEvent:
    """Add one row to the audit trail and return it.

    ``action`` is a short dotted verb such as ``patient.view`` or ``patient.export``;
    ``object`` names what was seen (``patient 12``, ``ingest session 7``). The user
    defaults to ``request.user``; the username is copied so that the row still says
    who it was after the account is deleted. ``patient`` is a `Patient` or its
    primary key. ``username`` names a caller without an account (a command-line
    export names the operating-system user).
    """
    event = _event(request=request, user=user, action=action, object=object, username=username)
    event.patient_id = patient.pk if isinstance(patient, Patient) else patient
    event.save()
    return event


def _event(*, request, user, action: str, object: str, username: str) -> AuditEvent:
    """An unsaved row without its patient (`audit_record` says what each argument is)."""
    if user is None and request is not None:
        user = getattr(request, "user", None)
    if user is not None and not getattr(user, "is_authenticated", False):
        user = None
    return AuditEvent(
        user=user,
        username=user.get_username() if user is not None else username[:150],
        action=action[:64],
        object=object[:255],
        remote_address=client_address(request) if request is not None else None,
    )


def audit_patients_shown(
    *,
    request: HttpRequest | None = None,
    user=None,
    action: str,
    object: str,
    patient_pks: Iterable[int | None],
    username: str = "",
) -> None:
    """One audit row per patient a page or list showed (one without a patient if none).

    Rows per patient let the trail answer "who saw this patient's data", whether they
    opened the patient or paged through a list that included them. One INSERT for all
    of them: a page of 50 patients costs one query, not 50.
    """
    pks = sorted({pk for pk in patient_pks if pk is not None})
    template = _event(request=request, user=user, action=action, object=object, username=username)
    rows = []
    for pk in pks or [None]:
        row = copy.copy(template)
        row.patient_id = pk
        rows.append(row)
    with transaction.atomic():
        AuditEvent.objects.bulk_create(rows)
