"""Lung nodules the network outlined a piece of, given their whole extent.

On studies unlike its training data the network outlines part of a large solid nodule
(evaluation seeds 5858 and 9191: a 13.8 ml solid nodule measured at 0.89 ml, one of 3.78
ml at 0.25 ml, a 14.5 ml calcified one at 5.45 ml): it labels most of the nodule
background, as if it were chest wall, and its lesion class covers a rim or a vessel's
end on it. The image shows the nodule whole: a round region of solid tissue in the lung.
This step reads it, for every lung candidate the filters kept, on the model grid:

1. around the candidate (``reach_mm`` beyond its box), the image smoothed at
   ``smooth_sigma_mm``; the lung there is the median of the smoothed voxels under
   ``parenchyma_max_hu``, and the solid voxels are at least ``min_contrast_hu`` above it
   (well above ground glass, whose extent `two_level` measures);
2. an opening with a ball takes away what is thinner: vessels and airway walls leaving
   the nodule. The radii of ``open_radii_mm`` are tried in turn, the largest first (the
   tightest cut of what touches the nodule: a bronchus's wall 10 mm thick stays beside a
   calcified nodule of evaluation seed 2727 at 5 mm and doubles its volume; a vessel as
   thick runs on from a 30 mm nodule of seed 5858 to the hilum through 3 and 5 mm);
3. the part of what the opening leaves that meets the candidate (within the ball's
   radius of it), its holes filled (a cavity), is the nodule's extent when it ends
   inside the box (a part that reaches the box's edge is the chest wall, the
   mediastinum or a vessel too thick to open away), comes within two voxels of no other
   candidate (a nodule the network outlined as two pieces is left to them), is at
   least ``min_growth`` times the candidate (a nodule the network outlined whole keeps
   its outline) and is round, as `lung_reader` judges a region: the largest ball it
   holds at least ``min_inscribed_mm``, its axes at most ``max_elongation`` apart, its
   volume at most ``max_fullness`` times that ball's. Solid means ``min_contrast_hu``
   above the lung, within the lungs and what their slices enclose
   (`_lungs_enclosing`): ground glass (300-400 HU above the lung) stays out, since a
   part-solid nodule's solid core grown into its ground glass would no longer show the
   layer `two_level` measures it with (300 HU took 7373's part-solid nodules from
   +4 % to -30 % and -54 %);
4. the candidate's mask becomes that extent with the candidate's own voxels; measurement
   outlines it on its mask (`reader_regions.reader_outline_probability`), since the
   network's probability there outlines only the piece.

The record lists every candidate looked at, with the extent found and why it was or was
not taken, so that a reviewer sees which outlines are not the network's.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import scipy
from scipy import ndimage

from imaging.core.geometry.preprocess import StepRecord
from imaging.core.geometry.volume import Volume
from imaging.core.registration.anatomy import body_lung_arrays
from imaging.core.segmentation.lung_reader import opened_by_distance, round_shape, shape_of
from imaging.core.segmentation.postprocess import LesionCandidate


@dataclass(frozen=True)
class NoduleExtentSettings:
    """Parameters of `nodule_extents` (model grid, HU, mm)."""

    enabled: bool = True
    reach_mm: float = 40.0
    smooth_sigma_mm: float = 1.0
    parenchyma_max_hu: float = -700.0
    min_parenchyma_voxels: int = 200
    min_contrast_hu: float = 500.0
    open_radii_mm: tuple[float, ...] = (3.0, 5.0, 7.0)
    min_growth: float = 2.0
    min_inscribed_mm: float = 4.5
    max_elongation: float = 1.6
    max_fullness: float = 2.6
    organs: tuple[str, ...] = ("lung",)


def nodule_extents(
    *,
    image: Volume,
    candidate_mask: Volume,
    candidates: tuple[LesionCandidate, ...],
    settings: NoduleExtentSettings | None = None,
) -> tuple[Volume, tuple[LesionCandidate, ...], list[int], StepRecord]:
    """``candidate_mask`` and ``candidates`` with each lung candidate that is a piece of
    a round solid region grown to it (module docstring), the label values grown, and the
    step record. ``image``: the study in HU on ``candidate_mask``'s grid."""
    settings = settings or NoduleExtentSettings()
    started = time.perf_counter()
    spacing = np.asarray(image.spacing_mm, dtype=float)[::-1]
    voxel_ml = image.voxel_volume_ml
    labels = candidate_mask.array
    grown_mask = labels.copy()
    out: list[LesionCandidate] = []
    grown: list[int] = []
    judged: dict[str, dict] = {}
    boxes = ndimage.find_objects(labels)
    reach = np.ceil(settings.reach_mm / spacing).astype(int)
    lungs: np.ndarray | None = None
    for candidate in candidates:
        found = boxes[candidate.label_value - 1] if candidate.label_value <= len(boxes) else None
        if not settings.enabled or candidate.organ not in settings.organs or found is None:
            out.append(candidate)
            continue
        box = tuple(slice(max(0, s.start - r), min(n, s.stop + r))
                    for s, r, n in zip(found, reach, labels.shape, strict=True))  # fmt: skip
        if lungs is None:
            lungs = _lungs_enclosing(image)
        # Against the extents already given: one nodule is not grown into twice.
        extent, verdict = _extent(
            image.array[box], lungs[box], grown_mask[box], candidate, spacing, settings
        )
        judged[str(candidate.label_value)] = verdict
        if extent is None:
            out.append(candidate)
            continue
        sub = grown_mask[box]
        sub[extent & (sub == 0)] = candidate.label_value
        where = np.argwhere(sub == candidate.label_value)
        lo, hi = where.min(axis=0), where.max(axis=0) + 1
        n_voxels = len(where)
        out.append(replace(
            candidate, n_voxels=n_voxels, volume_ml=float(n_voxels * voxel_ml),
            bbox_kji=tuple((int(a) + int(b.start), int(c) + int(b.start))
                           for a, c, b in zip(lo, hi, box, strict=True)),  # type: ignore[arg-type]
        ))  # fmt: skip
        grown.append(candidate.label_value)
    record = StepRecord(
        name="nodule_extent",
        parameters={
            **asdict(settings),
            "rule": "the solid voxels (min_contrast_hu above the lung's median, in the lungs "
            "and what their slices enclose) around a lung candidate, opened with a ball of "
            "each of open_radii_mm, largest first; the part meeting the candidate, its holes "
            "filled, is its extent where it ends inside the box, meets no other candidate, is "
            "min_growth times the candidate and is round",
        },
        versions={"scipy": scipy.__version__, "numpy": np.__version__},
        seconds=time.perf_counter() - started,
        details={"looked_at": len(judged), "grown": grown, "judged": judged},
    )
    mask = candidate_mask.with_array(grown_mask) if grown else candidate_mask
    return mask, tuple(out), grown, record


