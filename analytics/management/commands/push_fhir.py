"""``manage.py push_fhir [--patient ID]``: send patients' FHIR R4 resources to the EHR.

Each patient goes as one transaction Bundle to ``RADTRACK_FHIR_SERVER_URL``; a patient
the server refuses is reported with the reason and does not stop the others. Each push
is audited. Exits non-zero if any patient was not taken.

The server's own diagnostics (which may quote patient data) are written to this
command's stderr for the operator and go to no log.
"""

from __future__ import annotations

import getpass
import sys
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from analytics.fhir.push import FHIRPushError, fhir_patient_push
from analytics.fhir.validation import FHIRBuildError
from patients.audit import audit_record
from patients.models import Patient


class Command(BaseCommand):
    help = "Push patients' FHIR R4 resources to RADTRACK_FHIR_SERVER_URL as transactions."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--patient", metavar="ID", help="only this patient (MRN)")

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.RADTRACK_FHIR_SERVER_URL:
            raise CommandError(
                "no FHIR server is configured: set RADTRACK_FHIR_SERVER_URL to its base URL"
            )
        patients = Patient.objects.order_by("patient_id")
        if options["patient"]:
            patients = patients.filter(patient_id=options["patient"])
            if not patients.exists():
                raise CommandError(f"no patient with ID {options['patient']!r}")
        username = f"cli:{getpass.getuser()}"
        pushed = resources = superseded = 0
        failures: list[str] = []
        rows = list(patients.values_list("pk", flat=True))
        for pk in tqdm(rows, desc="push_fhir", unit="patient", file=sys.stderr, leave=False):
            try:
                result = fhir_patient_push(pk=pk)
            except (FHIRPushError, FHIRBuildError) as exc:
                failures.append(f"patient {pk}: {exc}")
                self.stderr.write(f"patient {pk}: not pushed: {exc}")
                detail = getattr(exc, "detail", "")
                if detail:
                    self.stderr.write(f"patient {pk}: the server said: {detail}")
                continue
            audit_record(
                action="fhir.push",
                object=f"patient {pk}: {result.resources} resources to "
                f"{settings.RADTRACK_FHIR_SERVER_URL}",
                patient=pk,
                username=username,
            )
            pushed += 1
            resources += result.resources
            superseded += result.superseded
        summary = (
            f"push_fhir: {pushed} of {len(rows)} patients pushed ({resources} resources, "
            f"{superseded} superseded marked entered-in-error)"
            + (f", {len(failures)} failed" if failures else "")
        )
        if failures:
            raise CommandError(summary)
        self.stdout.write(summary)
