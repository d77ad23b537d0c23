"""``manage.py model_promote VERSION``: make a validated version the active model.

Refused (and the refusal audited) without a validation report made against the model
active now, or when that report regresses beyond the margins on any organ.
"""

import getpass

from django.core.management.base import BaseCommand, CommandError

from imaging.modelhub.services import RegistryError, model_find, model_promote


class Command(BaseCommand):
    help = "Promote a validated segmentation model version to active (the previous one retires)."

    def add_arguments(self, parser):
        parser.add_argument("version", help="name-version or a version")
        parser.add_argument("--reason", default="")

    def handle(self, *args, **options):
        try:
            model = model_find(options["version"])
            model_promote(model=model, username=getpass.getuser(), reason=options["reason"])
        except RegistryError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"model_promote: {model.label} is the active model")
