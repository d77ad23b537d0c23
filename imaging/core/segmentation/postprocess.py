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
   -500, largest component, holes filled slice by slice so the lungs are inside) or
   whose mean HU is below ``air_hu`` (air: a lesion is tissue; noise in lung or around
   the patient is not).
7. ``organ_context``: drops components not embedded in their organ: over a shell of
   ``organ_shell_voxels`` around the component, the mean probability of its organ (lung
   for a nodule, liver for a liver lesion) plus its own lesion class must reach
   ``min_organ_context``. Lesions grow inside lung or liver; soft tissue that looks
   like a lesion in muscle, bowel or heart does not have that surrounding.
8. ``tta_agreement``: drops components whose mean flip-TTA disagreement (the
   segmenter's per-voxel uncertainty, |p - p_mirrored| of the lesion probability)
   exceeds ``max_tta_disagreement``: a real lesion looks like one from both sides,
   while a noise blob the network half-believes changes with the mirror. On a noisy
   3 mm study of the test suite, true lesions scored 0.03-0.19 and 6 of 11 false
   positives 0.30-0.80. Skipped when no uncertainty map is given.
9. ``smooth``: Gaussian smoothing (``smooth_sigma_voxels``) of each component's mask,
   re-thresholded at 0.5, so the boundary loses its staircase. Like opening, only for
   components of at least ``opening_min_ml``: smoothing shrinks a 3-voxel nodule to
   its centre.

Then ``components``: 26-connected components become `LesionCandidate` s, each with
its organ (the lesion class holding more probability inside it), volume on the grid,
confidence (the highest lesion probability in it: how sure the network is that
something is there) and mean probability.
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
from imaging.core.registration.transforms import volume_onto_grid

BODY_HU = -500.0
_CROSS = ndimage.generate_binary_structure(3, 1)
_CUBE = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class PostprocessSettings:
    """Parameters of the post-processing steps (recorded with every run)."""

    threshold: float = 0.5
    opening_radius_voxels: int = 1
    opening_min_ml: float = 0.2
    closing_radius_voxels: int = 1
    min_volume_ml: float = 0.02
    air_hu: float = -700.0
    organ_shell_voxels: int = 2
    min_organ_context: float = 0.5
    max_tta_disagreement: float = 0.3
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
    body: np.ndarray
    records: tuple[StepRecord, ...] = field(default_factory=tuple)


def body_mask(hu: np.ndarray) -> np.ndarray:
    """Voxels above -500 HU, largest 26-connected component, holes filled per axial slice."""
    mask = hu > BODY_HU
    labels, n = ndimage.label(mask, structure=_CUBE)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    mask = labels == int(np.argmax(sizes))
    for k in range(mask.shape[0]):
        mask[k] = ndimage.binary_fill_holes(mask[k])
    return mask


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
    mask: np.ndarray, hu: np.ndarray, settings: PostprocessSettings, recorder: _Recorder
) -> tuple[np.ndarray, np.ndarray]:
    """Drop components centred outside the body or in air; also returns the body mask."""
    t = time.perf_counter()
    body = body_mask(hu)
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
        {"body_hu": BODY_HU, "air_hu": settings.air_hu, "rule": "centre of mass in body; mean HU >= air_hu"},
        t, mask, removed_outside_body=removed_outside, removed_in_air=removed_air,
    )  # fmt: skip
    return mask, body


def _organ_context(
    probabilities: np.ndarray, box: tuple[slice, ...], component: np.ndarray, shell: np.ndarray
) -> float:
    """Mean p(organ) + p(own lesion class) over the shell (the organ of the likelier class)."""
    p_nodule = probabilities[3][box].astype(np.float32)
    p_liver = probabilities[4][box].astype(np.float32)
    nodule = p_nodule[component].sum() >= p_liver[component].sum()
    organ_p = probabilities[1 if nodule else 2][box].astype(np.float32) + (
        p_nodule if nodule else p_liver
    )
    return float(organ_p[shell].mean()) if shell.any() else 0.0


def _organ_context_step(
    mask: np.ndarray, probabilities: np.ndarray, settings: PostprocessSettings, recorder: _Recorder
) -> np.ndarray:
    t = time.perf_counter()
    labels, n = _components(mask)
    removed_context = 0
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
            if _organ_context(probabilities, box, component, shell) >= settings.min_organ_context:
                keep[number] = True
            else:
                removed_context += 1
        mask = keep[labels]
    recorder.add(
        "organ_context",
        {"shell_voxels": settings.organ_shell_voxels, "min_organ_context": settings.min_organ_context,
         "rule": "mean p(organ) + p(own lesion class) over the shell"},
        t, mask, removed=removed_context,
    )  # fmt: skip
    return mask


