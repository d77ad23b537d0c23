"""``manage.py import_ehr FILE...``: labs and outcome events from FHIR R4 Bundles, FHIR Bulk
Data NDJSON or cohort CSVs.

See `patients.ehr.importer` for what is read and how records are matched. The ``.ndjson``
files named are read together as one import (a Bulk Data export writes one file per
resource type, and an Observation's ``Patient/123`` names a line of Patient.ndjson).
"""

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from patients.ehr.importer import ehr_import, ehr_import_ndjson_files
from patients.ehr.records import EHRImportError, EHRImportResult


class Command(BaseCommand):
    help = (
        "Import laboratory results and progression/death/censoring events from a FHIR R4 "
        "Bundle (JSON), FHIR Bulk Data NDJSON (.ndjson files are read together) or the "
        "labs.csv / events.csv that generate_cohort writes. Patients are matched by MRN "
        "(RADTRACK_MRN_SYSTEM) or another identifier they are known to carry; records that "
        "match nobody are kept apart and reported with the reason. Each file is one "
        "transaction; importing the same file again changes nothing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("files", nargs="+", type=Path, metavar="FILE")
        parser.add_argument("--quiet", action="store_true", help="no progress bar")
        parser.add_argument(
            "--show", type=int, default=20, help="list at most this many problems per file"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        files: list[Path] = options["files"]
        unreadable = [f for f in files if not f.is_file()]
        if unreadable:
            raise CommandError(
                "cannot read " + ", ".join(str(f) for f in unreadable) + " (no such file)"
            )
        totals = {"created": 0, "updated": 0, "unchanged": 0, "unmatched": 0, "rejected": 0}
        ndjson = [f for f in files if f.suffix.lower() == ".ndjson"]
        units: list[list[Path]] = [[f] for f in files if f not in ndjson]
        if ndjson:
            units.append(ndjson)
        for unit in units:
            result = self._import(unit, options)
            if len(units) > 1:
                self.stdout.write(result.summary())
            for key in ("created", "updated", "unchanged", "unmatched"):
                totals[key] += getattr(result, key)
            totals["rejected"] += len(result.rejected)
        self.stdout.write(
            f"import_ehr: {len(files)} file(s): {totals['created']} created, "
            f"{totals['updated']} updated, {totals['unchanged']} unchanged, "
            f"{totals['unmatched']} unmatched, {totals['rejected']} rejected"
        )

    def _import(self, paths: list[Path], options: dict[str, Any]) -> EHRImportResult:
        """Import one file (or the NDJSON files together) and report its problems."""
        bar = tqdm(
            desc="+".join(p.name for p in paths)[:40],
            unit="record",
            disable=options["quiet"] or None,
            file=self.stderr._out,
        )

        def progress(done: int, total: int) -> None:
            if bar.total != total:
                bar.reset(total=total)
            bar.update(done - bar.n)

        try:
            if len(paths) == 1 and paths[0].suffix.lower() != ".ndjson":
                result = ehr_import(path_or_bytes=paths[0], on_progress=progress)
            else:
                result = ehr_import_ndjson_files(paths=paths, on_progress=progress)
        except EHRImportError as exc:
            raise CommandError(str(exc)) from exc
        finally:
            bar.close()
        problems = [("rejected", p) for p in result.rejected] + [
            ("skipped", p) for p in result.skipped
        ]
        for label, problem in problems[: options["show"]]:
            self.stderr.write(f"  {label}: {problem}")
        if len(problems) > options["show"]:
            self.stderr.write(f"  ... and {len(problems) - options['show']} more")
        for note in result.notes[: options["show"]]:
            self.stderr.write(f"  note: {note}")
        if result.unmatched_identifiers:
            self.stderr.write(
                f"  {result.unmatched} records for {len(result.unmatched_identifiers)} "
                "patients that match nobody were kept apart (UnmatchedEHRRecord, with the reason)"
            )
        return result
