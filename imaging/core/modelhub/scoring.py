"""The arithmetic of a validation report: one study's lesions matched to its truth, then
sensitivity, false positives, Dice, volume and diameter error, calibration and time.

Matching (as `benchmarks/segmentation.py` does): a true lesion is detected when a
candidate's region (its voxels grown by two, `measure.lesion_regions`) holds the true
centre, or a candidate's centroid lies within the lesion's equivalent radius + 3 mm. A
candidate that matches no true lesion is a false positive (one on a simple cyst too).
Sensitivity counts lesions of at least 5 mm (equivalent diameter); rows per organ, side
and size band count every size. Volume error: |measured - true| / true over detected
lesions of 0.5 ml or more; diameter error: |measured - true| longest axial diameter
(mm). Dice: the matched candidates' voxels against the true shape on the model grid
(studies with a voxel truth only). Calibration: each candidate's confidence against
whether it was a true lesion, in bins of 0.1 from 0.5 (expected calibration error and
Brier score).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from imaging.core.modelhub.validation_set import ValidationCase, size_band
from imaging.core.segmentation.measure import lesion_regions

MIN_SENSITIVITY_MM = 5.0
MIN_VOLUME_ML = 0.5
MATCH_SLACK_MM = 3.0
CALIBRATION_EDGES = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
ORGANS = ("lung", "liver")


@dataclass
class LesionRow:
    """One true lesion of one study, and what the model made of it."""

    case_id: str
    lesion_id: str
    organ: str
    side: str
    kind: str
    band: str
    diameter_mm: float
    volume_ml: float
    detected: bool
    volume_ml_measured: float | None = None
    volume_error: float | None = None
    longest_axial_mm: float | None = None
    longest_axial_mm_measured: float | None = None
    diameter_error_mm: float | None = None
    dice: float | None = None
    organ_found: str | None = None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CandidateRow:
    """One candidate the model reported: its organ, confidence and whether it was true."""

    case_id: str
    label_value: int
    organ: str
    confidence: float
    true_lesion: bool
    on_negative: bool

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _dice(truth: np.ndarray, found: np.ndarray) -> float | None:
    total = int(truth.sum()) + int(found.sum())
    return None if total == 0 else 2.0 * int((truth & found).sum()) / total


def study_score(
    *, case: ValidationCase, lesions: Sequence[Any], candidate_mask: Any
) -> tuple[list[LesionRow], list[CandidateRow]]:
    """Match ``lesions`` (`measure.LesionMeasurement`) of ``candidate_mask`` (label volume
    on the model grid) to ``case``'s truth; one row per true lesion and per candidate."""
    mask = candidate_mask.array
    regions = lesion_regions(mask, dilation_voxels=2)
    truth_map = case.truth_labels(candidate_mask) if case.truth_labels is not None else None
    claimed: set[int] = set()
    on_negatives: set[int] = set()
    rows = []
    for index, truth in enumerate(case.truths, start=1):
        centre = np.asarray(truth.centre_lps_mm)
        idx = np.round(candidate_mask.lps_to_index(centre)).astype(int)
        inside_grid = bool(np.all(idx >= 0) and np.all(idx < np.asarray(candidate_mask.shape_ijk)))
        hit = int(regions[idx[2], idx[1], idx[0]]) if inside_grid else 0
        reach = truth.diameter_mm / 2 + MATCH_SLACK_MM
        matched = [m for m in lesions if m.label_value == hit
                   or np.linalg.norm(np.asarray(m.centroid_lps_mm) - centre) <= reach]  # fmt: skip
        labels = {m.label_value for m in matched}
        if truth.negative:
            on_negatives |= labels
            continue
        claimed |= labels
        row = LesionRow(case.case_id, truth.lesion_id, truth.organ, truth.side, truth.kind,
                        size_band(truth.diameter_mm), round(truth.diameter_mm, 3),
                        truth.volume_ml, bool(matched), longest_axial_mm=truth.longest_axial_mm)  # fmt: skip
        if matched:
            measured = float(sum(m.volume_ml for m in matched))
            biggest = max(matched, key=lambda m: m.volume_ml)
            row.volume_ml_measured = measured
            row.volume_error = abs(measured - truth.volume_ml) / truth.volume_ml
            row.longest_axial_mm_measured = float(biggest.longest_axial_diameter_mm)
            row.organ_found = biggest.organ
            if truth.longest_axial_mm:
                row.diameter_error_mm = abs(row.longest_axial_mm_measured - truth.longest_axial_mm)
            if truth_map is not None:
                row.dice = _dice(truth_map == index, np.isin(mask, list(labels)))
        rows.append(row)
    candidates = [
        CandidateRow(
            case.case_id,
            int(m.label_value),
            str(m.organ),
            float(m.confidence),
            m.label_value in claimed,
            m.label_value in on_negatives - claimed,
        )  # fmt: skip
        for m in lesions
    ]
    return rows, candidates


