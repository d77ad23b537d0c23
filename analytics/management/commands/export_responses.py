"""``manage.py export_responses [--format csv|json] [--patient ID]``."""

import pandas as pd
from django.core.management.base import BaseCommand

from analytics.layouts import EXPORT_RESPONSE_COLUMNS
from analytics.models import ResponseAssessment
from patients.exports import export_handle


def responses_table(*, patient_ids: list[str] | None = None) -> pd.DataFrame:
    """One row per study with a response assessment, in DESIGN.md's columns."""
    rows = ResponseAssessment.objects.select_related("patient", "study").order_by(
        "patient__patient_id", "study__study_date", "study__study_time"
    )
    if patient_ids is not None:
        rows = rows.filter(patient__patient_id__in=patient_ids)
    records = [
        (
            r.patient.patient_id,
            r.study.study_instance_uid,
            r.study.study_date,
            r.sum_diameters_mm,
            r.total_volume_ml,
            r.pct_change_baseline,
            r.pct_change_nadir,
            r.recist_response,
            r.volumetric_response,
            r.new_lesions,
        )
        for r in rows
    ]
    return pd.DataFrame.from_records(records, columns=list(EXPORT_RESPONSE_COLUMNS))


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
