"""Post-processing of lesion probabilities into lesion candidates, every step recorded.

Input: per-class probabilities on the model grid (`segmentation.SegmentationOutput`,
or the classical baseline's pseudo-probabilities) and the HU image on that grid.
Steps, in order, each a `preprocess.StepRecord` with its parameters and what it did:

1. ``threshold``: a voxel is lesion where p(nodule) + p(liver lesion) >= ``threshold``.
2. ``opening`` (6-connected cross, ``opening_radius_voxels``): removes spurs and thin
   bridges. Applied only to components of at least ``opening_min_ml``: at 1.5 mm a
   5 mm lesion is about 3 voxels across and may not hold the cross at all, and
   opening would erase it; tiny specks are the minimum-volume step's job.
3. ``closing`` (same cross): closes one-voxel gaps and notches.
4. ``fill_holes``: 3D hole filling of each component.
5. ``min_volume``: drops components under ``min_volume_ml``.
6. ``outside_body``: drops components whose centre of mass is outside the body (HU >
   -500, largest component, holes filled slice by slice so the lungs are inside, each
   slice closed by its convex hull so that a body cut by the field of view still holds
   its lungs) or
   whose mean HU is below ``air_hu`` (air: a lesion is tissue, ground glass included;
   noise in lung or around the patient is not).
7. ``organ_context``: drops components not embedded in an organ. Witnesses, any one
   suffices: the network (over a shell of ``organ_shell_voxels`` around the component,
   the mean probability of its organ, lung for a nodule and liver for a liver lesion,
   plus its own lesion class reaches ``min_organ_context``), and for the lungs a
   classical mask that holds in every CT (lungs are air below -400 HU inside the body,
   in components of at least 100 ml; at least ``min_lung_share`` of the shell in it).
   A component kept by the lung mask alone counts as a lung nodule. For a liver lesion
   the liver itself witnesses with what it encloses (`body.liver_enclosing`: at least
   ``min_liver_share`` of the shell in it): the network may leave a cystic lesion's
   water centre out of both liver and lesion, and the outline of its wall then has
   that water, labelled neither, as its surrounding. Lesions grow inside
   lung or liver; soft tissue that looks like a lesion in muscle, bowel or heart does
   not have that surrounding. The lung mask also witnesses against the network: a
   component the network calls a nodule with under ``min_nodule_lung_share`` of its
   shell in the lung mask has no lung around it (a spinous process or rib against the
   air outside the back, bowel, skin) and is dropped, where the study shows lungs at
   all and the component lies in the body as hole filling found it (a lung that the
   field of view opens to the air outside is not in the lung mask, and cannot witness).
   On the evaluation generator's 16 studies the true nodule with the least lung
   around it had 27 % of its shell in the mask; the bone tips 0 %.
8. ``smooth``: Gaussian smoothing (``smooth_sigma_voxels``) of each component's mask,
   re-thresholded at 0.5, so the boundary loses its staircase. Like opening, only for
   components of at least ``opening_min_ml``: smoothing shrinks a 3-voxel nodule to
   its centre.

Then ``components``: 26-connected components become `LesionCandidate` s, each with
its organ (the lesion class holding more probability inside it, or lung where the lung
mask alone kept it), volume on the grid, confidence (the highest lesion probability in
it: how sure the network is that something is there) and mean probability.

No step assumes the phantom's anatomy: there is no left-right agreement test (a network
that has learnt which side the liver is on disagrees with its own mirror image
wherever the anatomy is not symmetric, and that test removed every right-lung nodule of
studies made independently of RadTrack). The steps work on the bounding box of the
thresholded voxels (plus a margin), and the body and lung masks are made at twice the
grid spacing, so a whole study costs a fraction of a second when it has few candidates.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import scipy
from scipy import ndimage

from imaging.core.geometry.preprocess import StepRecord
from imaging.core.geometry.volume import Volume
from imaging.core.segmentation.body import BODY_HU, ClassicalMasks, liver_enclosing
from imaging.core.segmentation.precision import single_convert

_CROSS = ndimage.generate_binary_structure(3, 1)
_CUBE = np.ones((3, 3, 3), dtype=bool)
_MARGIN = 8


@dataclass(frozen=True)
class PostprocessSettings:
    """Parameters of the post-processing steps (recorded with every run)."""

    threshold: float = 0.5
    opening_radius_voxels: int = 1
    opening_min_ml: float = 0.2
    closing_radius_voxels: int = 1
    min_volume_ml: float = 0.02
    air_hu: float = -780.0
    organ_shell_voxels: int = 2
    min_organ_context: float = 0.5
    min_lung_share: float = 0.3
    min_nodule_lung_share: float = 0.1
    min_liver_share: float = 0.9
    smooth_sigma_voxels: float = 0.7

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LesionCandidate:
    """One connected component: a lesion candidate on the model grid.

    ``label_value`` is its value in `PostprocessResult.mask`; ``bbox_kji`` its bounding
    box ((k0, k1), (j0, j1), (i0, i1)) on the model grid.
    """

    label_value: int
    organ: str
    n_voxels: int
    volume_ml: float
    confidence: float
    mean_probability: float
    bbox_kji: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


@dataclass(frozen=True, eq=False)
class PostprocessResult:
    """Candidate label map (``mask``, kind label, 0 = none), candidates and step records."""

    mask: Volume
    candidates: tuple[LesionCandidate, ...]
    records: tuple[StepRecord, ...] = field(default_factory=tuple)


def _ball(radius: int) -> np.ndarray:
    return ndimage.iterate_structure(_CROSS, max(1, radius)) if radius > 0 else _CROSS


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    return ndimage.label(mask, structure=_CUBE)


def _per_component(
    mask: np.ndarray, fn: Callable[[np.ndarray, int], np.ndarray], *, margin: int = 3
) -> np.ndarray:
    """Apply ``fn`` to each component's mask in its own box; union of the results."""
    labels, n = _components(mask)
    out = np.zeros_like(mask)
    for number, found in enumerate(ndimage.find_objects(labels), start=1):
        if found is None:
            continue
        box = tuple(
            slice(max(0, s.start - margin), min(size, s.stop + margin))
            for s, size in zip(found, mask.shape, strict=True)
        )
        out[box] |= fn(labels[box] == number, number)
    return out