def _rate(hits: int, n: int) -> float | None:
    return hits / n if n else None


def _median(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.median(kept)) if kept else None


def _mean(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def _group_measures(lesions: Sequence[LesionRow], fps: int, n_studies: int) -> dict[str, Any]:
    """Sensitivity (>= 5 mm), FP per study, Dice, volume and diameter error of one group."""
    counted = [r for r in lesions if r.diameter_mm >= MIN_SENSITIVITY_MM]
    found = [r for r in lesions if r.detected]
    return {
        "lesions": len(lesions),
        "lesions_counted": len(counted),
        "detected": sum(r.detected for r in counted),
        "sensitivity": _rate(sum(r.detected for r in counted), len(counted)),
        "false_positives": fps,
        "fp_per_study": fps / n_studies if n_studies else None,
        "dice_mean": _mean(r.dice for r in found),
        "dice_median": _median(r.dice for r in found),
        "volume_error_median": _median(
            r.volume_error for r in found if r.volume_ml >= MIN_VOLUME_ML
        ),
        "diameter_error_mm_median": _median(r.diameter_error_mm for r in found),
        "organ_correct": _rate(sum(r.organ_found == r.organ for r in found), len(found)),
    }


def calibration(candidates: Sequence[CandidateRow]) -> dict[str, Any]:
    """Reliability of the confidence: bins of ``CALIBRATION_EDGES``, ECE and Brier score."""
    bins = []
    conf = np.array([c.confidence for c in candidates], dtype=float)
    truth = np.array([c.true_lesion for c in candidates], dtype=float)
    ece = 0.0
    for low, high in zip((0.0, *CALIBRATION_EDGES[:-1]), CALIBRATION_EDGES, strict=True):
        last = high == CALIBRATION_EDGES[-1]
        sel = (conf >= low) & ((conf <= high) if last else (conf < high))
        n = int(sel.sum())
        if not n:
            continue
        mean_conf, share = float(conf[sel].mean()), float(truth[sel].mean())
        ece += n / len(conf) * abs(mean_conf - share)
        bins.append({"low": low, "high": high, "n": n, "mean_confidence": mean_conf,
                     "share_true": share})  # fmt: skip
    return {
        "bins": bins,
        "ece": ece if len(conf) else None,
        "brier": float(np.mean((conf - truth) ** 2)) if len(conf) else None,
        "candidates": len(conf),
    }


def report_metrics(
    *, lesions: Sequence[LesionRow], candidates: Sequence[CandidateRow], seconds: Sequence[float]
) -> dict[str, Any]:
    """Everything a report shows, from the rows of every study of the set."""
    studies = sorted({r.case_id for r in lesions} | {c.case_id for c in candidates})
    n_studies = max(len(seconds), len(studies))
    fps = [c for c in candidates if not c.true_lesion]
    out: dict[str, Any] = {
        "studies": n_studies,
        "overall": _group_measures(lesions, len(fps), n_studies),
        "by_organ": {
            organ: _group_measures(
                [r for r in lesions if r.organ == organ],
                sum(c.organ == organ for c in fps),
                n_studies,
            )  # fmt: skip
            for organ in ORGANS
        },
        "fp_on_cysts": sum(c.on_negative for c in fps),
        "calibration": calibration(candidates),
        "seconds_per_study": {
            "median": _median(seconds),
            "max": max(seconds) if seconds else None,
            "all": [round(s, 2) for s in seconds],
        },  # fmt: skip
    }
    rows = []
    keys = sorted({(r.organ, r.side, r.band) for r in lesions})
    for organ, side, band in keys:
        group = [r for r in lesions if (r.organ, r.side, r.band) == (organ, side, band)]
        rows.append({"organ": organ, "side": side, "band": band, "lesions": len(group),
                     "detected": sum(r.detected for r in group),
                     "sensitivity": _rate(sum(r.detected for r in group), len(group))})  # fmt: skip
    out["by_organ_side_band"] = rows
    kinds = sorted({(r.organ, r.kind) for r in lesions})
    out["by_kind"] = [
        {"organ": organ, "kind": kind, "lesions": len(g), "detected": sum(r.detected for r in g),
         "sensitivity": _rate(sum(r.detected for r in g), len(g))}
        for organ, kind in kinds
        for g in [[r for r in lesions if (r.organ, r.kind) == (organ, kind)]]
    ]  # fmt: skip
    return out
