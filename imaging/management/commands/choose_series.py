"""``manage.py choose_series --study UID --series UID --reason TEXT [--user NAME]``."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from imaging.models import Series, Study
from imaging.pipeline.choice import SeriesOverrideError
from imaging.pipeline.queue import study_series_override


class Command(BaseCommand):
    help = (
        "Override the series chosen for analysis in a study. The choice, its reason, who "
        "made it and what the rules would have chosen are recorded on the study, and the "
        "series is queued for processing. Without --series, show the current choice."
    )

    def add_arguments(self, parser):
        parser.add_argument("--study", required=True, metavar="UID", help="Study Instance UID")
        parser.add_argument("--series", metavar="UID", help="Series Instance UID to analyse")
        parser.add_argument("--reason", default="", help="why (required with --series)")
        parser.add_argument("--user", default="", help="the account making the choice")

    def handle(self, *args, **options):
        study = Study.objects.filter(study_instance_uid=options["study"]).first()
        if study is None:
            raise CommandError(f"no study with Study Instance UID {options['study']!r}")
        if not options["series"]:
            self._show(study)
            return
        series = Series.objects.filter(study=study, series_instance_uid=options["series"]).first()
        if series is None:
            raise CommandError(
                f"--series: no series {options['series']!r} in study {options['study']!r}"
            )
        user = None
        if options["user"]:
            user = get_user_model().objects.filter(username=options["user"]).first()
            if user is None:
                raise CommandError(f"--user: no account named {options['user']!r}")
        try:
            chosen = study_series_override(
                study=study, series=series, reason=options["reason"], user=user
            )
        except (SeriesOverrideError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"study {study.study_instance_uid}: series {chosen.series_instance_uid} chosen "
            f"({chosen.get_state_display().lower()})"
        )
        self._show(study)

    def _show(self, study: Study) -> None:
        record = study.series_choice or {}
        if "error" in record:
            self.stdout.write(f"not analysed: {record['error']}")
            return
        if not record:
            self.stdout.write("no series chosen yet (the study has not been processed)")
            return
        self.stdout.write(f"chosen: {record['chosen_series_instance_uid']}")
        for reason in record.get("reasons", []):
            self.stdout.write(f"  because {reason}")
        if record.get("override"):
            o = record["override"]
            self.stdout.write(f"  override by {o['by'] or '(command line)'} at {o['at']}")
        for rejected in record.get("rejected", []):
            self.stdout.write(f"  not {rejected['series_instance_uid']}: {rejected['reason']}")
        for warning in record.get("warnings", []):
            self.stdout.write(f"  warning: {warning}")
