"""What the classical second readers (`liver_reader`, `lung_reader`) share: their regions
added to the network's candidates, and the map those regions are outlined on."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from imaging.core.geometry.volume import Volume
from imaging.core.segmentation.postprocess import LesionCandidate, PostprocessResult
from imaging.core.segmentation.precision import single_convert


def region_box(mask: np.ndarray, margin: int) -> tuple[slice, slice, slice]:
    """The bounding box of ``mask``'s voxels, ``margin`` voxels wider, within its shape."""
    found = ndimage.find_objects(mask.astype(np.uint8))[0]
    return tuple(  # type: ignore[return-value]
        slice(max(0, s.start - margin), min(n, s.stop + margin))
        for s, n in zip(found, mask.shape, strict=True)
    )


def add_regions(
    post: PostprocessResult, probabilities: np.ndarray, box: tuple[slice, ...],
    regions: list[np.ndarray], voxel_ml: float, first_label: int, organ: str,
) -> tuple[PostprocessResult, list[int]]:  # fmt: skip
    """``post`` with each region (on ``box``) a candidate of ``organ`` with its own label
    value, the network's highest lesion probability inside it as its confidence."""
    mask = post.mask.array.copy()
    first = max(int(mask.max()) + 1, first_label)
    if mask.dtype == np.uint16 and first + len(regions) >= 65535:
        mask = mask.astype(np.uint32)
    candidates = list(post.candidates)
    lesion_p = single_convert(probabilities[3][box]) + single_convert(probabilities[4][box])
    for number, region in enumerate(regions, start=first):
        sub = mask[box]
        sub[region & (sub == 0)] = number
        where = np.argwhere(region)
        lo, hi = where.min(axis=0), where.max(axis=0) + 1
        p = lesion_p[region]
        bbox = tuple((int(a) + int(b.start), int(c) + int(b.start))
                     for a, c, b in zip(lo, hi, box, strict=True))  # fmt: skip
        candidates.append(LesionCandidate(
            label_value=number, organ=organ, n_voxels=int(region.sum()),
            volume_ml=float(region.sum() * voxel_ml),
            confidence=float(np.clip(p.max(), 0.0, 1.0)),
            mean_probability=float(np.clip(p.mean(), 0.0, 1.0)),
            bbox_kji=bbox,  # type: ignore[arg-type]
        ))  # fmt: skip
    result = PostprocessResult(
        mask=post.mask.with_array(mask, kind="label"),
        candidates=tuple(candidates),
        records=post.records,
    )
    return result, list(range(first, first + len(regions)))


def reader_outline_probability(
    lesion_probability: Volume, candidate_mask: Volume, added: list[int]
) -> Volume:
    """The map `measure.lesions_measure` outlines lesions on: the network's lesion
    probability, with each region this reader added (label values ``added`` of
    ``candidate_mask``, the model grid) drawn in as its mask smoothed at 0.7 voxel (0.5 on
    its edge). The network's probability there is near 0, or over 0.5 on a fragment only,
    which would outline a sliver of the lesion."""
    present = [v for v in added if np.any(candidate_mask.array == v)]
    if not present:
        return lesion_probability
    out = lesion_probability.array.astype(np.float32, copy=True)
    labels = candidate_mask.array
    for value in present:
        box = region_box(labels == value, 3)
        drawn = ndimage.gaussian_filter((labels[box] == value).astype(np.float32), 0.7)
        out[box] = np.maximum(out[box], drawn)
    return lesion_probability.with_array(out)
