"""``manage.py verify_storage``: re-check every stored file against its SHA-256."""

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from imaging.ingest.verify import storage_verify
from imaging.models import Instance


class Command(BaseCommand):
    help = "Re-check every stored DICOM file against the SHA-256 recorded at ingest."

    def handle(self, *args, **options):
        bar = tqdm(
            total=Instance.objects.count(), desc="verify", unit="file", file=self.stderr._out
        )
        result = storage_verify(on_instance=lambda: bar.update(1))
        bar.close()
        for uid in result.missing:
            self.stderr.write(f"missing: SOP Instance {uid}")
        for uid in result.corrupt:
            self.stderr.write(f"checksum mismatch: SOP Instance {uid}")
        summary = (
            f"verify_storage: {result.checked} files checked, {len(result.missing)} missing, "
            f"{len(result.corrupt)} changed"
        )
        if not result.ok:
            raise CommandError(summary)
        self.stdout.write(summary)
