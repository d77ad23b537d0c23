"""Validation of a segmenter on whole held-out studies: Dice per class and lesion detection.

Held-out patients (never the benchmark's seed) are segmented whole with the
sliding-window path; reported: Dice per class on the model grid and lesion-level
detection (a true lesion is found when a predicted lesion component overlaps its
half-occupied voxels; a predicted component touching no lesion is a false positive),
by size band of the lesion's equivalent diameter.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from imaging.core.geometry.volume import Volume
from imaging.core.segmentation.network import (
    CLASSES,
    Segmenter,
    model_input_array,
    probabilities_predict,
)
from imaging.core.segmentation.postprocess import postprocess_run
from imaging.core.segmentation.training.cases import N_CLASSES, TrainingCase

SIZE_BANDS_MM: tuple[tuple[float, float], ...] = (
    (0.0, 5.0),
    (5.0, 10.0),
    (10.0, 20.0),
    (20.0, 1e9),
)


def size_band(diameter_mm: float) -> str:
    """The band label of a lesion's equivalent diameter: '<5', '5-10', '10-20', '>=20' (mm)."""
    for low, high in SIZE_BANDS_MM:
        if low <= diameter_mm < high:
            if low == 0.0:
                return f"<{high:g}"
            return f">={low:g}" if high >= 1e9 else f"{low:g}-{high:g}"
    return "?"


def lesion_detection(
    *,
    predicted_label: np.ndarray,
    truth_index: np.ndarray,
    truth_fraction: np.ndarray,
    truth_lesions: Sequence[dict[str, Any]],
    min_voxels: int = 3,
) -> dict[str, Any]:
    """Lesion-level detection on one grid: found truth lesions and false-positive components."""
    predicted = np.isin(predicted_label, (3, 4))
    components, n = ndimage.label(predicted, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(components.ravel(), minlength=n + 1)
    found = []
    for number, lesion in enumerate(truth_lesions, start=1):
        core = truth_index == number
        hit = bool(core.any() and np.any(predicted[core]))
        found.append({**lesion, "detected": hit})
    touching = set(np.unique(components[truth_fraction > 0]).tolist())
    false_positives = [c for c in range(1, n + 1) if sizes[c] >= min_voxels and c not in touching]
    return {"lesions": found, "false_positives": len(false_positives)}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two masks (NaN when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return float(2.0 * np.logical_and(a, b).sum() / total) if total else float("nan")


def _by_size_band(lesions: Sequence[dict[str, Any]]) -> dict[str, dict[str, int]]:
    bands: dict[str, dict[str, int]] = {}
    for lesion in lesions:
        band = bands.setdefault(size_band(lesion["diameter_mm"]), {"n": 0, "detected": 0})
        band["n"] += 1
        band["detected"] += int(lesion["detected"])
    return bands


def validate(*, model: Segmenter, cases: Sequence[TrainingCase]) -> dict[str, Any]:
    """Dice per class (argmax, pooled over cases, model grid); lesion detection by size band.

    Detection counts what ships: the candidates of `postprocess.postprocess_run` (a true
    lesion is found when a candidate overlaps its half-occupied voxels; a candidate
    touching no lesion is a false positive); ``lesion_dice`` is the Dice of all
    candidates against all half-occupied lesion voxels.
    """
    overlap = np.zeros(N_CLASSES)
    totals = np.zeros(N_CLASSES)
    lesion_overlap = lesion_total = 0
    lesions: list[dict[str, Any]] = []
    false_positives = 0
    started = time.perf_counter()
    for case in cases:
        hu = case.hu.astype(np.float32)
        probs = probabilities_predict(model=model, inputs=model_input_array(hu, model.spec))
        predicted = np.argmax(probs, axis=0)
        truth = case.label
        for c in range(1, N_CLASSES):
            p, t = predicted == c, truth == c
            overlap[c] += 2 * np.logical_and(p, t).sum()
            totals[c] += p.sum() + t.sum()
        post = postprocess_run(
            probabilities=probs, image=Volume(hu, case.spacing_mm, (0.0, 0.0, 0.0))
        )
        candidates = post.mask.array > 0
        core = case.lesion_index > 0
        lesion_overlap += 2 * int(np.logical_and(candidates, core).sum())
        lesion_total += int(candidates.sum() + core.sum())
        result = lesion_detection(
            predicted_label=np.where(candidates, 3, 0),
            truth_index=case.lesion_index,
            truth_fraction=case.lesion_fraction.astype(np.float32),
            truth_lesions=case.lesions,
            min_voxels=1,
        )
        lesions.extend(result["lesions"])
        false_positives += result["false_positives"]
    n5 = [x for x in lesions if x["diameter_mm"] >= 5.0]
    return {
        "n_cases": len(cases),
        "dice": {
            CLASSES[c]: (float(overlap[c] / totals[c]) if totals[c] else None)
            for c in range(1, N_CLASSES)
        },
        "lesion_dice_postprocessed": (lesion_overlap / lesion_total) if lesion_total else None,
        "n_lesions": len(lesions),
        "sensitivity_5mm": (sum(x["detected"] for x in n5) / len(n5)) if n5 else None,
        "false_positives_per_case": false_positives / max(1, len(cases)),
        "by_size_band": _by_size_band(lesions),
        "seconds": round(time.perf_counter() - started, 1),
    }
