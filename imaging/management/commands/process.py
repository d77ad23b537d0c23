"""``manage.py process [--all | --patient ID | --study UID] [--device auto|cpu|cuda]``."""

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from imaging.services.processing import device_resolve, series_process_many, series_select
from patients.models import Patient


class Command(BaseCommand):
    help = (
        "Run the imaging pipeline over stored series. Series already processed are "
        "skipped unless --force; each run is recorded with its steps, versions and timings."
    )

    def add_arguments(self, parser):
        scope = parser.add_mutually_exclusive_group(required=True)
        scope.add_argument("--all", action="store_true", help="every patient")
        scope.add_argument("--patient", metavar="ID", help="one patient, by MRN (Patient ID)")
        scope.add_argument("--study", metavar="UID", help="one study, by Study Instance UID")
        parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
        parser.add_argument("--force", action="store_true", help="process again what is done")

    def handle(self, *args, **options):
        if (
            options["patient"]
            and not Patient.objects.filter(patient_id=options["patient"]).exists()
        ):
            raise CommandError(f"no patient with ID {options['patient']!r}")
        try:
            device = device_resolve(options["device"])
        except Exception as exc:
            raise CommandError(str(exc)) from exc
        series_list = list(
            series_select(
                patient_id=options["patient"], study_uid=options["study"], force=options["force"]
            )
        )
        if options["study"] and not series_list and not options["force"]:
            self.stdout.write("nothing to process (use --force to process again)")
            return
        bar = tqdm(total=len(series_list), desc="process", unit="series", file=self.stderr._out)

        def done(run):
            bar.update(1)
            if run.status == "failed":
                bar.write(
                    f"series {run.series.series_instance_uid}: failed: {run.error}",
                    file=self.stderr._out,
                )

        runs = series_process_many(series_list=series_list, device=device, on_done=done)
        bar.close()
        failed = sum(r.status == "failed" for r in runs)
        self.stdout.write(
            f"process: {len(runs)} series on {device}, {len(runs) - failed} succeeded, {failed} failed"
        )
        if failed:
            raise CommandError(f"{failed} series failed; see the messages above")
