"""``manage.py push_hl7 [--patient ID] [--final-only] [--force]``: each assessed study's
response to the EHR as an HL7 v2.5.1 ORU^R01 over MLLP (``RADTRACK_HL7_HOST:PORT``).

A study whose last accepted message said the same is not sent again unless ``--force``.
Each study's outcome is printed (control id, ACK code, the EHR's reason for a
rejection); the run is audited per patient and exits non-zero if any was not accepted.
"""

from __future__ import annotations

import getpass
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from analytics.hl7.send import HL7NotConfigured, hl7_study_send, study_result_load
from analytics.models import ResponseAssessment
from patients.audit import audit_record


class Command(BaseCommand):
    help = (
        "Send each assessed study's response (RECIST 1.1, volumetric, target lesions) to "
        "RADTRACK_HL7_HOST:RADTRACK_HL7_PORT as an HL7 v2.5.1 ORU^R01 over MLLP; the ACK "
        "is checked (AE retried, AR reported)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--patient", metavar="ID", help="only this patient (MRN)")
        parser.add_argument(
            "--final-only",
            action="store_true",
            help="only responses whose measurements were all reviewed (else P results too)",
        )
        parser.add_argument(
            "--force", action="store_true", help="send even what the EHR already accepted"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        assessments = ResponseAssessment.objects.select_related("patient", "study").order_by(
            "patient__patient_id", "study__study_date", "pk"
        )
        if options["patient"]:
            assessments = assessments.filter(patient__patient_id=options["patient"])
            if not assessments.exists():
                raise CommandError(f"no assessed study for patient ID {options['patient']!r}")
        username = f"cli:{getpass.getuser()}"
        counts = {"sent": 0, "unchanged": 0, "rejected": 0, "failed": 0}
        for assessment in assessments:
            if options["final_only"] and not study_result_load(assessment).final:
                continue
            try:
                outcome = hl7_study_send(assessment=assessment, force=options["force"])
            except HL7NotConfigured as exc:
                raise CommandError(str(exc)) from exc
            counts[outcome.status] += 1
            stream = self.stdout if outcome.status in ("sent", "unchanged") else self.stderr
            stream.write(outcome.line())
            if outcome.message is not None:
                audit_record(
                    action="hl7.push",
                    object=f"ORU^R01 {outcome.message.control_id}: {outcome.status}",
                    patient=assessment.patient_id,
                    username=username,
                )
        summary = (
            f"push_hl7: {counts['sent']} sent, {counts['unchanged']} unchanged, "
            f"{counts['rejected']} rejected, {counts['failed']} not delivered"
        )
        if counts["rejected"] or counts["failed"]:
            raise CommandError(summary)
        self.stdout.write(summary)
