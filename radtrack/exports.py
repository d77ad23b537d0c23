"""Writing a table as CSV or JSON for the export commands, and auditing the export."""

from __future__ import annotations

import getpass
import json
import math

import pandas as pd

from patients.audit import audit_record
from patients.models import Patient


def _json_value(value):
    if value is None:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalars
        return _json_value(value.item())
    return value


def table_text(table: pd.DataFrame, *, fmt: str) -> str:
    """CSV with a header row, or a JSON array of objects; NaN and inf become empty/null."""
    if fmt == "csv":
        return table.to_csv(index=False, lineterminator="\n")
    if fmt == "json":
        records = [
            {k: _json_value(v) for k, v in row.items()} for row in table.to_dict(orient="records")
        ]
        return json.dumps(records, indent=1) + "\n"
    raise ValueError(f"format must be csv or json; got {fmt!r}")


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
