"""``manage.py train_segmenter --out DIR``: train the lesion segmenter on generated cohorts.

Needs no database. Renders the training and validation studies in memory (cached under
``OUT/cache``), trains with `training.loop.segmenter_train` (seeded, logged to
``OUT/train_log.jsonl``, checkpointed to ``OUT/checkpoint.pt``, resumable with
``--resume``), then writes the float16 weights, ``manifest.json`` (with SHA-256) and
``MODEL_CARD.md`` into ``OUT`` (and into ``imaging/weights/`` with ``--ship``).

Cohort seeds: training uses ``--cohort-seed`` (full-size-like studies) and
``--cohort-seed + 1`` (small studies); validation ``+ 2`` and ``+ 3``. Keep them away
from the benchmark's seed (benchmarks/segmentation.py refuses a seed used here).
"""

import json
import math
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from imaging.core.segmentation.network import (
    SegmenterError,
    SegmenterSpec,
    file_sha256,
)
from imaging.core.segmentation.training.cases import CohortSource, TrainingCase, cases_load
from imaging.core.segmentation.training.loop import (
    TrainingResult,
    checkpoint_read,
    segmenter_train,
)
from imaging.core.segmentation.training.settings import TrainingSettings
from imaging.core.segmentation.training.shipping import weights_install, weights_ship


