"""The patient's body and lungs as post-processing reads them: classical masks that hold
in every CT (tissue above -500 HU, largest component; lungs are air inside the body)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.morphology import convex_hull_image

from imaging.core.registration.anatomy import body_lung_arrays

BODY_HU = -500.0
_CUBE = np.ones((3, 3, 3), dtype=bool)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of ``mask`` (``mask`` itself when empty)."""
    labels, n = ndimage.label(mask, structure=_CUBE)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def body_mask(hu: np.ndarray) -> np.ndarray:
    """Voxels above -500 HU, largest 26-connected component, holes filled per axial slice."""
    mask = largest_component(hu > BODY_HU)
    for k in range(mask.shape[0]):
        mask[k] = ndimage.binary_fill_holes(mask[k])
    return mask


def body_closed(body: np.ndarray) -> np.ndarray:
    """``body`` (k axial) with each slice's convex hull: a body cut by the field of view
    (a large patient, a reconstruction circle inside the chest wall) leaves the lung open
    to the air outside, so hole filling does not put it inside the body, and a nodule
    there would read as outside the patient. The hull closes it; what the hull adds
    outside the skin is air, which the outside-body step's air rule still removes."""
    closed = body.copy()
    for k in range(body.shape[0]):
        if body[k].any():
            closed[k] = convex_hull_image(body[k])
    return closed


@dataclass(frozen=True, eq=False)
class ClassicalMasks:
    """Body and lung masks made at twice the grid spacing (every second voxel), read at
    full resolution inside a box."""

    body: np.ndarray
    lungs: np.ndarray
    #: The body before closing (holes filled slice by slice): where the field of view cuts
    #: the chest wall, a lung is outside it, and outside ``lungs`` too.
    filled: np.ndarray

    @classmethod
    def of(cls, hu: np.ndarray, voxel_ml: float) -> ClassicalMasks:
        body, lungs = body_lung_arrays(hu[::2, ::2, ::2], voxel_ml * 8.0)
        return cls(body_closed(body), lungs, body)

    def crop(self, mask: np.ndarray, box: tuple[slice, slice, slice]) -> np.ndarray:
        index = np.ix_(*(np.arange(s.start, s.stop) // 2 for s in box))
        return mask[index]
