"""``manage.py generate_cohort OUT``: write a synthetic longitudinal CT cohort with its truth.

Needs no database: it only writes files (see `imaging.core.synthetic.cohort` for what and
how). Sizes are those of `imaging.core.synthetic.acquisition.SIZES`.
"""

import shutil
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from imaging.core.synthetic.cohort import cohort_generate

OUTPUTS = ("dicom", "labs.csv", "events.csv", "ehr_bundle.json", "truth.json")


class Command(BaseCommand):
    help = (
        "Write a synthetic longitudinal cohort: chest/upper-abdomen CT series with lung "
        "nodules and liver metastases (OUT/dicom/), labs.csv, events.csv, a FHIR R4 "
        "ehr_bundle.json and truth.json (every lesion's identity, centre and volume at "
        "each study, and each patient's true risk)."
    )
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("out", type=Path, help="output folder (created if missing)")
        parser.add_argument("--patients", type=int, default=3, help="number of patients (>= 1)")
        parser.add_argument(
            "--timepoints",
            type=int,
            default=3,
            help="scheduled studies per patient (>= 1); patients who die have fewer",
        )
        parser.add_argument("--seed", type=int, default=0, help="random seed (>= 0)")
        parser.add_argument(
            "--size",
            choices=["full", "small"],
            default="small",
            help="small: 128x128 at ~3 mm, 5 mm slices (demo, tests); "
            "full: 512x512, 0.6-1.0 mm, 150-300 slices",
        )
        parser.add_argument(
            "--overwrite", action="store_true", help="replace a cohort already in OUT"
        )
        parser.add_argument("--quiet", action="store_true", help="no progress bar")

    def handle(self, *args, **options):
        out: Path = options["out"]
        n_patients, n_timepoints, seed = options["patients"], options["timepoints"], options["seed"]
        if n_patients < 1:
            raise CommandError(f"--patients must be at least 1 (got {n_patients})")
        if n_timepoints < 1:
            raise CommandError(f"--timepoints must be at least 1 (got {n_timepoints})")
        if seed < 0:
            raise CommandError(f"--seed must be >= 0 (got {seed})")
        if out.exists() and not out.is_dir():
            raise CommandError(f"{out} exists and is not a folder")
        existing = [name for name in OUTPUTS if (out / name).exists()]
        if existing and not options["overwrite"]:
            raise CommandError(
                f"{out} already holds a cohort ({', '.join(existing)}); "
                "choose another folder or pass --overwrite"
            )
        for name in existing:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()

        bar = tqdm(
            desc="generate_cohort",
            unit="study",
            disable=options["quiet"] or None,
            file=self.stderr._out,
        )

        def start(total: int) -> None:
            bar.reset(total=total)

        def study_done(patient, study, n_images: int) -> None:
            bar.set_postfix_str(f"{patient.patient_id} study {study.index + 1}", refresh=False)
            bar.update(1)

        summary = cohort_generate(
            out,
            n_patients=n_patients,
            n_timepoints=n_timepoints,
            seed=seed,
            size=options["size"],
            on_start=start,
            on_study=study_done,
        )
        bar.close()
        self.stdout.write(
            f"generate_cohort: {summary.n_patients} patients, {summary.n_studies} studies, "
            f"{summary.n_images} images, {summary.n_lesions} lesions, {summary.n_labs} labs, "
            f"{summary.n_events} events ({options['size']}, seed {seed}) in "
            f"{summary.seconds:.1f} s -> {out}"
        )