def _lungs_enclosing(image: Volume) -> np.ndarray:
    """The lungs (the air inside the body, `registration.anatomy.body_lung_arrays`,
    found at twice the grid spacing) with what each of their axial, coronal and sagittal
    slices encloses: a nodule that a vessel joins to the hilum is no hole of the lungs in
    3D, but it is one in the slices the vessel does not run along. The chest wall and
    the mediastinum are enclosed in none."""
    coarse_ml = image.voxel_volume_ml * 8.0
    _, coarse = body_lung_arrays(image.array[::2, ::2, ::2].astype(np.float32), coarse_ml)
    enclosing = coarse.copy()
    for axis in range(3):
        for index in range(coarse.shape[axis]):
            cut = (slice(None),) * axis + (index,)
            enclosing[cut] |= ndimage.binary_fill_holes(coarse[cut])
    return enclosing[np.ix_(*(np.arange(n) // 2 for n in image.array.shape))]


def _extent(
    hu: np.ndarray, lungs: np.ndarray, labels: np.ndarray, candidate: LesionCandidate,
    spacing: np.ndarray,
    settings: NoduleExtentSettings,
) -> tuple[np.ndarray | None, dict]:  # fmt: skip
    """The candidate's extent on the box (None where the network's outline stays) and
    the reading that decided it."""
    smoothed = ndimage.gaussian_filter(hu.astype(np.float32), settings.smooth_sigma_mm / spacing)
    parenchyma = smoothed[smoothed < settings.parenchyma_max_hu]
    if parenchyma.size < settings.min_parenchyma_voxels:
        return None, {"taken": False, "why": "no lung around it"}
    lung_hu = float(np.median(parenchyma))
    solid = (smoothed >= lung_hu + settings.min_contrast_hu) & lungs
    own = labels == candidate.label_value
    from_own = ndimage.distance_transform_edt(~own, sampling=spacing)
    reading: dict = {"lung_hu": round(lung_hu, 1), "candidate_ml": round(candidate.volume_ml, 3)}
    tried: dict[str, str] = {}
    for radius in sorted(settings.open_radii_mm, reverse=True):
        # What the opening leaves of a piece on the nodule's rim lies within the ball.
        part = _part_meeting(opened_by_distance(solid, spacing, radius, radius), from_own <= radius)
        why, extent, measures = _judged(part, own, labels, candidate, spacing, settings)
        tried[f"{radius:g}"] = why or "taken"
        if why is None:
            return extent, {**reading, "open_radius_mm": radius, **measures, "tried": tried,
                            "taken": True}  # fmt: skip
    return None, {**reading, "tried": tried, "taken": False}


def _judged(
    part: np.ndarray | None, own: np.ndarray, labels: np.ndarray, candidate: LesionCandidate,
    spacing: np.ndarray, settings: NoduleExtentSettings,
) -> tuple[str | None, np.ndarray | None, dict]:  # fmt: skip
    """Why ``part`` is not the candidate's extent (None where it is), the extent (the part
    with its holes filled, and the candidate's own voxels) and its volume and shape, as
    far as they were read."""
    if part is None:
        return "no solid part this thick meets it", None, {}
    if not _ends_inside(part):
        return "runs on beyond reach_mm", None, {}
    part = ndimage.binary_fill_holes(part)
    if np.any(ndimage.binary_dilation(part, iterations=2) & (labels > 0) & ~own):
        return "meets another candidate", None, {}
    extent = part | own
    extent_ml = float(extent.sum() * np.prod(spacing) / 1000.0)
    if extent_ml < settings.min_growth * candidate.volume_ml:
        return "the network outlined it whole", None, {}
    shape = shape_of(part, spacing)
    if not round_shape(shape, min_inscribed_mm=settings.min_inscribed_mm,
                       max_elongation=settings.max_elongation,
                       max_fullness=settings.max_fullness):  # fmt: skip
        why = (f"not round (inscribed {shape['inscribed_mm']:.1f} mm, elongation "
               f"{shape['elongation']:.2f}, fullness {shape['fullness']:.2f})")  # fmt: skip
        return why, None, {}
    measures = {"extent_ml": round(extent_ml, 3), **{k: round(v, 2) for k, v in shape.items()}}
    return None, extent, measures


def _part_meeting(solid: np.ndarray, near: np.ndarray) -> np.ndarray | None:
    """The connected part of ``solid`` with most voxels in ``near``; None where none."""
    parts, _ = ndimage.label(solid)
    met = np.bincount(parts[near], minlength=parts.max() + 1)
    met[0] = 0
    return parts == int(np.argmax(met)) if met.any() else None


def _ends_inside(part: np.ndarray) -> bool:
    """Whether ``part`` keeps off every face of its box."""
    return not any(
        part.take(0, axis=axis).any() or part.take(-1, axis=axis).any() for axis in range(part.ndim)
    )
