"""``manage.py finetune_segmenter DATA --out DIR``: adapt the shipped segmenter to a site's series.

Needs no database. ``DATA`` holds one folder per labelled series: the image as
``image.nii.gz`` or a DICOM series folder ``image/``, and the labels as ``label.nii.gz``
(codes 0 background, 1 lung, 2 liver, 3 lung nodule, 4 liver lesion) or a DICOM SEG
``seg.dcm`` (segments mapped to those classes by their labels). A seeded quarter of the
cases (at least one) validates before and after; ``OUT`` receives the fine-tuned
weights, ``manifest.json``, ``MODEL_CARD.md`` and ``finetune_report.{md,json}``.

``--from-reviews`` (no DATA, no --out) learns from the radiologists' reviewed studies
instead: the active model is fine-tuned on them mixed with its original training data,
registered as a candidate, validated on the locked set and retired at once if it
regresses (`imaging.modelhub.training`).
"""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from imaging.core.segmentation.training.finetune import segmenter_finetune
from imaging.core.segmentation.training.settings import TrainingSettings
from imaging.core.segmentation.training.site import site_cases_read


class Command(BaseCommand):
    help = (
        "Fine-tune the lesion segmenter on a site's labelled series (NIfTI labels or DICOM "
        "SEG) with a small learning rate, optionally with the encoder frozen; report "
        "validation before and after."
    )
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument(
            "data", type=Path, nargs="?", help="folder of case folders (see module docs)"
        )
        parser.add_argument("--out", type=Path, help="output folder")
        parser.add_argument(
            "--from-reviews",
            action="store_true",
            help="fine-tune the active model on reviewed studies; register and validate it",
        )
        parser.add_argument(
            "--original-cases",
            type=int,
            default=4,
            help="with --from-reviews: original training cases mixed in",
        )
        parser.add_argument(
            "--promote",
            action="store_true",
            help="with --from-reviews: promote the result when its report passes",
        )
        parser.add_argument(
            "--mining-steps",
            type=int,
            default=0,
            help="with --from-reviews: then add the fine-tuned network's own false candidates "
            "on the reviewed studies to their hard negatives and train this many steps more "
            "(benchmarks/README.md: measured both better and worse than without; off by "
            "default)",
        )
        parser.add_argument(
            "--tuned-share",
            type=float,
            default=1.0,
            help="with --from-reviews: keep this share of the fine-tuned weights and take the "
            "rest from the active model's (weight-space ensembling; 1: as tuned; benchmarks/"
            "README.md: 0.75 after 2000 steps kept the learnt kind and lowered the new lung "
            "false positives with both seeds measured)",
        )
        parser.add_argument(
            "--distill-weight",
            type=float,
            default=0.0,
            help="keep the starting model's softmax wherever it agrees with the labels, with "
            "this weight beside the Dice + cross-entropy loss (learning without forgetting; "
            "0: off; benchmarks/README.md has what it was measured to do)",
        )
        parser.add_argument("--weights", type=Path, default=None, help="base weights (.pt)")
        parser.add_argument("--steps", type=int, default=200)
        parser.add_argument("--lr", type=float, default=1e-4, help="learning rate (small)")
        parser.add_argument("--freeze-encoder", action="store_true")
        parser.add_argument("--batch-size", type=int, default=2)
        parser.add_argument("--patch-size", type=int, default=64)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--validation-fraction", type=float, default=0.25)
        parser.add_argument("--model-version", default=None, help="default: <base>-ft1")
        parser.add_argument("--threads", type=int, default=2)
        parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
        parser.add_argument("--quiet", action="store_true", help="no progress bar")

    def handle(self, *args, **options):
        if options["from_reviews"] or options["data"] is None or options["out"] is None:
            from imaging.modelhub.finetune_command import finetune_from_reviews_command

            return finetune_from_reviews_command(self, options)
        data: Path = options["data"]
        out: Path = options["out"]
        _site_options_check(options)

        import torch

        from imaging.core.segmentation.network import SegmenterError, segmenter_load

        torch.set_num_threads(options["threads"])
        try:
            base = segmenter_load(weights_path=options["weights"], device=options["device"])
            cases = site_cases_read(data_dir=data, spec=base.spec)
        except (SegmenterError, ValueError, FileNotFoundError) as exc:
            raise CommandError(str(exc)) from exc
        if len(cases) < 2:
            raise CommandError("fine-tuning needs at least two labelled cases (one validates)")
        version = options["model_version"] or f"{base.spec.version}-ft1"
        settings = TrainingSettings(
            seed=options["seed"],
            steps=options["steps"],
            batch_size=options["batch_size"],
            patch_size=options["patch_size"],
            learning_rate=options["lr"],
            warmup_steps=min(20, options["steps"]),
            validate_every=options["steps"],
            checkpoint_every=max(1, min(50, options["steps"])),
            threads=options["threads"],
            freeze_encoder=options["freeze_encoder"],
            distill_weight=options["distill_weight"],
        )
        bar = tqdm(total=settings.steps, desc="finetune", unit="step",
                   disable=options["quiet"] or None, file=self.stderr._out)  # fmt: skip

        def on_step(step: int, loss: float) -> None:
            bar.n = step
            bar.set_postfix_str(f"loss {loss:.3f}", refresh=False)
            bar.update(0)

        try:
            result = segmenter_finetune(
                base=base,
                cases=cases,
                out_dir=out,
                version=version,
                settings=settings,
                validation_fraction=options["validation_fraction"],
                device=options["device"],
                on_step=on_step,
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        finally:
            bar.close()
        b, a = result.before, result.after
        self.stdout.write(
            f"finetune_segmenter: {base.spec.label} -> {result.manifest['name']}-{version} on "
            f"{len(cases) - b['n_cases']} cases ({b['n_cases']} validation), "
            f"{settings.steps} steps{' (encoder frozen)' if settings.freeze_encoder else ''} in "
            f"{result.seconds:.0f} s; liver lesion Dice {_f(b['dice']['liver_lesion'])} -> "
            f"{_f(a['dice']['liver_lesion'])}, nodule Dice {_f(b['dice']['lung_nodule'])} -> "
            f"{_f(a['dice']['lung_nodule'])}; report {result.report_path}"
        )


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _site_options_check(options: dict) -> None:
    """A fine-tune on a folder of labelled cases: refuse what cannot run, before loading."""
    from imaging.modelhub.finetune_command import training_options_check

    data: Path = options["data"]
    out: Path = options["out"]
    if not data.is_dir():
        raise CommandError(f"{data} is not a folder of labelled cases")
    training_options_check(options)
    if not 0 < options["validation_fraction"] < 1:
        raise CommandError("--validation-fraction must be between 0 and 1")
    if out.exists() and (out / "checkpoint.pt").exists():
        raise CommandError(f"{out} already holds a checkpoint; choose another folder")
