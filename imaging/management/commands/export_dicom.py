"""``manage.py export_dicom --patient ID [--send]``: a patient's lesions as DICOM SEG and SR.

Unchanged results are not rebuilt: the objects written before are reused as they are.
With ``--send``, each object's line says what the PACS did with it (stored, already
present, replaced); a PACS that kept other content under one of our UIDs is a warning
on stderr.
"""

import getpass

from django.core.management.base import BaseCommand, CommandError

from imaging.exports.services import patient_dicom_export
from imaging.ingest.pacs import PacsNotConfigured
from patients.models import Patient


class Command(BaseCommand):
    help = (
        "Write a DICOM SEG and a Measurement Report SR for every study of a patient that has "
        "lesion measurements (under RADTRACK_DATA_DIR/exports/dicom/), and with --send store "
        "them on the PACS (STOW-RS)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--patient", metavar="ID", required=True, help="patient ID (MRN)")
        parser.add_argument("--send", action="store_true", help="store them on the PACS too")

    def handle(self, *args, **options):
        patient = Patient.objects.filter(patient_id=options["patient"]).first()
        if patient is None:
            raise CommandError(f"no patient with ID {options['patient']!r}")
        try:
            outcome = patient_dicom_export(
                patient=patient, send=options["send"], username=f"cli:{getpass.getuser()}"
            )
        except PacsNotConfigured as exc:
            raise CommandError(str(exc)) from exc
        for export in outcome.exports:
            self.stdout.write(export.line())
            for warning in export.warnings:
                self.stderr.write(f"warning: study {export.study_id}: {warning}")
        for error in outcome.errors:
            self.stderr.write(error)
        failed_sends = [e for e in outcome.exports if e.transfer is not None and e.transfer.error]
        summary = (
            f"export_dicom: {len(outcome.exports)} studies exported, {len(outcome.errors)} "
            f"failed" + (f", {len(failed_sends)} not sent" if options["send"] else "")
        )
        if not outcome.exports and not outcome.errors:
            raise CommandError("the patient has no studies with lesion measurements to export")
        if outcome.errors or failed_sends:
            raise CommandError(summary)
        self.stdout.write(summary)
