"""``manage.py ingest PATH...``: import DICOM files, folders (recursively) and zip archives."""

import os
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from imaging.ingest.service import FileOutcome, ingest_paths


class Command(BaseCommand):
    help = (
        "Import DICOM files, folders (recursively) and zip archives. Files already stored "
        "are skipped; bad files are reported one line each and never stop the import."
    )

    def add_arguments(self, parser):
        parser.add_argument("paths", nargs="+", type=Path, help="files, folders or .zip archives")
        parser.add_argument(
            "--no-process",
            action="store_true",
            help="store and index only; do not queue the series for processing",
        )
        parser.add_argument(
            "--readers",
            type=int,
            default=min(os.cpu_count() or 1, 4),
            help="threads reading and checking files in parallel (one per core, at most 4)",
        )
        parser.add_argument("--quiet", action="store_true", help="no progress bar")

    def handle(self, *args, **options):
        paths: list[Path] = options["paths"]
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise CommandError(f"no such file or folder: {', '.join(missing)}")
        bar = tqdm(
            desc="ingest", unit="file", disable=options["quiet"] or None, file=self.stderr._out
        )

        def report(outcome: FileOutcome) -> None:
            bar.update(1)
            if outcome.status in ("rejected", "conflict"):
                bar.write(outcome.line(), file=self.stderr._out)

        if options["readers"] < 1:
            raise CommandError("--readers must be at least 1")
        session, _ = ingest_paths(
            paths=paths,
            process=not options["no_process"],
            on_file=report,
            readers=options["readers"],
        )
        bar.close()
        self.stdout.write(
            f"ingest session {session.pk}: {session.files_seen} files, {session.stored} stored, "
            f"{session.duplicates} already stored, {session.conflicts} conflicts, "
            f"{session.rejected} rejected, {session.warnings} warnings"
        )
