"""The shared body of the export commands (``export_measurements``, ``export_responses``):
the ``--patient`` check, one audit row per patient whose data left, and the table
written as CSV or JSON.
"""

from __future__ import annotations

import getpass

from patients.audit import audit_record
from patients.models import Patient
from radtrack.exports import table_text


def export_audit(*, action: str, patient_ids: list[str] | None) -> None:
    """One audit row per patient whose data left the system, naming the OS user."""
    username = f"cli:{getpass.getuser()}"
    patients = Patient.objects.all()
    if patient_ids is not None:
        patients = patients.filter(patient_id__in=patient_ids)
    for patient in patients.only("pk"):
        audit_record(
            action=action, object=f"patient {patient.pk}", patient=patient, username=username
        )


def export_handle(command, *, options: dict, table_for, action: str, name: str) -> None:
    """The shared body of the export commands: check ``--patient``, build the table,
    audit the export, write the table to standard output and a count to standard error.

    ``table_for(patient_ids=...)`` returns the table; ``None`` means every patient.
    """
    import sys

    from django.core.management.base import CommandError

    patient_ids = None
    if options["patient"]:
        if not Patient.objects.filter(patient_id=options["patient"]).exists():
            raise CommandError(f"no patient with ID {options['patient']!r}")
        patient_ids = [options["patient"]]
    table = table_for(patient_ids=patient_ids)
    export_audit(action=action, patient_ids=patient_ids)
    command.stdout.write(table_text(table, fmt=options["format"]), ending="")
    print(f"{name}: {len(table)} rows", file=sys.stderr)
