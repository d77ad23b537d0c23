"""Simple liver cysts told from lesions on the study's own voxels, after the contrast filter.

RECIST 1.1 (section 3.1.3) does not count simple cysts as lesions, measurable or not. A
candidate in the liver is read as a simple cyst when at least half of its voxels are at
water density (median <= ``max_median_hu``, 20 HU: the radiologist's threshold for a
simple cyst) and the liver around it is enhanced (median of the ring around it >=
``min_liver_hu``, 75 HU). The liver around it is what the network labels liver
``liver_shell_mm`` (3-10 mm) from it, where there are ``min_liver_voxels`` such voxels,
else the ring of the contrast filter (1-3 voxels out): on thin slices that ring lies in
the blur of the cyst's own edge (on the evaluation seeds a 1.6 ml cyst in 0.625 mm
slices had a ring of 67 HU in a liver of 87 HU), and at the liver's edge part of it is
fat or bowel. Both are needed: without contrast, a normal liver is 50-65 HU
and a hypodense metastasis can sit at 10-20 HU like a cyst, so an unenhanced study keeps
every candidate (the rule abstains); with contrast, metastases take up some (30 HU and
more in portal venous studies) while a cyst stays at water. A cystic or necrotic
metastasis keeps a wall or solid part of tissue density, which lifts its median above
water unless its fluid fills more than half of it; such a lesion, read as a cyst here,
is the price of the rule, and the step record names each candidate it removed with the
two medians, so that a radiologist can add it back with one click (a missed lesion
added by hand is kept through later runs).

Measured on the evaluation generator's truth (small preset, 132 liver findings, 44 of
them cysts): the rule reads 18 of the 44 cysts as cysts and none of the 88 lesions;
the lesions' median is at least 32 HU wherever the liver around them is at 65 HU or more.

Fluid beside the liver. The gallbladder, a fluid-filled bowel loop or the duodenum lie
against the liver at water density, and a network that outlines them calls them liver
lesions. A liver candidate at water density (median <= ``max_median_hu``) with less than
``min_liver_share`` of its surroundings (a shell 1-3 voxels out on the network's grid,
away from other candidates) in the liver as the network draws it (`body.network_liver`:
liver and liver-lesion probabilities summed, at least 0.5, the liver the organ context
and the liver's second reader read, so that no step disagrees with another about where
the liver is) is fluid beside the liver, enhanced or not: a lesion of the liver, even at
its dome or edge, has the liver around it. On both evaluation seeds (16 studies, shipped
network): the 6 gallbladders it outlined had 45-85 % of their shell in the liver; every
true liver lesion found 88 % or more, the one at water density (a rim-enhancing
metastasis, median 17 HU) 98 %. An exophytic cystic lesion, most of it outside the
liver, would be read as fluid beside it:
the record names each candidate removed with its median and liver share.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import scipy
from scipy import ndimage

from imaging.core.geometry.preprocess import StepRecord
from imaging.core.geometry.volume import Volume
from imaging.core.registration.transforms import volume_onto_grid
from imaging.core.segmentation.body import holes_filled, network_liver
from imaging.core.segmentation.contrast import ContrastSettings, candidate_core_ring
from imaging.core.segmentation.postprocess import LesionCandidate, candidates_keep


@dataclass(frozen=True)
class CystSettings:
    """Parameters of `simple_cysts_filter` (native voxels of the study)."""

    max_median_hu: float = 20.0
    min_liver_hu: float = 75.0
    min_liver_share: float = 0.9
    liver_shell_mm: tuple[float, float] = (3.0, 10.0)
    min_liver_voxels: int = 20
    organs: tuple[str, ...] = ("liver",)


def simple_cysts_filter(
    *,
    study: Volume,
    candidate_mask: Volume,
    candidates: tuple[LesionCandidate, ...],
    settings: CystSettings | None = None,
    ring: ContrastSettings | None = None,
    on_study: np.ndarray | None = None,
    organ_label: Volume | None = None,
    probabilities: np.ndarray | None = None,
) -> tuple[Volume, tuple[LesionCandidate, ...], StepRecord]:
    """Drop liver candidates that read as simple cysts or as fluid beside the liver
    (module docstring); the record names each one with its median HU and the median HU
    of the liver around it, or the share of its surroundings in the liver.
    ``on_study``: a mask on the study's grid holding at least ``candidates`` (an earlier
    filter's, with candidates it dropped: they are left out here), else resampled.
    ``organ_label``: the network's labels on ``candidate_mask``'s grid (2 liver, 4 liver
    lesion); without it fluid beside the liver is not looked for. ``probabilities``: the
    network's (classes, k, j, i) on the same grid, whose liver (`body.network_liver`)
    the surroundings are read in; without them, the voxels labelled liver or liver
    lesion."""
    settings = settings or CystSettings()
    ring = ring or ContrastSettings()
    started = time.perf_counter()
    looked = [c for c in candidates if c.organ in settings.organs]
    removed: dict[str, dict[str, float]] = {}
    beside: dict[str, dict[str, float]] = {}
    if looked:
        if on_study is None:
            on_study = volume_onto_grid(moving=candidate_mask, reference=study).array
        else:  # nearest neighbour: dropping labels before or after resampling is the same
            keep = np.zeros(int(on_study.max()) + 1, dtype=bool)
            keep[[c.label_value for c in candidates]] = True
            on_study = np.where(keep[on_study], on_study, 0)
        removed, beside = _water_findings(
            study, on_study, candidate_mask, organ_label, looked, settings, ring, probabilities
        )
    dropped = set(removed) | set(beside)
    kept = tuple(c for c in candidates if str(c.label_value) not in dropped)
    mask = candidates_keep(candidate_mask, kept) if dropped else candidate_mask
    record = StepRecord(
        name="postprocess_simple_cysts",
        parameters={
            **asdict(settings),
            "ring_inner_voxels": ring.ring_inner_voxels,
            "ring_outer_voxels": ring.ring_outer_voxels,
            "rule": "median(candidate) <= max_median_hu and median(liver around it: the "
            "network's liver liver_shell_mm from it, else the ring) >= min_liver_hu, on the "
            "study's own voxels: a simple cyst (RECIST 1.1 3.1.3); "
            "median(candidate) <= max_median_hu and under min_liver_share of a shell 1-3 "
            "voxels around it (network grid) inside the liver (liver and liver-lesion "
            "probabilities summed >= 0.5, with the holes they enclose): fluid beside the liver",
        },
        versions={"scipy": scipy.__version__, "numpy": np.__version__},
        seconds=time.perf_counter() - started,
        details={
            "looked_at": len(looked),
            "removed": len(dropped),
            "cysts": removed,
            "fluid_beside_liver": beside,
        },  # fmt: skip
    )
    return mask, kept, record


def _water_findings(
    study: Volume,
    on_study: np.ndarray,
    candidate_mask: Volume,
    organ_label: Volume | None,
    looked: list[LesionCandidate],
    settings: CystSettings,
    ring: ContrastSettings,
    probabilities: np.ndarray | None = None,
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """The candidates of ``looked`` read as simple cysts and as fluid beside the liver,
    each with what decided it (`simple_cysts_filter`)."""
    removed: dict[str, dict[str, float]] = {}
    beside: dict[str, dict[str, float]] = {}
    voxels = candidate_core_ring(on_study, study.array, [c.label_value for c in looked], ring)
    water = [value for value, found in voxels.items() if found is not None
             and float(np.median(found[0])) <= settings.max_median_hu]  # fmt: skip
    around = _liver_around(study, on_study, water, organ_label, candidate_mask,
                           settings.liver_shell_mm) if water else {}  # fmt: skip
    grid_boxes: list[tuple[slice, ...] | None] | None = None  # on the network's grid
    enclosing = np.zeros(0, dtype=bool)  # the liver with what it encloses, made once
    for value, found in voxels.items():
        if found is None or found[1].size < 8:  # no voxel or no ring: no evidence
            continue
        core_hu, ring_hu = (float(np.median(v)) for v in found)
        if core_hu > settings.max_median_hu:
            continue
        liver_voxels = around.get(value)
        liver_hu = (float(np.median(liver_voxels)) if liver_voxels is not None
                    and liver_voxels.size >= settings.min_liver_voxels else ring_hu)  # fmt: skip
        if liver_hu >= settings.min_liver_hu:
            removed[str(value)] = {
                "median_hu": round(core_hu, 1),
                "liver_hu": round(liver_hu, 1),
                "ring_hu": round(ring_hu, 1),
            }
            continue
        if organ_label is None or organ_label.array.shape != candidate_mask.array.shape:
            continue
        if grid_boxes is None:
            grid_boxes = ndimage.find_objects(candidate_mask.array)
            drawn = (np.isin(organ_label.array, (2, 4)) if probabilities is None
                     else network_liver(probabilities))  # fmt: skip
            enclosing = holes_filled(
                drawn | np.isin(candidate_mask.array, [c.label_value for c in looked])
            )
        share = _liver_share(candidate_mask.array, enclosing, value, grid_boxes)
        if share is not None and share < settings.min_liver_share:
            beside[str(value)] = {
                "median_hu": round(core_hu, 1),
                "liver_share": round(share, 3),
            }
    return removed, beside


def _liver_around(
    study: Volume,
    on_study: np.ndarray,
    values: list[int],
    organ_label: Volume | None,
    candidate_mask: Volume,
    shell_mm: tuple[float, float],
) -> dict[int, np.ndarray]:
    """The HU of the liver around each candidate: the study's voxels ``shell_mm`` from it
    (mm, outside the blur of its own edge) that the network labels liver (2), away from
    every candidate. Empty without the network's labels."""
    if organ_label is None or organ_label.array.shape != candidate_mask.array.shape:
        return {}
    liver = volume_onto_grid(moving=organ_label, reference=study).array == 2
    liver &= on_study == 0
    spacing = np.asarray(study.spacing_mm[::-1], dtype=float)
    margin = np.ceil(shell_mm[1] / spacing).astype(int) + 1
    boxes = ndimage.find_objects(on_study)
    out: dict[int, np.ndarray] = {}
    for value in values:
        found = boxes[value - 1] if value - 1 < len(boxes) else None
        if found is None:
            continue
        box = tuple(slice(max(0, s.start - m), min(n, s.stop + m))
                    for s, m, n in zip(found, margin, on_study.shape, strict=True))  # fmt: skip
        distance = ndimage.distance_transform_edt(on_study[box] != value, sampling=spacing)
        shell = (distance >= shell_mm[0]) & (distance <= shell_mm[1]) & liver[box]
        out[value] = study.array[box][shell]
    return out


def _liver_share(
    candidates: np.ndarray,
    liver: np.ndarray,
    value: int,
    boxes: list[tuple[slice, ...] | None],
) -> float | None:
    """Share of a shell 1-3 voxels around candidate ``value`` (away from every candidate)
    inside ``liver``: the network's liver (`body.network_liver`, or its liver and
    liver-lesion labels), with the liver candidates and every region they enclose over
    the whole grid (a rim-enhancing lesion's bright rim, which the network may leave out
    of both liver and lesion, and a cystic lesion's water, which may reach past any box
    around the part of it a candidate holds, are inside the liver all the same); None
    where the candidate or its shell is empty. ``boxes``:
    ``ndimage.find_objects(candidates)``."""
    found = boxes[value - 1] if value - 1 < len(boxes) else None
    if found is None:
        return None
    box = tuple(slice(max(0, s.start - 8), min(n, s.stop + 8))
                for s, n in zip(found, candidates.shape, strict=True))  # fmt: skip
    core = candidates[box] == value
    shell = (ndimage.binary_dilation(core, iterations=3) & ~ndimage.binary_dilation(core)
             & (candidates[box] == 0))  # fmt: skip
    if not shell.any():
        return None
    return float(liver[box][shell].mean())