def _tta_agreement_step(
    mask: np.ndarray,
    uncertainty: np.ndarray | None,
    settings: PostprocessSettings,
    recorder: _Recorder,
) -> np.ndarray:
    t = time.perf_counter()
    removed_tta = 0
    labels, n = _components(mask)
    if uncertainty is not None and n:
        mean_u = ndimage.mean(uncertainty.astype(np.float32), labels, np.arange(1, n + 1))
        keep = np.concatenate([[False], np.asarray(mean_u) <= settings.max_tta_disagreement])
        removed_tta = int(n - keep[1:].sum())
        mask = keep[labels]
    recorder.add(
        "tta_agreement",
        {"max_tta_disagreement": settings.max_tta_disagreement,
         "applied": uncertainty is not None},
        t, mask, removed=removed_tta,
    )  # fmt: skip
    return mask


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
    labels: np.ndarray, p_nodule: np.ndarray, p_liver: np.ndarray, voxel_ml: float
) -> list[LesionCandidate]:
    """One `LesionCandidate` per labelled component, organ by the likelier lesion class."""
    candidates = []
    for number, found in enumerate(ndimage.find_objects(labels), start=1):
        if found is None:
            continue
        component = labels[found] == number
        p = p_nodule[found][component] + p_liver[found][component]
        organ = (
            "lung"
            if p_nodule[found][component].sum() >= p_liver[found][component].sum()
            else "liver"
        )
        candidates.append(
            LesionCandidate(
                label_value=number,
                organ=organ,
                n_voxels=int(component.sum()),
                volume_ml=float(component.sum() * voxel_ml),
                confidence=float(np.clip(p.max(), 0.0, 1.0)),
                mean_probability=float(np.clip(p.mean(), 0.0, 1.0)),
                bbox_kji=tuple((int(s.start), int(s.stop)) for s in found),  # type: ignore[arg-type]
            )
        )
    return candidates


def postprocess_run(
    *,
    probabilities: np.ndarray,
    image: Volume,
    settings: PostprocessSettings | None = None,
    uncertainty: np.ndarray | None = None,
) -> PostprocessResult:
    """Run the steps of the module docstring over class probabilities (classes, k, j, i).

    ``image`` is the HU volume on the same grid (its geometry is the mask's);
    ``uncertainty`` the flip-TTA disagreement map on that grid, if there is one.
    """
    settings = settings or PostprocessSettings()
    voxel_ml = image.voxel_volume_ml
    recorder = _Recorder()

    p_nodule = probabilities[3].astype(np.float32)
    p_liver = probabilities[4].astype(np.float32)

    t = time.perf_counter()
    mask = p_nodule + p_liver >= settings.threshold
    recorder.add(
        "threshold",
        {"threshold": settings.threshold, "of": "p(lung_nodule) + p(liver_lesion)"},
        t,
        mask,
    )
    mask = _opening_step(mask, settings, voxel_ml, recorder)
    mask = _closing_step(mask, settings, recorder)
    t = time.perf_counter()
    mask = _per_component(mask, lambda c, _n: ndimage.binary_fill_holes(c))
    recorder.add("fill_holes", {"connectivity": "3D"}, t, mask)
    mask = _min_volume_step(mask, settings, voxel_ml, recorder)
    mask, body = _outside_body_step(mask, image.array, settings, recorder)
    mask = _organ_context_step(mask, probabilities, settings, recorder)
    mask = _tta_agreement_step(mask, uncertainty, settings, recorder)
    mask = _smooth_step(mask, settings, voxel_ml, recorder)

    t = time.perf_counter()
    labels, n = _components(mask)
    candidates = _candidates(labels, p_nodule, p_liver, voxel_ml)
    recorder.add("components", {"connectivity": 26, "confidence": "max lesion probability"}, t,
                 mask, candidates=len(candidates))  # fmt: skip
    label_dtype = np.uint16 if n < 65535 else np.uint32
    return PostprocessResult(
        mask=image.with_array(labels.astype(label_dtype), kind="label"),
        candidates=tuple(candidates),
        body=body,
        records=tuple(recorder.records),
    )


