"""The patient's body and lungs as post-processing reads them: classical masks that hold
in every CT (tissue above -500 HU, largest component; lungs are air inside the body)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.morphology import convex_hull_image

from imaging.core.registration.anatomy import body_lung_arrays
from imaging.core.segmentation.precision import single_convert

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


def holes_filled(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every region it encloses in 3D filled (background 6-connected, as
    `scipy.ndimage.binary_fill_holes`), over the whole array: a hole as large as the
    organ around it is filled too, where a box around one part of it would cut it open.
    A region touching the array's edge is not enclosed."""
    if not mask.any():
        return mask.copy()
    found = ndimage.find_objects(mask.astype(np.uint8))[0]
    box = tuple(slice(max(0, s.start - 1), min(n, s.stop + 1))
                for s, n in zip(found, mask.shape, strict=True))  # fmt: skip
    background, _ = ndimage.label(~mask[box])
    edge = np.zeros(background.shape, dtype=bool)
    for axis in range(edge.ndim):
        edge[(slice(None),) * axis + (0,)] = True
        edge[(slice(None),) * axis + (-1,)] = True
    outside = np.unique(background[edge])
    out = mask.copy()
    out[box] |= ~np.isin(background, outside)
    return out


def network_liver(probabilities: np.ndarray) -> np.ndarray:
    """The liver as the network draws it: liver and liver-lesion probabilities summed, at
    least 0.5 (classes, k, j, i)."""
    return (single_convert(probabilities[2]) + single_convert(probabilities[4])) >= 0.5


def liver_enclosing(probabilities: np.ndarray, inside: np.ndarray | None = None) -> np.ndarray:
    """The liver as the network draws it (`network_liver`; ``inside``, such as
    candidates, added) with every region it encloses: a
    fluid-filled lesion the network leaves out of both liver and lesion (a cystic
    metastasis' water centre, a rim lesion's necrosis) is inside the liver all the same.
    The gallbladder and the bowel lie against the liver's surface and are not enclosed."""
    liver = network_liver(probabilities)
    return holes_filled(liver if inside is None else liver | inside)


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
