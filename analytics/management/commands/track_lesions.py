"""``manage.py track_lesions (--all | --patient ID)``: follow the lesions and assess the
responses again from what is stored (after an upgrade of the rules, say), exactly as
after a study is processed (`analytics.lesions.refresh.patient_update`)."""

from django.core.management.base import BaseCommand, CommandError

from analytics.lesions.refresh import patient_update
from patients.models import Patient


class Command(BaseCommand):
    help = (
        "Re-track lesions and recompute responses, best overall responses and risk scores "
        "from the stored segmentations and radiologists' decisions."
    )

    def add_arguments(self, parser):
        scope = parser.add_mutually_exclusive_group(required=True)
        scope.add_argument("--all", action="store_true", help="every patient")
        scope.add_argument("--patient", metavar="ID", help="one patient, by MRN (Patient ID)")
        parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")

    def handle(self, *args, **options):
        patients = Patient.objects.order_by("patient_id")
        if options["patient"]:
            patients = patients.filter(patient_id=options["patient"])
            if not patients.exists():
                raise CommandError(f"--patient: no patient with MRN {options['patient']!r}")
        done = 0
        for patient in patients:
            result = patient_update(patient=patient, device=options["device"])
            done += 1
            warnings = len(result["provisional"]) + len(result["not_followed"])
            self.stdout.write(
                f"patient pk {patient.pk}: {result['studies_tracked']} studies, "
                f"{result['lesions']} lesions, {warnings} studies with warnings"
            )
        self.stderr.write(f"track_lesions: {done} patients")