@dataclass
class _Recorder:
    """Collects one `StepRecord` per step, with the components left after it."""

    records: list[StepRecord] = field(default_factory=list)

    def add(
        self, name: str, params: dict[str, Any], started: float, mask: np.ndarray, **details: Any
    ) -> None:
        n = _components(mask)[1]
        self.records.append(
            StepRecord(
                name=f"postprocess_{name}",
                parameters=params,
                versions={"scipy": scipy.__version__, "numpy": np.__version__},
                seconds=time.perf_counter() - started,
                details={"components_after": int(n), **details},
            )
        )


def _opening_step(
    mask: np.ndarray, settings: PostprocessSettings, voxel_ml: float, recorder: _Recorder
) -> np.ndarray:
    t = time.perf_counter()
    cross = _ball(settings.opening_radius_voxels)
    min_open = settings.opening_min_ml / voxel_ml

    def opening(component: np.ndarray, _n: int) -> np.ndarray:
        if component.sum() < min_open or settings.opening_radius_voxels <= 0:
            return component
        return ndimage.binary_opening(component, structure=cross)

    mask = _per_component(mask, opening)
    recorder.add(
        "opening",
        {"radius_voxels": settings.opening_radius_voxels, "structure": "6-connected cross",
         "only_components_of_ml": settings.opening_min_ml},
        t, mask,
    )  # fmt: skip
    return mask


def _closing_step(
    mask: np.ndarray, settings: PostprocessSettings, recorder: _Recorder
) -> np.ndarray:
    t = time.perf_counter()
    if settings.closing_radius_voxels > 0:
        radius = settings.closing_radius_voxels
        mask = _per_component(
            mask,
            lambda c, _n: ndimage.binary_closing(np.pad(c, radius), structure=_ball(radius))[
                radius:-radius, radius:-radius, radius:-radius
            ],
            margin=radius + 1,
        )
    recorder.add(
        "closing",
        {"radius_voxels": settings.closing_radius_voxels, "structure": "6-connected cross"},
        t,
        mask,
    )
    return mask