@dataclass(frozen=True)
class ContrastSettings:
    """Parameters of `candidates_contrast_filter` (native voxels of the study)."""

    min_z: float = 8.0
    ring_inner_voxels: int = 1
    ring_outer_voxels: int = 3


def _contrast_scores(
    on_study: np.ndarray,
    hu: np.ndarray,
    candidates: tuple[LesionCandidate, ...],
    settings: ContrastSettings,
) -> dict[int, float | None]:
    """z of each candidate (by label value) on the study's voxels; None without a ring."""
    any_candidate = on_study > 0
    inner = ndimage.generate_binary_structure(3, 1)
    scores: dict[int, float | None] = {}
    margin = settings.ring_outer_voxels + 1
    boxes = ndimage.find_objects(on_study)
    for candidate in candidates:
        value = candidate.label_value
        found = boxes[value - 1] if value - 1 < len(boxes) else None
        if found is None:  # holds no study voxel centre: nothing to measure there
            scores[value] = 0.0
            continue
        box = tuple(
            slice(max(0, s.start - margin), min(size, s.stop + margin))
            for s, size in zip(found, on_study.shape, strict=True)
        )
        core = on_study[box] == value
        ring = (
            ndimage.binary_dilation(core, inner, iterations=settings.ring_outer_voxels)
            & ~ndimage.binary_dilation(core, inner, iterations=settings.ring_inner_voxels)
            & ~any_candidate[box]
        )
        ring_hu = hu[box][ring].astype(np.float64)
        if ring_hu.size < 8:
            scores[value] = None
            continue
        centre = float(np.median(ring_hu))
        sigma = max(1.4826 * float(np.median(np.abs(ring_hu - centre))), 1.0)
        core_hu = hu[box][core].astype(np.float64)
        scores[value] = abs(centre - float(core_hu.mean())) / (sigma / np.sqrt(core_hu.size))
    return scores


def candidates_contrast_filter(
    *,
    study: Volume,
    candidate_mask: Volume,
    candidates: tuple[LesionCandidate, ...],
    settings: ContrastSettings | None = None,
) -> tuple[Volume, tuple[LesionCandidate, ...], StepRecord]:
    """Drop candidates whose contrast with their surroundings is within the noise.

    Measured on the study's own voxels (``study`` in HU, before resampling: resampled
    noise is smoother and would look more significant than it is). For each candidate,
    its voxels (the model-grid mask mapped to the study grid, nearest neighbour) are
    compared with a ring ``ring_inner_voxels``..``ring_outer_voxels`` around it, away
    from every candidate: z = |median(ring) - mean(core)| / (sigma / sqrt(n)), with
    sigma the ring's robust SD (1.4826 MAD) and n the candidate's voxel count. A
    real lesion keeps z far above ``min_z`` (a 1.7 ml liver lesion at 18 HU of noise
    and 3 x 3 x 5 mm voxels scored 8.2; lesions at full resolution score in the
    tens); the darkest noise blobs of a liver in thick, noisy slices reach about 7.
    A candidate that holds no study voxel centre (smaller than the study's voxels) scores
    0 and is dropped; one without a ring of at least 8 voxels is kept (no evidence).
    """

    settings = settings or ContrastSettings()
    started = time.perf_counter()
    on_study = volume_onto_grid(moving=candidate_mask, reference=study).array
    scores = _contrast_scores(on_study, study.array, candidates, settings)
    kept = tuple(
        c
        for c in candidates
        if scores[c.label_value] is None or scores[c.label_value] >= settings.min_z
    )
    keep = np.zeros(int(candidate_mask.array.max()) + 1, dtype=bool)
    keep[[c.label_value for c in kept]] = True
    mask = candidate_mask.with_array(
        np.where(keep[candidate_mask.array], candidate_mask.array, 0).astype(
            candidate_mask.array.dtype
        ),
        kind="label",
    )
    record = StepRecord(
        name="postprocess_contrast",
        parameters={
            **asdict(settings),
            "rule": "|median(ring) - mean(core)| / (1.4826 MAD(ring) / sqrt(n)) >= min_z, "
            "on the study's own voxels",
        },
        versions={"scipy": scipy.__version__, "numpy": np.__version__},
        seconds=time.perf_counter() - started,
        details={
            "removed": len(candidates) - len(kept),
            "z": {str(k): (round(v, 2) if v is not None else None) for k, v in scores.items()},
        },
    )
    return mask, kept, record
