"""Shipping a trained segmenter: float16 weights, their manifest, and a measured model card."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from imaging.core.segmentation.network import WEIGHTS_DIR, SegmenterSpec, weights_export
from imaging.core.segmentation.training.loop import network_from_checkpoint
from imaging.core.segmentation.training.settings import TrainingSettings


def percent_text(value: float | None) -> str:
    """A share as ``12.3 %`` (``-`` when unknown)."""
    return "-" if value is None else f"{100 * value:.1f} %"


def _card_model(spec: SegmenterSpec, manifest: dict[str, Any]) -> list[str]:
    return [
        "## Model",
        "",
        f"- Weights: `{manifest['file']}` ({manifest['bytes'] / 1e6:.2f} MB, float16), SHA-256 `{manifest['sha256']}`",
        f"- Network: MONAI `UNet`, channels {list(spec.channels)}, strides {list(spec.strides)}, "
        f"{spec.num_res_units} residual unit(s) per level, {spec.norm} norm",
        f"- Classes: {', '.join(f'{i} {c}' for i, c in enumerate(spec.classes))}",
        f"- Input: LPS, {spec.spacing_mm[0]:g} mm isotropic (linear resampling), channels "
        + ", ".join(f"HU {lo:g}..{hi:g} -> [0, 1]" for lo, hi in spec.windows_hu),
        "",
    ]


def _card_training(
    data: dict[str, Any], settings: TrainingSettings, steps: int, seconds: float
) -> list[str]:
    source = (
        GENERATED_DATA_TEXT
        if data.get("generator")
        else ["Synthetic CT from `imaging.core.synthetic.cohort` (never the benchmark's seed):"]
    )
    return [
        "## Training data",
        "",
        *source,
        "",
        "```",
        json.dumps(data, indent=1),
        "```",
        "",
        "## Training settings",
        "",
        "```",
        json.dumps(settings.as_dict(), indent=1),
        "```",
        "",
        f"Trained {steps} steps in {seconds / 60:.1f} min on {torch.get_num_threads()} CPU threads "
        f"(torch {torch.__version__}).",
        "",
        *_phases_table(data, settings, steps, seconds),
    ]


def _phases_table(
    data: dict[str, Any], settings: TrainingSettings, steps: int, seconds: float
) -> list[str]:
    """The chain of warm starts (``--init-from``) that led to these weights, oldest first."""
    phases = [(settings.as_dict(), steps, seconds)]
    link = data.get("warm_start")
    while link:
        phases.append((link["settings"], link["steps"], link["seconds"]))
        link = link.get("data", {}).get("warm_start")
    if len(phases) == 1:
        return []
    lines = [
        "Training phases (each warm-started from the previous one's weights, with a fresh "
        "optimiser and learning-rate schedule):",
        "",
        "| phase | steps | patch | batch | lesion share | lesion weight | learning rate | minutes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    total_steps, total_seconds = 0, 0.0
    for n, (s, phase_steps, phase_seconds) in enumerate(reversed(phases), start=1):
        total_steps += phase_steps
        total_seconds += phase_seconds
        lines.append(
            f"| {n} | {phase_steps} | {s['patch_size']}^3 | {s['batch_size']} | "
            f"{s['lesion_bias']:g} | {s.get('lesion_weight', 1.0):g} | {s['learning_rate']:g} | "
            f"{phase_seconds / 60:.1f} |"
        )
    lines += ["", f"In all: {total_steps} steps, {total_seconds / 60:.1f} min.", ""]
    return lines


def _card_validation(validation: dict[str, Any] | None) -> list[str]:
    lines = ["## Validation (held-out patients, whole studies, model grid)", ""]
    if not validation:
        return [*lines, "(no validation split)"]
    lines += ["| class | Dice |", "| --- | --- |"]
    for name, value in validation["dice"].items():
        lines.append(f"| {name} | {'-' if value is None else f'{value:.3f}'} |")
    lesion_dice = validation.get("lesion_dice_postprocessed")
    lines += [
        "",
        "Lesion Dice after post-processing (all candidates against all lesion voxels): "
        + ("-" if lesion_dice is None else f"{lesion_dice:.3f}")
        + ".",
        "",
        f"Lesions: {validation['n_lesions']} in {validation['n_cases']} studies; "
        f"sensitivity for lesions >= 5 mm: {percent_text(validation['sensitivity_5mm'])}; "
        f"false positives per study: {validation['false_positives_per_case']:.2f} "
        "(candidates after post-processing that touch no lesion).",
        "",
        "| size band (equivalent diameter) | lesions | detected |",
        "| --- | --- | --- |",
    ]
    for band, row in sorted(validation["by_size_band"].items()):
        lines.append(f"| {band} mm | {row['n']} | {row['detected']} |")
    return lines


GENERATED_DATA_TEXT = [
    "Every training patch is drawn fresh, seeded by (seed, step), from the variation "
    "generator (`imaging.core.synthetic.variation`, `variation_lesions`, `variation_render`; "
    "batches in `imaging.core.segmentation.training.generated`): the phantom trunk with body "
    "and organ sizes and positions spread wider and a smooth random warp of the whole "
    "anatomy; pulmonary vessel and bronchial trees, hepatic vessels, simple liver cysts and "
    "bowel gas (hard negatives); lung parenchyma of -920 to -760 HU, denser on the dependent "
    "side; lung nodules that are solid, lobulated, spiculated, part-solid, ground-glass, "
    "cavitating or calcified, in the parenchyma, subpleural, juxtavascular or perihilar; "
    "hypodense, lobulated, rim-enhancing, cystic and hyperdense liver lesions in the "
    "parenchyma, at the dome and at the edges; 3-45 mm; 0.5-1.5 mm pixels (a tenth "
    "2.5-3.2 mm), 0.6-5 mm slices, smooth, standard or sharp kernels, band-pass correlated "
    "noise of 4-45 HU, streaks, cupping and rotations of up to 15 degrees; a fifth of the "
    "patches the cohort's plain phantom. Each patch is mirrored left-right half the time "
    "(so no side is learnt) and goes through MONAI's random intensity transforms (shift, "
    "scale, smoothing, bias field). Validation: whole studies of the cohort generator.",
]

CARD_LIMITS = (
    "## Limits",
    "",
    "- Trained only on synthetic phantoms. It has never seen a real CT; fine-tune "
    "(`manage.py finetune_segmenter`) and validate on a site's own labelled series before "
    "any clinical reading.",
    "- Judged on an independent generator it never saw (`imaging.core.synthetic_eval`) "
    "as well as on the one it was trained with: `benchmarks/segmentation.py` reports both, "
    "per organ, side, size band, slice thickness, position and lesion kind.",
    "",
)


def model_card_write(
    *,
    path: Path,
    spec: SegmenterSpec,
    manifest: dict[str, Any],
    settings: TrainingSettings,
    data: dict[str, Any],
    validation: dict[str, Any] | None,
    seconds: float,
    steps: int,
    title: str = "Lesion segmenter",
    extra: str = "",
    written_by: str = "manage.py train_segmenter",
) -> Path:
    """A model card in Markdown: what, data, settings, validation figures, limits."""
    lines = [
        f"# {title}: {spec.label}",
        "",
        f"Written by `{written_by}`; numbers below are measured, not assumed.",
        "",
        *_card_model(spec, manifest),
        *_card_training(data, settings, steps, seconds),
        *_card_validation(validation),
        "",
        *CARD_LIMITS,
    ]
    if extra:
        lines += [extra, ""]
    path.write_text("\n".join(lines))
    return path


def _calibration_card(calibration: dict[str, Any]) -> str:
    """The lesion logit offset chosen in training and what each candidate offset gave."""
    rows = "\n".join(
        f"| {r['offset']:+.1f} | {r['detected']}/{r['lesions']} | {r['volume_ratio']:.3f} |"
        for r in calibration["lesion_offset_calibration"]
    )
    return (
        "## Lesion logit offset (calibrated on the validation cases)\n\n"
        f"Chosen: {calibration['chosen']:+.1f} (added to both lesion logits). See "
        "`training.calibration.lesion_offset_calibrate`.\n\n"
        "| offset | lesions detected | summed probability / true volume |\n"
        "| --- | --- | --- |\n" + rows + "\n\n"
    )


def weights_ship(
    *,
    checkpoint_path: Path,
    out_dir: Path,
    version: str,
    data: dict[str, Any],
    title: str = "Lesion segmenter",
    extra_card: str = "",
) -> tuple[Path, dict[str, Any]]:
    """From a training checkpoint, write the float16 weights, manifest and MODEL_CARD.md."""
    network, spec, state = network_from_checkpoint(checkpoint_path)
    spec = replace(spec, version=version, sha256="")
    settings = TrainingSettings(**state["settings"])
    history = state.get("history", [])
    validation = next((h["validation"] for h in reversed(history) if "validation" in h), None)
    calibration = next((h for h in reversed(history) if "lesion_offset_calibration" in h), None)
    if calibration:
        extra_card = _calibration_card(calibration) + extra_card
    steps = int(state["step"])
    seconds = float(state.get("seconds", 0.0))
    path, manifest = weights_export(
        network=network,
        spec=spec,
        out_dir=out_dir,
        manifest_extra={
            "training": {
                "data": data,
                "settings": settings.as_dict(),
                "steps": steps,
                "seconds": round(seconds, 1),
            },
            "validation": validation,
            "lesion_offset_calibration": calibration,
        },
    )
    model_card_write(
        path=Path(out_dir) / "MODEL_CARD.md",
        spec=spec,
        manifest=manifest,
        settings=settings,
        data=data,
        validation=validation,
        seconds=seconds,
        steps=steps,
        title=title,
        extra=extra_card,
    )
    return path, manifest


def weights_install(out: Path, weights: Path) -> None:
    """Replace the shipped weights in ``imaging/weights/`` by those in ``out``: ``weights``,
    its manifest and its model card."""
    WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
    for old in WEIGHTS_DIR.glob("*.pt"):
        old.unlink()
    for name in (weights.name, "manifest.json", "MODEL_CARD.md"):
        shutil.copy2(out / name, WEIGHTS_DIR / name)
