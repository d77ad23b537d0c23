"""``manage.py average_segmenter``: a model's weights averaged with its own fine-tune's
(`training.averaging`), written with manifest and model card like a training run's."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from imaging.core.segmentation.network import (
    SegmenterError,
    SegmenterSpec,
    manifest_read,
    segmenter_load,
)
from imaging.core.segmentation.training.averaging import weights_average
from imaging.core.segmentation.training.settings import TrainingSettings
from imaging.core.segmentation.training.shipping import model_card_write, weights_install


class Command(BaseCommand):
    help = (
        "Average a model's weights with those of its fine-tune (WiSE-FT); both are weights "
        "files with their manifest.json beside them."
    )

    def add_arguments(self, parser):
        parser.add_argument("--base", type=Path, required=True,
                            help="the starting model's weights file")  # fmt: skip
        parser.add_argument("--tuned", type=Path, required=True,
                            help="weights trained on from --base (train_segmenter --init-from)")  # fmt: skip
        parser.add_argument("--tuned-share", type=float, default=0.5,
                            help="weight of --tuned in the average, in (0, 1]")  # fmt: skip
        parser.add_argument("--out", type=Path, required=True, help="output folder")
        parser.add_argument("--model-version", dest="model_version", required=True)
        parser.add_argument(
            "--ship", action="store_true", help="also install the weights in imaging/weights/"
        )

    def handle(self, *args, **options):
        share = options["tuned_share"]
        if not 0.0 < share <= 1.0:
            raise CommandError("--tuned-share must be in (0, 1]")
        out: Path = options["out"]
        if out.exists() and any(out.iterdir()):
            raise CommandError(f"{out} is not empty: choose another folder")
        models, manifests = {}, {}
        for role in ("base", "tuned"):
            path: Path = options[role]
            try:
                manifests[role] = manifest_read(path.parent / "manifest.json")
                models[role] = segmenter_load(weights_path=path, device="cpu")
            except SegmenterError as exc:
                raise CommandError(f"--{role}: {exc}") from exc
        _tuned_from_base_check(manifests["tuned"], options["base"], models["base"].spec.sha256)
        try:
            path, manifest = weights_average(
                base=models["base"], base_manifest=manifests["base"],
                tuned=models["tuned"], tuned_manifest=manifests["tuned"],
                tuned_share=share, version=options["model_version"], out_dir=out,
            )  # fmt: skip
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        training = manifest.get("training", {})
        record = manifest["weight_average"]
        model_card_write(
            path=out / "MODEL_CARD.md",
            spec=SegmenterSpec.from_dict(manifest["spec"]),
            manifest=manifest,
            settings=TrainingSettings(**training.get("settings", {})),
            data=training.get("data", {}),
            validation=None,
            seconds=float(training.get("seconds", 0.0)),
            steps=int(training.get("steps", 0)),
            title="Lesion segmenter (weights averaged with its fine-tune)",
            written_by="manage.py average_segmenter",
            extra=(
                "## Weight average\n\n"
                f"{1 - share:.2f} x `{record['base']['file']}` (version {record['base']['version']}, "
                f"SHA-256 `{record['base']['sha256']}`) + {share:.2f} x "
                f"`{record['tuned']['file']}` (version {record['tuned']['version']}, SHA-256 "
                f"`{record['tuned']['sha256']}`), every floating-point tensor; the spec and "
                "class logit offsets are the tuned model's. The training record above is "
                "the tuned model's. Validate it (`manage.py model_register`, "
                "`model_validate`) before promoting it.\n"
            ),
        )
        if options["ship"]:
            weights_install(out, path)
        self.stdout.write(
            f"average_segmenter: {1 - share:.2f} x {record['base']['version']} + {share:.2f} x "
            f"{record['tuned']['version']} -> {path}" + (" (shipped)" if options["ship"] else "")
        )


def _tuned_from_base_check(tuned_manifest: dict, base: Path, base_sha256: str) -> None:
    """Refuse a ``--tuned`` that was not trained on from ``--base``: the average of two
    networks trained apart is not a network (their units do not correspond)."""
    warm = tuned_manifest.get("training", {}).get("data", {}).get("warm_start") or {}
    # Runs since 2026-12-07 record the starting file's SHA-256; earlier ones its path only.
    same = (
        warm.get("sha256") == base_sha256
        if warm.get("sha256")
        else Path(warm.get("checkpoint", "")).name == base.name
    )
    if not warm or not same:
        raise CommandError(
            f"--tuned was not trained on from {base.name} (its manifest's warm start: "
            f"{warm.get('checkpoint', 'none')}): only a model and its own fine-tune can be "
            "averaged"
        )
