"""``manage.py process [--all | --patient ID | --study UID] [--device auto|cpu|cuda]``."""

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from imaging.pipeline.device import device_resolve
from imaging.pipeline.run import study_process
from imaging.pipeline.selectors import study_select
from patients.models import Patient


class Command(BaseCommand):
    help = (
        "Run the imaging pipeline over stored studies: choose each study's series, build "
        "its volume, check its orientation, register it to the baseline, segment and "
        "measure its lesions, and track them. Studies already processed are skipped "
        "unless --force; each run is recorded with its steps, versions and timings."
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
        studies = list(
            study_select(
                patient_id=options["patient"], study_uid=options["study"], force=options["force"]
            )
        )
        if options["study"] and not studies:
            self.stdout.write("nothing to process (use --force to process again)")
            return
        out = self.stderr._out
        bar = tqdm(total=len(studies), desc="process", unit="study", file=out)
        ran = failed = skipped = 0
        for study in studies:
            run = study_process(
                study=study,
                device=device,
                force=options["force"],
                on_step=lambda name: bar.set_postfix_str(name, refresh=True),
            )
            bar.update(1)
            if run is None:
                skipped += 1
                detail = (study.series_choice or {}).get("error")
                if detail:
                    bar.write(f"study {study.study_instance_uid}: not analysed: {detail}", file=out)
                continue
            ran += 1
            if run.status == "failed":
                failed += 1
                bar.write(
                    f"study {study.study_instance_uid}: failed: {run.error}",
                    file=out,
                )
        bar.close()
        self.stdout.write(
            f"process: {ran} {'study' if ran == 1 else 'studies'} on {device}, "
            f"{ran - failed} succeeded, {failed} failed"
            + (f", {skipped} not analysed or already done" if skipped else "")
        )
        if failed:
            raise CommandError(f"{failed} studies failed; see the messages above")
