"""``manage.py model_rollback``: restore the version active before the current one, in one step."""

import getpass

from django.core.management.base import BaseCommand, CommandError

from imaging.modelhub.services import RegistryError, active_model, model_rollback


class Command(BaseCommand):
    help = "Roll the segmentation model back to the version active before the last promotion."

    def add_arguments(self, parser):
        parser.add_argument("--reason", default="")

    def handle(self, *args, **options):
        try:
            current = active_model()
            restored = model_rollback(username=getpass.getuser(), reason=options["reason"])
        except RegistryError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"model_rollback: {current.label} retired, {restored.label} is active again"
        )