class Command(BaseCommand):
    help = (
        "Train the lesion segmenter (MONAI UNet: lung, liver, lung nodule, liver lesion) on "
        "generated cohorts, with a validation split; write checkpoint, weights, manifest and "
        "model card into OUT."
    )
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("--out", type=Path, required=True, help="output folder")
        parser.add_argument("--seed", type=int, default=0, help="training seed (patches, init)")
        parser.add_argument("--cohort-seed", type=int, default=1000, help="first cohort seed")
        parser.add_argument("--patients", type=int, default=18, help="full-size-like patients")
        parser.add_argument("--small-patients", type=int, default=12, help="small-size patients")
        parser.add_argument("--timepoints", type=int, default=2, help="studies per patient")
        parser.add_argument("--val-patients", type=int, default=4, help="per size, held out")
        parser.add_argument("--steps", type=int, default=1200)
        parser.add_argument("--batch-size", type=int, default=2)
        parser.add_argument("--patch-size", type=int, default=64)
        parser.add_argument("--lr", type=float, default=2e-3)
        parser.add_argument(
            "--lesion-bias", type=float, default=0.5, help="share of patches centred on lesions"
        )
        parser.add_argument(
            "--lesion-weight", type=float, default=1.0, help="loss weight of the lesion classes"
        )
        parser.add_argument(
            "--init-from",
            type=Path,
            default=None,
            help="warm start: the network weights of another run's checkpoint.pt or a "
            "shipped weights file (fresh optimiser and schedule; recorded in the model card)",
        )
        parser.add_argument(
            "--distill-weight",
            type=float,
            default=0.0,
            help="with --init-from: weight of a loss keeping the starting model's softmax "
            "where it agrees with the labels (learning without forgetting; 0: off)",
        )
        parser.add_argument(
            "--generated",
            action="store_true",
            help="train on patches drawn fresh from the variation generator "
            "(imaging.core.synthetic.variation*) instead of rendered cohort studies; "
            "--patients and --small-patients then only size nothing (validation stays)",
        )
        parser.add_argument(
            "--plain-share",
            type=float,
            default=0.2,
            help="with --generated: share of patches from the cohort's plain phantom",
        )
        parser.add_argument(
            "--cohort-acquisition-share",
            type=float,
            default=0.0,
            help="with --generated: share of the plain patches acquired as the cohort "
            "generator acquires (its coarse small preset and plain correlated noise)",
        )
        parser.add_argument(
            "--loader-workers",
            type=int,
            default=1,
            help="with --generated: processes rendering patches while the network trains",
        )
        parser.add_argument(
            "--recalibrate-batches",
            type=int,
            default=40,
            help="batches whose exact batch-norm statistics replace the running ones at the end",
        )
        parser.add_argument("--validate-every", type=int, default=600)
        parser.add_argument("--checkpoint-every", type=int, default=50)
        parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
        parser.add_argument(
            "--model-version", dest="model_version", default="1.0.0", help="version to ship"
        )
        parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
        parser.add_argument("--resume", action="store_true", help="continue OUT/checkpoint.pt")
        parser.add_argument(
            "--ship", action="store_true", help="also install the weights in imaging/weights/"
        )
        parser.add_argument("--quiet", action="store_true", help="no progress bar")

    def handle(self, *args, **options):
        _options_check(options)
        import torch

        torch.set_num_threads(options["threads"])
        w = options["lesion_weight"]
        if w <= 0:
            raise CommandError("--lesion-weight must be positive")
        spec = SegmenterSpec(
            version=options["model_version"],
            class_logit_offsets=(0.0, 0.0, 0.0, -math.log(w), -math.log(w)),
        )
        out: Path = options["out"]
        train_sources, val_sources = _sources(options)
        data = _data_description(train_sources, val_sources, options)
        train, val = self._cases_render(
            train_sources=train_sources,
            val_sources=val_sources,
            spec=spec,
            cache=out / "cache",
            quiet=options["quiet"],
        )
        initial_state = None
        if options["resume"]:
            # Keep the first launch's record of the data (and of any warm start).
            data = checkpoint_read(out / "checkpoint.pt").get("data") or data
        if options["init_from"] is not None:
            initial_state = _warm_start(options["init_from"], spec=spec, data=data)
        result = self._train(
            train=train, val=val, spec=spec, options=options, initial_state=initial_state, data=data
        )
        path, _ = weights_ship(
            checkpoint_path=result.checkpoint_path,
            out_dir=out,
            version=options["model_version"],
            data=data,
        )
        if options["ship"]:
            weights_install(out, path)
        self.stdout.write(
            f"train_segmenter: {result.steps_done} steps on {len(train)} studies "
            f"({len(val)} validation) in {result.seconds / 60:.1f} min, loss {result.last_loss:.3f}"
            f"{_validation_text(result)} -> {path}" + (" (shipped)" if options["ship"] else "")
        )

    def _cases_render(
        self,
        *,
        train_sources: list[CohortSource],
        val_sources: list[CohortSource],
        spec: SegmenterSpec,
        cache: Path,
        quiet: bool,
    ) -> tuple[list[TrainingCase], list[TrainingCase]]:
        """The training and validation cases (rendered, or read from ``cache``)."""
        n_cases = sum(len(s.studies()) for s in train_sources + val_sources)
        bar = tqdm(total=n_cases, desc="render cases", unit="case", disable=quiet or None,
                   file=self.stderr._out)  # fmt: skip
        train = cases_load(sources=train_sources, spec=spec, cache_dir=cache,
                           on_case=lambda _: bar.update(1))  # fmt: skip
        val = cases_load(sources=val_sources, spec=spec, cache_dir=cache,
                         on_case=lambda _: bar.update(1))  # fmt: skip
        bar.close()
        return train, val

    def _train(
        self,
        *,
        train: list[TrainingCase],
        val: list[TrainingCase],
        spec: SegmenterSpec,
        options: dict[str, Any],
        initial_state: dict[str, Any] | None,
        data: dict[str, Any],
    ) -> TrainingResult:
        settings = TrainingSettings(
            seed=options["seed"],
            steps=options["steps"],
            batch_size=options["batch_size"],
            patch_size=options["patch_size"],
            learning_rate=options["lr"],
            lesion_bias=options["lesion_bias"],
            lesion_weight=options["lesion_weight"],
            validate_every=options["validate_every"],
            checkpoint_every=options["checkpoint_every"],
            threads=options["threads"],
            generated=options["generated"],
            plain_share=options["plain_share"],
            cohort_acquisition_share=options["cohort_acquisition_share"],
            loader_workers=options["loader_workers"],
            recalibrate_batches=options["recalibrate_batches"],
            distill_weight=options["distill_weight"],
        )
        steps_bar = tqdm(total=settings.steps, desc="train", unit="step",
                         disable=options["quiet"] or None, file=self.stderr._out)  # fmt: skip

        def on_step(step: int, loss: float) -> None:
            steps_bar.n = step
            steps_bar.set_postfix_str(f"loss {loss:.3f}", refresh=False)
            steps_bar.update(0)

        try:
            return segmenter_train(
                out_dir=options["out"],
                train_cases=train,
                val_cases=val,
                spec=spec,
                settings=settings,
                resume=options["resume"],
                initial_state=initial_state,
                device=options["device"],
                on_step=on_step,
                data_description=data,
            )
        except (ValueError, FileNotFoundError, SegmenterError) as exc:
            raise CommandError(str(exc)) from exc
        finally:
            steps_bar.close()


