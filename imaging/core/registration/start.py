"""Where both registration backends start: coarse copies, the fixed body and lung masks,
and a starting pose from the body centroids and the long axes of the axial sections.

Both backends work on block-averaged copies of about 4 mm (`anatomy.volume_coarse`):
rigid alignment of a trunk is decided by its large structures, and a 512x512x300 pair
reduces to about 90x90x80 voxels. Metric sampling is confined to the fixed body mask
(dilated by two voxels so its outline counts), so the air around the patient and the
table do not drive the fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from imaging.core.geometry.volume import Volume
from imaging.core.registration.anatomy import body_lung_arrays, volume_coarse


@dataclass(frozen=True, eq=False)
class RegistrationStart:
    """Coarse copies, the fixed masks, and the starting pose (body centroids, axial angle)."""

    fixed: Volume
    moving: Volume
    fixed_masks: tuple[np.ndarray, np.ndarray]
    centre_fixed: np.ndarray
    centre_moving: np.ndarray
    axial_angle_rad: float


def _body_axes(volume: Volume, body: np.ndarray) -> tuple[np.ndarray, float | None]:
    """Body centroid (LPS mm) and the angle (rad) of the long axis of its axial section.

    The angle is None when the section is nearly round (axes within 10 %).
    """
    kji = np.argwhere(body)
    if len(kji) == 0:
        return volume.index_to_lps((np.asarray(volume.shape_ijk) - 1) / 2.0), None
    lps = volume.index_to_lps(kji[:, ::-1].astype(float))
    centre = lps.mean(axis=0)
    values, vectors = np.linalg.eigh(np.cov((lps[:, :2] - centre[:2]).T))
    if values[1] < 1.21 * values[0]:  # axis ratio below 1.1
        return centre, None
    major = vectors[:, 1]
    return centre, math.atan2(major[1], major[0])


def registration_start(*, fixed: Volume, moving: Volume, spacing_mm: float) -> RegistrationStart:
    """Coarse copies, body and lung masks, and a starting pose.

    The start aligns the body centroids and the long axes of the body's axial sections
    (patients lie rotated about their long axis far more than they tilt), so gradient
    descent starts within a few degrees of the answer.
    """
    for volume, name in ((fixed, "fixed"), (moving, "moving")):
        if volume.kind != "scalar":
            raise ValueError(f"{name} must be a scalar (CT, HU) volume")
    fixed_c = volume_coarse(volume=fixed, spacing_mm=spacing_mm)
    moving_c = volume_coarse(volume=moving, spacing_mm=spacing_mm)
    masks, axes = [], []
    for volume in (fixed_c, moving_c):
        body, lungs = body_lung_arrays(
            ndimage.gaussian_filter(volume.array, 0.7), volume.voxel_volume_ml
        )
        masks.append((body, lungs))
        axes.append(_body_axes(volume, body))
    (centre_f, angle_f), (centre_m, angle_m) = axes
    angle = 0.0
    if angle_f is not None and angle_m is not None:
        # An axis has no direction: fold the difference into (-90, 90] degrees.
        angle = (angle_m - angle_f + math.pi / 2) % math.pi - math.pi / 2
        if abs(angle) > math.radians(30.0):  # implausible for one patient: don't trust it
            angle = 0.0
    return RegistrationStart(fixed_c, moving_c, masks[0], centre_f, centre_m, angle)


def sampling_mask(body: np.ndarray) -> np.ndarray:
    """Where the metric samples: the fixed body dilated by two voxels, so its outline counts."""
    return ndimage.binary_dilation(body, iterations=2)
