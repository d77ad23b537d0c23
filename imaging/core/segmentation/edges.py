"""The edges of what was imaged that a lesion reaches (scanned range, field of view, padding)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from imaging.core.geometry.volume import Volume

#: The edges of what was imaged that a lesion can reach (`lesion_edges`): the first and
#: the last slice of the scanned range (the scan's k axis, along the slice normal), the
#: in-plane edge of the images, and pixels outside the reconstructed field of view
#: (Pixel Padding Value (0028,0120), `Volume.padding`).
EDGE_SCAN_START = "scan_start"
EDGE_SCAN_END = "scan_end"
EDGE_FIELD_OF_VIEW = "field_of_view"
EDGE_PADDING = "padding"


def lesion_edges(*, lesion: Volume, scanned: Volume) -> tuple[str, ...]:
    """The edges of what was imaged that a lesion reaches, () when it lies wholly inside.

    ``lesion`` (label or bool, any grid): the lesion's voxels (those above 0);
    ``scanned``: the study as scanned (`dicom.volume.series_volume`: its k axis runs
    along the slice normal), with its ``padding``. A lesion voxel that overlaps the
    outermost voxel layer of the scan, or lies beyond it, reaches `EDGE_SCAN_START` or
    `EDGE_SCAN_END` (k: the first or last slice of the scanned range) or
    `EDGE_FIELD_OF_VIEW` (i or j: the in-plane edge of the images); one that overlaps or
    touches a padded voxel reaches `EDGE_PADDING`. Beyond an edge the lesion was not
    imaged, so what is measured of it is a lower bound of its size.
    """
    mask = np.asarray(lesion.array) > 0
    if not mask.any():
        return ()
    # Only the outline can reach an edge.
    kji = np.argwhere(mask & ~ndimage.binary_erosion(mask))
    ijk = scanned.lps_to_index(lesion.index_to_lps(kji[:, ::-1].astype(float)))
    # Half a lesion voxel, in the scan's voxels along each of its axes.
    rotation = np.abs(scanned.direction.T @ lesion.direction)
    half = 0.5 * (rotation @ np.asarray(lesion.spacing_mm)) / np.asarray(scanned.spacing_mm)
    reach = 0.5 + half
    last = np.asarray(scanned.shape_ijk) - 1
    low = (ijk < reach).any(axis=0)
    high = (ijk > last - reach).any(axis=0)
    edges = []
    if low[2]:
        edges.append(EDGE_SCAN_START)
    if high[2]:
        edges.append(EDGE_SCAN_END)
    if low[:2].any() or high[:2].any():
        edges.append(EDGE_FIELD_OF_VIEW)
    if scanned.padding is not None and _touches(ijk, half, scanned.padding):
        edges.append(EDGE_PADDING)
    return tuple(edges)


def _touches(ijk: np.ndarray, half: np.ndarray, marked: np.ndarray) -> bool:
    """Whether a voxel of ``marked`` ([k, j, i]) overlaps or touches one of the lesion
    voxels centred at ``ijk`` (continuous scan indices, ``half`` a voxel wide)."""
    centres = np.unique(np.rint(ijk).astype(int), axis=0)
    size = np.asarray(marked.shape[::-1])
    reach = np.ceil(half + 0.5).astype(int)
    for di in range(-reach[0], reach[0] + 1):
        for dj in range(-reach[1], reach[1] + 1):
            for dk in range(-reach[2], reach[2] + 1):
                idx = centres + (di, dj, dk)
                idx = idx[np.all((idx >= 0) & (idx < size), axis=1)]
                if marked[idx[:, 2], idx[:, 1], idx[:, 0]].any():
                    return True
    return False
