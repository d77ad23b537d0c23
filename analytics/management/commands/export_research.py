"""``manage.py export_research --patients MRN... | --all --out DIR [--key FILE] [--profile basic]``."""

import getpass
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from analytics.research.export import ResearchExportError, research_export
from patients.models import Patient


class Command(BaseCommand):
    help = (
        "Write a de-identified research export to DIR: DICOM by the PS3.15 Annex E Basic "
        "Profile (modified dates, patient characteristics, clean descriptors, clean "
        "structured content), measurements.csv, responses.csv, labs.csv and a manifest. "
        "The key mapping pseudonyms back is written apart (--key, default under "
        "RADTRACK_DATA_DIR/research/keys/, readable by this account only). Audited."
    )

    def add_arguments(self, parser):
        which = parser.add_mutually_exclusive_group(required=True)
        which.add_argument("--patients", nargs="+", metavar="MRN", help="these patients")
        which.add_argument("--all", action="store_true", help="every patient")
        parser.add_argument("--out", required=True, type=Path, help="a folder that does not exist")
        parser.add_argument(
            "--key", type=Path, help="where the key goes (a file that does not exist)"
        )
        parser.add_argument("--profile", default="basic", choices=["basic"])

    def handle(self, *args, **options):
        if options["all"]:
            patients = list(Patient.objects.order_by("pk"))
        else:
            wanted = list(dict.fromkeys(options["patients"]))
            found = {p.patient_id: p for p in Patient.objects.filter(patient_id__in=wanted)}
            missing = [mrn for mrn in wanted if mrn not in found]
            if missing:
                raise CommandError(f"no patient with MRN {', '.join(map(repr, missing))}")
            patients = [found[mrn] for mrn in wanted]
        try:
            result = research_export(
                patients=patients,
                out_dir=options["out"],
                key_path=options["key"],
                username=f"cli:{getpass.getuser()}",
                profile=options["profile"],
            )
        except ResearchExportError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            f"research export {result.export_id}: {result.patients} patients, "
            f"{result.dicom_files} DICOM files, "
            + ", ".join(f"{name} {rows} rows" for name, rows in result.table_rows.items())
            + f"; written to {result.out_dir}; key (keep apart) {result.key_path}"
        )
        for refusal in result.refused:
            self.stderr.write(f"refused: {refusal}")
