"""``manage.py model_validation_set [--add UID] [--remove UID] [--reason TEXT]``: the site's
reviewed studies in the locked validation set (listed after any change). A study in the
set is never trained on; only a fully reviewed study can join it, and not one a version
in use was trained on. Adding and removing are recorded (`ModelEvent`, audit trail); a
removed study stays out of training (it was judged on)."""

import getpass

from django.core.management.base import BaseCommand, CommandError

from imaging.modelhub.locked_set import set_entries
from imaging.modelhub.services import RegistryError
from imaging.modelhub.validation import validation_set_add, validation_set_remove
from imaging.models import Study


class Command(BaseCommand):
    help = "List, add or remove the site's reviewed studies of the locked validation set."

    def add_arguments(self, parser):
        parser.add_argument("--add", metavar="STUDY_INSTANCE_UID", action="append", default=[])
        parser.add_argument("--remove", metavar="STUDY_INSTANCE_UID", action="append", default=[])
        parser.add_argument("--reason", default="")

    def handle(self, *args, **options):
        for uid in options["add"]:
            study = Study.objects.filter(study_instance_uid=uid).first()
            if study is None:
                raise CommandError(f"no study {uid}")
            try:
                validation_set_add(
                    study=study, username=getpass.getuser(), reason=options["reason"]
                )
            except RegistryError as exc:
                raise CommandError(str(exc)) from exc
        for uid in options["remove"]:
            entry = set_entries().filter(study__study_instance_uid=uid).first()
            if entry is None:
                raise CommandError(f"study {uid} is not in the validation set")
            try:
                validation_set_remove(
                    entry=entry, username=getpass.getuser(), reason=options["reason"]
                )
            except RegistryError as exc:
                raise CommandError(str(exc)) from exc
        entries = list(set_entries().select_related("study").order_by("added_at"))
        for e in entries:
            self.stdout.write(
                f"{e.study.study_instance_uid}\tadded {e.added_at:%Y-%m-%d} by {e.added_by_name}"
            )
        self.stdout.write(
            f"model_validation_set: {len(entries)} site stud{'y' if len(entries) == 1 else 'ies'} in the set"
        )
