"""``manage.py export_measurements [--format csv|json] [--patient ID]``."""

import sys

from django.core.management.base import BaseCommand, CommandError

from imaging.selectors import measurements_table
from patients.models import Patient
from radtrack.exports import export_audit, table_text


class Command(BaseCommand):
    help = (
        "One row per lesion per study (DESIGN.md columns), values in force after review; "
        "written to standard output."
    )

    def add_arguments(self, parser):
        parser.add_argument("--format", choices=["csv", "json"], default="csv")
        parser.add_argument("--patient", metavar="ID", help="only this patient (MRN)")

    def handle(self, *args, **options):
        patient_ids = None
        if options["patient"]:
            if not Patient.objects.filter(patient_id=options["patient"]).exists():
                raise CommandError(f"no patient with ID {options['patient']!r}")
            patient_ids = [options["patient"]]
        table = measurements_table(patient_ids=patient_ids)
        export_audit(action="measurements.export", patient_ids=patient_ids)
        self.stdout.write(table_text(table, fmt=options["format"]), ending="")
        print(f"export_measurements: {len(table)} rows", file=sys.stderr)
