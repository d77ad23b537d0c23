"""``manage.py export_responses [--format csv|json] [--patient ID]``."""

from django.core.management.base import BaseCommand

from analytics.lesions.selectors import responses_table
from patients.exports import export_handle


class Command(BaseCommand):
    help = "One row per study: sums, volumes, changes and RECIST 1.1 / volumetric categories."

    def add_arguments(self, parser):
        parser.add_argument("--format", choices=["csv", "json"], default="csv")
        parser.add_argument("--patient", metavar="ID", help="only this patient (MRN)")

    def handle(self, *args, **options):
        export_handle(
            self,
            options=options,
            table_for=responses_table,
            action="responses.export",
            name="export_responses",
        )