def _min_volume_step(
    mask: np.ndarray, settings: PostprocessSettings, voxel_ml: float, recorder: _Recorder
) -> np.ndarray:
    t = time.perf_counter()
    labels, n = _components(mask)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes * voxel_ml >= settings.min_volume_ml
    keep[0] = False
    removed = int(n - keep[1:].sum())
    mask = keep[labels]
    recorder.add("min_volume", {"min_volume_ml": settings.min_volume_ml}, t, mask, removed=removed)
    return mask


def _outside_body_step(
    mask: np.ndarray, hu: np.ndarray, body: np.ndarray, settings: PostprocessSettings,
    recorder: _Recorder,
) -> np.ndarray:  # fmt: skip
    """Drop components centred outside the body or in air (``body`` on the same crop)."""
    t = time.perf_counter()
    labels, n = _components(mask)
    removed_outside = removed_air = 0
    if n:
        index = np.arange(1, n + 1)
        centres = ndimage.center_of_mass(mask, labels, index)
        mean_hu = ndimage.mean(hu, labels, index)
        keep = np.zeros(n + 1, dtype=bool)
        for number, centre, mean in zip(index, centres, mean_hu, strict=True):
            inside = body[tuple(int(round(c)) for c in centre)]
            if not inside:
                removed_outside += 1
            elif mean < settings.air_hu:
                removed_air += 1
            else:
                keep[number] = True
        mask = keep[labels]
    recorder.add(
        "outside_body",
        {"body_hu": BODY_HU, "air_hu": settings.air_hu,
         "rule": "centre of mass in body (made at twice the grid spacing, each axial slice "
                 "closed by its convex hull); mean HU >= air_hu"},
        t, mask, removed_outside_body=removed_outside, removed_in_air=removed_air,
    )  # fmt: skip
    return mask


def _organ_context(
    probabilities: np.ndarray, box: tuple[slice, ...], component: np.ndarray, shell: np.ndarray
) -> tuple[bool, float]:
    """Whether the component is a nodule (the likelier lesion class), and the mean
    p(organ) + p(own lesion class) over the shell."""
    p_nodule = single_convert(probabilities[3][box])
    p_liver = single_convert(probabilities[4][box])
    nodule = bool(p_nodule[component].sum() >= p_liver[component].sum())
    organ_p = single_convert(probabilities[1 if nodule else 2][box]) + (
        p_nodule if nodule else p_liver
    )
    return nodule, float(organ_p[shell].mean()) if shell.any() else 0.0


class _EnclosedLiver:
    """The liver with what it encloses (`body.liver_enclosing`, the components of ``mask``
    added) on ``work_box``, made on first use: most studies never need it."""

    def __init__(
        self, full_probabilities: np.ndarray, work_box: tuple[slice, ...], mask: np.ndarray
    ) -> None:
        self._args = (full_probabilities, work_box, mask)
        self._liver: np.ndarray | None = None

    def on(self, box: tuple[slice, ...]) -> np.ndarray:
        if self._liver is None:
            full_probabilities, work_box, mask = self._args
            inside = np.zeros(full_probabilities.shape[1:], dtype=bool)
            inside[work_box] = mask
            self._liver = liver_enclosing(full_probabilities, inside=inside)[work_box]
        return self._liver[box]


