"""``manage.py verify_storage [--repair]``: re-check every stored file against its SHA-256,
and find (and with ``--repair`` fix) what an interrupted import left behind, on the
filesystem or in the S3 bucket, whichever is the image store (`imaging.store`)."""

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from imaging.ingest.verify import storage_repair, storage_verify
from imaging.models import Instance
from imaging.store import store_describe


class Command(BaseCommand):
    help = (
        "Re-check every stored DICOM file against the SHA-256 recorded at ingest; report "
        "files no index row names, temporary files of interrupted writes and ingest "
        "sessions whose process died. --repair indexes the orphaned files that are good "
        "DICOM objects, removes the rest and the temporaries, and marks dead sessions failed."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--repair", action="store_true", help="fix orphans, temporaries and dead sessions"
        )
        parser.add_argument(
            "--min-age-minutes",
            type=float,
            default=10.0,
            help="leave files younger than this alone: an import may be writing them (10)",
        )
        parser.add_argument("--quiet", action="store_true", help="no progress bar")

    def handle(self, *args, **options):
        bar = tqdm(
            total=Instance.objects.count(),
            desc="verify",
            unit="file",
            file=self.stderr._out,
            disable=options["quiet"] or None,
        )
        self.stdout.write(f"store: {store_describe()}")
        result = storage_verify(
            on_instance=lambda: bar.update(1), min_age_s=options["min_age_minutes"] * 60
        )
        bar.close()
        for uid in result.missing:
            self.stderr.write(f"missing: SOP Instance {uid}")
        for uid in result.corrupt:
            self.stderr.write(f"checksum mismatch: SOP Instance {uid}")
        for relative in result.orphans:
            self.stderr.write(f"not indexed: {relative}")
        for relative in result.temporaries:
            self.stderr.write(f"stale temporary file: {relative}")
        for dead in result.dead:
            self.stderr.write(f"dead ingest session {dead.session.pk}: {dead.reason}")
        summary = (
            f"verify_storage: {result.checked} files checked, {len(result.missing)} missing, "
            f"{len(result.corrupt)} changed, {len(result.orphans)} not indexed, "
            f"{len(result.temporaries)} stale temporary files, {len(result.dead)} dead sessions"
        )
        if options["repair"]:
            self._repair(result)
            if result.missing or result.corrupt:
                raise CommandError(summary + "; missing and changed files need a backup")
            self.stdout.write(summary + "; repaired")
            return
        if not result.ok:
            raise CommandError(summary + ("; --repair fixes all but missing and changed files"))
        self.stdout.write(summary)

    def _repair(self, result) -> None:
        repair = storage_repair(check=result)
        for line in repair.removed:
            self.stderr.write(f"removed: {line}")
        for line in repair.kept:  # acknowledged to a sender: never deleted, for a person
            self.stderr.write(f"kept: {line}")
        self.stdout.write(
            f"repair: {repair.reindexed} files indexed"
            + (f" (ingest session {repair.session})" if repair.session else "")
            + f", {len(repair.removed)} removed, {len(repair.kept)} kept (acknowledged as "
            f"stored, not indexed), {repair.temporaries_removed} temporary files "
            f"removed, {repair.sessions_failed} dead sessions marked failed"
        )
