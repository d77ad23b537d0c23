"""Reading the audit trail: rows filtered by user, patient, action and date, and the CSV
layout of an export. Whoever reads it is audited (``audit.read``, ``audit.export``) by
the page or command that calls these.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db.models import Q, QuerySet
from django.utils import timezone

from patients.models import AuditEvent

AUDIT_CSV_COLUMNS = (
    "id",
    "at",
    "username",
    "action",
    "object",
    "patient_pk",
    "patient_mrn",
    "remote_address",
)


@dataclass(frozen=True)
class AuditQuery:
    """What to read: every field empty reads the whole trail.

    ``patient`` is an MRN (exact) or ``#<id>``; ``action`` matches from the start
    (``patient.`` finds every patient action); dates are inclusive, in the server's zone.
    """

    username: str = ""
    patient: str = ""
    action: str = ""
    date_from: dt.date | None = None
    date_to: dt.date | None = None

    def describe(self) -> str:
        parts = [
            f"{name} {value}"
            for name, value in (
                ("user", self.username),
                ("patient", self.patient),
                ("action", self.action),
                ("from", self.date_from),
                ("to", self.date_to),
            )
            if value
        ]
        return ", ".join(parts) or "all"


def _day_start(day: dt.date) -> dt.datetime:
    return timezone.make_aware(dt.datetime.combine(day, dt.time.min))


def audit_events_select(*, query: AuditQuery) -> QuerySet[AuditEvent]:
    """The rows ``query`` asks for, newest first, with their patients."""
    events = AuditEvent.objects.select_related("patient").order_by("-at", "-pk")
    if query.username:
        events = events.filter(username=query.username)
    if query.patient:
        if query.patient.startswith("#") and query.patient[1:].isdigit():
            events = events.filter(patient_id=int(query.patient[1:]))
        else:
            events = events.filter(patient__patient_id=query.patient)
    if query.action:
        events = events.filter(Q(action__startswith=query.action))
    if query.date_from:
        events = events.filter(at__gte=_day_start(query.date_from))
    if query.date_to:
        events = events.filter(at__lt=_day_start(query.date_to + dt.timedelta(days=1)))
    return events


def audit_csv_row(event: AuditEvent) -> tuple:
    """One row of the CSV export, in `AUDIT_CSV_COLUMNS` order."""
    return (
        event.pk,
        event.at.isoformat(),
        event.username,
        event.action,
        event.object,
        event.patient_id or "",
        event.patient.patient_id if event.patient is not None else "",
        event.remote_address or "",
    )
