"""``manage.py pacs_pull [--since DATE | --study UID]``: retrieve studies from the PACS."""

import datetime as dt

from django.core.management.base import BaseCommand, CommandError

from imaging.ingest.pacs import PacsConfig, PacsError, PacsNotConfigured, pacs_pull
from imaging.models import PacsTransfer


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError as exc:
        raise CommandError(f"--since must be a date as YYYY-MM-DD; got {text!r}") from exc


class Command(BaseCommand):
    help = (
        "Find studies on the PACS (QIDO-RS) and retrieve those RadTrack lacks (WADO-RS); "
        "one line per study, exit status 1 when any failed."
    )

    def add_arguments(self, parser):
        which = parser.add_mutually_exclusive_group(required=True)
        which.add_argument("--since", metavar="DATE", help="studies dated on or after YYYY-MM-DD")
        which.add_argument("--study", metavar="UID", help="one study, by Study Instance UID")
        parser.add_argument(
            "--no-process",
            action="store_true",
            help="store and index only; do not queue the series for processing",
        )

    def handle(self, *args, **options):
        since = _date(options["since"]) if options["since"] else None
        try:
            config = PacsConfig.from_settings()
        except PacsNotConfigured as exc:
            raise CommandError(str(exc)) from exc

        def report(transfer: PacsTransfer) -> None:
            line = (
                f"transfer {transfer.pk}: {transfer.status}, {transfer.instances} instances "
                f"received in {transfer.attempts} attempt(s)"
            )
            if transfer.error:
                line += f": {transfer.error}"
            self.stdout.write(line)

        try:
            summary = pacs_pull(
                since=since,
                study_instance_uid=options["study"] or "",
                config=config,
                process=not options["no_process"],
                on_transfer=report,
            )
        except PacsError as exc:
            raise CommandError(str(exc)) from exc
        if summary.failed or summary.error:
            raise CommandError(summary.line())
        self.stdout.write(summary.line())
