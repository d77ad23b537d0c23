"""``manage.py export_measurements [--format csv|json] [--patient ID]``."""

from django.core.management.base import BaseCommand

from analytics.lesions.selectors import measurements_table
from patients.exports import export_handle


class Command(BaseCommand):
    help = (
        "One row per lesion per study (the published columns, analytics.layouts), values in force after review; "
        "written to standard output."
    )

    def add_arguments(self, parser):
        parser.add_argument("--format", choices=["csv", "json"], default="csv")
        parser.add_argument("--patient", metavar="ID", help="only this patient (MRN)")

    def handle(self, *args, **options):
        export_handle(
            self,
            options=options,
            table_for=measurements_table,
            action="measurements.export",
            name="export_measurements",
        )