def _organ_context_step(
    mask: np.ndarray, probabilities: np.ndarray, masks: ClassicalMasks,
    work_box: tuple[slice, slice, slice], settings: PostprocessSettings, recorder: _Recorder,
    full_probabilities: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Keep components the network, the lung mask or the liver with what it encloses puts
    in an organ; also the voxels of those only the lung mask kept (they count as lung
    nodules). ``probabilities`` are cropped to ``work_box``; the liver's enclosed regions
    are found on ``full_probabilities`` (a cyst's centre reaches past the box). The lung
    mask speaks against a nodule only where the study shows lungs at all (a scan of the
    abdomen may hold too little of them) and inside the body as hole filling found it: a
    lung the field of view opens to the outside is in neither mask."""
    t = time.perf_counter()
    lungs, filled = masks.crop(masks.lungs, work_box), masks.crop(masks.filled, work_box)
    lungs_found = bool(masks.lungs.any())
    labels, n = _components(mask)
    removed = by_lung_mask = by_liver_mask = no_lung = 0
    enclosed = _EnclosedLiver(full_probabilities, work_box, mask)
    lung_only = np.zeros(mask.shape, bool)
    shell_structure = _ball(settings.organ_shell_voxels)
    if n and settings.min_organ_context > 0:
        keep = np.zeros(n + 1, dtype=bool)
        margin = settings.organ_shell_voxels + 1
        for number, found in enumerate(ndimage.find_objects(labels), start=1):
            if found is None:
                continue
            box = tuple(
                slice(max(0, s.start - margin), min(size, s.stop + margin))
                for s, size in zip(found, mask.shape, strict=True)
            )
            component = labels[box] == number
            shell = ndimage.binary_dilation(component, structure=shell_structure) & (
                labels[box] == 0
            )
            nodule, context = _organ_context(probabilities, box, component, shell)
            lung_share = float(lungs[box][shell].mean()) if shell.any() else 0.0
            if context >= settings.min_organ_context:
                no_lung_around = bool(
                    nodule
                    and lungs_found
                    and lung_share < settings.min_nodule_lung_share
                    and filled[box][component].mean() >= 0.5
                )
                keep[number] = not no_lung_around
                no_lung += int(no_lung_around)  # a "nodule" in bone, bowel or skin
            elif shell.any() and lung_share >= settings.min_lung_share:
                keep[number] = True
                by_lung_mask += 1
                lung_only[box] |= component
            elif (
                not nodule
                and shell.any()
                and (enclosed.on(box)[shell].mean() >= settings.min_liver_share)
            ):
                keep[number] = True
                by_liver_mask += 1
            else:
                removed += 1
        mask = keep[labels]
    recorder.add(
        "organ_context",
        {"shell_voxels": settings.organ_shell_voxels, "min_organ_context": settings.min_organ_context,
         "min_lung_share": settings.min_lung_share,
         "min_nodule_lung_share": settings.min_nodule_lung_share,
         "min_liver_share": settings.min_liver_share,
         "rule": "mean p(organ) + p(own lesion class) over the shell, or at least "
                 "min_lung_share of the shell in the lung mask (air < -400 HU inside the body), "
                 "or for a liver lesion at least min_liver_share of the shell in the network's "
                 "liver with the regions it encloses; a nodule the network placed needs "
                 "min_nodule_lung_share of its shell in the lung mask"},
        t, mask, removed=removed, kept_by_lung_mask=by_lung_mask,
        kept_by_liver_mask=by_liver_mask, removed_no_lung=no_lung,
        lungs_found=lungs_found,
    )  # fmt: skip
    return mask, lung_only


def _smooth_step(
    mask: np.ndarray, settings: PostprocessSettings, voxel_ml: float, recorder: _Recorder
) -> np.ndarray:
    t = time.perf_counter()
    sigma = settings.smooth_sigma_voxels
    min_open = settings.opening_min_ml / voxel_ml

    def smooth(component: np.ndarray, _n: int) -> np.ndarray:
        if sigma <= 0 or component.sum() < min_open:
            return component
        out = ndimage.gaussian_filter(component.astype(np.float32), sigma) >= 0.5
        return out if out.any() else component

    mask = _per_component(mask, smooth, margin=int(np.ceil(3 * sigma)) + 1)
    recorder.add(
        "smooth",
        {"gaussian_sigma_voxels": sigma, "rethreshold": 0.5,
         "only_components_of_ml": settings.opening_min_ml},
        t, mask,
    )  # fmt: skip
    return mask


def _candidates(
    labels: np.ndarray, p_nodule: np.ndarray, p_liver: np.ndarray, lung_only: np.ndarray,
    voxel_ml: float, offset: tuple[int, int, int],
) -> list[LesionCandidate]:  # fmt: skip
    """One `LesionCandidate` per labelled component, organ by the likelier lesion class
    (lung where the lung mask alone kept it); boxes on the whole grid (``offset``)."""
    candidates = []
    for number, found in enumerate(ndimage.find_objects(labels), start=1):
        if found is None:
            continue
        component = labels[found] == number
        p = p_nodule[found][component] + p_liver[found][component]
        nodule = p_nodule[found][component].sum() >= p_liver[found][component].sum()
        if lung_only[found][component].mean() > 0.5:
            nodule = True
        candidates.append(
            LesionCandidate(
                label_value=number,
                organ="lung" if nodule else "liver",
                n_voxels=int(component.sum()),
                volume_ml=float(component.sum() * voxel_ml),
                confidence=float(np.clip(p.max(), 0.0, 1.0)),
                mean_probability=float(np.clip(p.mean(), 0.0, 1.0)),
                bbox_kji=_box_on_grid(found, offset),
            )
        )
    return candidates


def _box_on_grid(
    found: tuple[slice, ...], offset: tuple[int, int, int]
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """A (k, j, i) box of slices within the work box as (start, stop) pairs on the grid."""
    (k, j, i), (ok, oj, oi) = found, offset
    return (
        (int(k.start) + ok, int(k.stop) + ok),
        (int(j.start) + oj, int(j.stop) + oj),
        (int(i.start) + oi, int(i.stop) + oi),
    )


def _work_box(mask: np.ndarray, margin: int) -> tuple[slice, slice, slice]:
    """The bounding box of ``mask`` plus ``margin`` voxels (at least one voxel)."""
    if not mask.any():
        return (slice(0, 1),) * 3

    def around(axis: int) -> slice:
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        return slice(max(0, hit[0] - margin), min(mask.shape[axis], hit[-1] + 1 + margin))

    return (around(0), around(1), around(2))


def postprocess_run(
    *,
    probabilities: np.ndarray,
    image: Volume,
    settings: PostprocessSettings | None = None,
) -> PostprocessResult:
    """Run the steps of the module docstring over class probabilities (classes, k, j, i).

    ``image`` is the HU volume on the same grid (its geometry is the mask's).
    """
    settings = settings or PostprocessSettings()
    voxel_ml = image.voxel_volume_ml
    recorder = _Recorder()

    t = time.perf_counter()
    full = single_convert(probabilities[3]) + single_convert(probabilities[4])
    above = full >= settings.threshold
    box = _work_box(above, _MARGIN + settings.organ_shell_voxels)
    mask = above[box]
    recorder.add(
        "threshold",
        {"threshold": settings.threshold, "of": "p(lung_nodule) + p(liver_lesion)"},
        t,
        mask,
    )
    probs = probabilities[(slice(None), *box)]
    masks = ClassicalMasks.of(image.array, voxel_ml)
    mask = _opening_step(mask, settings, voxel_ml, recorder)
    mask = _closing_step(mask, settings, recorder)
    t = time.perf_counter()
    mask = _per_component(mask, lambda c, _n: ndimage.binary_fill_holes(c))
    recorder.add("fill_holes", {"connectivity": "3D"}, t, mask)
    mask = _min_volume_step(mask, settings, voxel_ml, recorder)
    mask = _outside_body_step(mask, image.array[box], masks.crop(masks.body, box), settings,
                              recorder)  # fmt: skip
    mask, lung_only = _organ_context_step(mask, probs, masks, box, settings, recorder,
                                          probabilities)  # fmt: skip
    mask = _smooth_step(mask, settings, voxel_ml, recorder)

    t = time.perf_counter()
    labels, n = _components(mask)
    offset = tuple(s.start for s in box)
    candidates = _candidates(labels, single_convert(probs[3]), single_convert(probs[4]),
                             lung_only, voxel_ml, offset)  # fmt: skip
    recorder.add("components", {"connectivity": 26, "confidence": "max lesion probability"}, t,
                 mask, candidates=len(candidates))  # fmt: skip
    label_dtype = np.uint16 if n < 65535 else np.uint32
    out = np.zeros(image.array.shape, dtype=label_dtype)
    out[box] = labels
    return PostprocessResult(
        mask=image.with_array(out, kind="label"),
        candidates=tuple(candidates),
        records=tuple(recorder.records),
    )


def candidates_keep(candidate_mask: Volume, kept: tuple[LesionCandidate, ...]) -> Volume:
    """``candidate_mask`` with only the ``kept`` candidates' label values."""
    keep = np.zeros(int(candidate_mask.array.max()) + 1, dtype=bool)
    keep[[c.label_value for c in kept]] = True
    array = np.where(keep[candidate_mask.array], candidate_mask.array, 0)
    return candidate_mask.with_array(array.astype(candidate_mask.array.dtype), kind="label")