def _options_check(options: dict[str, Any]) -> None:
    """Refuse options that cannot make a run, before anything is rendered."""
    for name in ("timepoints", "steps", "batch_size", "patch_size"):
        if options[name] < 1:
            raise CommandError(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("patients", "small_patients", "val_patients"):
        if options[name] < 0:
            raise CommandError(f"--{name.replace('_', '-')} must be >= 0")
    if options["patients"] + options["small_patients"] < 1 and not options["generated"]:
        raise CommandError("no training data: give --patients, --small-patients or --generated")
    _generated_options_check(options)
    if options["patch_size"] % 8:
        raise CommandError("--patch-size must be a multiple of 8 (three 2x poolings)")
    out: Path = options["out"]
    if out.exists() and not out.is_dir():
        raise CommandError(f"{out} exists and is not a folder")
    _warm_start_options_check(options)
    if not 0 <= options["lesion_bias"] <= 1:
        raise CommandError("--lesion-bias must be between 0 and 1")
    if options["resume"] and not (out / "checkpoint.pt").exists():
        raise CommandError(f"--resume: no checkpoint at {out / 'checkpoint.pt'}")
    if not options["resume"] and (out / "checkpoint.pt").exists():
        raise CommandError(
            f"{out} already holds a checkpoint: pass --resume to continue it, or choose "
            "another folder"
        )


def _warm_start_options_check(options: dict[str, Any]) -> None:
    init = options["init_from"]
    if init is not None and not init.is_file():
        raise CommandError(f"--init-from: no checkpoint at {init}")
    if init is not None and options["resume"]:
        raise CommandError("--init-from starts a new run; it cannot be combined with --resume")
    if options["distill_weight"] < 0:
        raise CommandError("--distill-weight must be >= 0")
    if options["distill_weight"] > 0 and init is None:
        raise CommandError("--distill-weight keeps the starting model: it needs --init-from")


def _generated_options_check(options: dict[str, Any]) -> None:
    if not 0 <= options["plain_share"] <= 1:
        raise CommandError("--plain-share must be between 0 and 1")
    if not 0 <= options["cohort_acquisition_share"] <= 1:
        raise CommandError("--cohort-acquisition-share must be between 0 and 1")
    if options["loader_workers"] < 0:
        raise CommandError("--loader-workers must be >= 0")
    if options["recalibrate_batches"] < 0:
        raise CommandError("--recalibrate-batches must be >= 0")


def _sources(options: dict[str, Any]) -> tuple[list[CohortSource], list[CohortSource]]:
    """Training cohorts (seed, seed + 1) and validation cohorts (seed + 2, seed + 3)."""
    cs = options["cohort_seed"]
    tp = options["timepoints"]
    train_sources = []
    if options["generated"]:
        pass  # patches come from the generator; the cohort only validates
    elif options["patients"]:
        train_sources.append(
            CohortSource(cs, "full", tuple(range(options["patients"])), tp, lesion_resize=True)
        )
    if options["small_patients"] and not options["generated"]:
        train_sources.append(
            CohortSource(
                cs + 1, "small", tuple(range(options["small_patients"])), tp, lesion_resize=True
            )
        )
    val_sources = []
    if options["val_patients"]:
        val_sources = [
            CohortSource(cs + 2, "full", tuple(range(options["val_patients"])), 1),
            CohortSource(cs + 3, "small", tuple(range(options["val_patients"])), 1),
        ]
    return train_sources, val_sources


def _data_description(
    train_sources: list[CohortSource], val_sources: list[CohortSource], options: dict[str, Any]
) -> dict[str, Any]:
    """What the model card and manifest record of the training data."""
    data = {
        "train": [vars(s) | {"patients": len(s.patients)} for s in train_sources],
        "validation": [vars(s) | {"patients": len(s.patients)} for s in val_sources],
        "cohort_seeds": sorted({s.seed for s in train_sources + val_sources}),
        "native_pixel_min_mm": 1.25,
    }
    if options["generated"]:
        data["generator"] = {
            "modules": [
                "imaging.core.synthetic.variation",
                "imaging.core.synthetic.variation_lesions",
                "imaging.core.synthetic.variation_render",
                "imaging.core.synthetic.variation_visibility",
                "imaging.core.segmentation.training.generated",
            ],
            "patches": "a new scene, lesions and acquisition per patch, seeded by (seed, step)",
            "plain_share": options["plain_share"],
            "cohort_acquisition_share": options["cohort_acquisition_share"],
            "lesions": "only those visible at the patch's noise "
            "(imaging.core.synthetic.variation_visibility)",
            "patch_size": options["patch_size"],
        }
    return data


def _warm_start(init: Path, *, spec: SegmenterSpec, data: dict[str, Any]) -> dict[str, Any]:
    """The network weights of another run's checkpoint, or of shipped weights (a
    ``state_dict`` and ``spec``, as in ``imaging/weights``); ``data`` records where they
    came from."""
    state = checkpoint_read(init)
    if "network" not in state and "state_dict" in state:
        # Shipped weights: how they were trained is in the manifest beside them.
        manifest = init.parent / "manifest.json"
        shipped = json.loads(manifest.read_text()) if manifest.is_file() else {}
        training = shipped.get("training", {})
        # Averaged weights (average_segmenter) carry their tuned parent's training record
        # and, beside it, the average that made them.
        made = {"weight_average": shipped["weight_average"]} if "weight_average" in shipped else {}
        state = {"network": state["state_dict"], "spec": state["spec"],
                 "step": training.get("steps", 0), "seconds": training.get("seconds", 0.0),
                 "settings": training.get("settings", {}),
                 "data": training.get("data", {}) | made}  # fmt: skip
        if not state["settings"]:
            raise CommandError(f"--init-from: no training record beside {init} (manifest.json)")
    if not SegmenterSpec.from_dict(state["spec"]).same_network(spec):
        raise CommandError(f"--init-from: {init} holds a different network")
    data["warm_start"] = {
        "checkpoint": str(init),
        "sha256": file_sha256(init),
        "steps": int(state["step"]),
        "seconds": round(float(state.get("seconds", 0.0)), 1),
        "settings": state["settings"],
        "data": state.get("data", {}),
    }
    return state["network"]


def _validation_text(result: TrainingResult) -> str:
    if not result.validation:
        return ""
    v = result.validation
    dice = v["dice"]
    return (
        f", validation Dice nodule {_f(dice['lung_nodule'])} liver lesion "
        f"{_f(dice['liver_lesion'])}, sensitivity>=5mm {_f(v['sensitivity_5mm'])}, "
        f"FP/study {v['false_positives_per_case']:.2f}"
    )


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
