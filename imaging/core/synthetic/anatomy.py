"""One synthetic patient's trunk: typical CT numbers, organ ellipsoids and their random layout.

The body frame is in millimetres, with axes parallel to DICOM LPS for an unrotated
patient (x towards the patient's left, y posterior, z superior) and its origin on the
trunk's long axis near the dome of the diaphragm; a study places it in patient
coordinates with a rigid pose (`imaging.core.synthetic.phantom`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Typical portal-venous-phase CT numbers (HU).
HU_AIR = -1000.0
HU_FAT = -100.0
HU_MUSCLE = 45.0
HU_MEDIASTINUM = -40.0
HU_ABDOMEN = 20.0
HU_SPLEEN = 50.0
HU_KIDNEY = 150.0
HU_LUNG = -850.0
HU_HEART = 40.0
HU_AORTA = 150.0
HU_CORTICAL_BONE = 750.0
HU_CANCELLOUS_BONE = 220.0
HU_RIB = 450.0
HU_DISC = 90.0
HU_CSF = 15.0


@dataclass(frozen=True)
class Ellipsoid:
    """An axis-aligned ellipsoid in the body frame (mm)."""

    centre_mm: tuple[float, float, float]
    semi_axes_mm: tuple[float, float, float]

    def signed_distance_mm(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Approximate signed distance (negative inside), exact on the surface's normal."""
        (cx, cy, cz), (ax, ay, az) = self.centre_mm, self.semi_axes_mm
        px, py, pz = (x - cx) / ax, (y - cy) / ay, (z - cz) / az
        k0 = np.sqrt(px * px + py * py + pz * pz)
        k1 = np.sqrt((px / ax) ** 2 + (py / ay) ** 2 + (pz / az) ** 2)
        return np.where(k1 > 1e-9, k0 * (k0 - 1.0) / np.maximum(k1, 1e-9), -min(ax, ay, az))

    def contains(self, point_mm: np.ndarray, *, margin_mm: float = 0.0) -> bool:
        """Whether a body-frame point is inside with at least ``margin_mm`` to spare."""
        x, y, z = np.asarray(point_mm, dtype=float)
        return bool(self.signed_distance_mm(x, y, z) <= -margin_mm)


@dataclass(frozen=True)
class BodyAnatomy:
    """One patient's anatomy in the body frame (mm, HU)."""

    body_semi_axes_mm: tuple[float, float]
    fat_thickness_mm: float
    wall_thickness_mm: float
    right_lung: Ellipsoid
    left_lung: Ellipsoid
    abdomen_dome: Ellipsoid
    heart: Ellipsoid
    liver: Ellipsoid
    spleen: Ellipsoid
    right_kidney: Ellipsoid
    left_kidney: Ellipsoid
    spine_y_mm: float
    vertebral_radius_mm: float
    aorta_centre_mm: tuple[float, float]
    aorta_radius_mm: float
    vertebra_pitch_mm: float
    vertebra_phase_mm: float
    rib_pitch_mm: float
    scan_range_z_mm: tuple[float, float]
    liver_hu: float = 60.0
    fat_hu: float = HU_FAT

    def body_scale(self, z_mm: np.ndarray | float) -> np.ndarray | float:
        """The trunk is a little narrower away from the lower chest."""
        return 1.0 - 0.06 * ((np.asarray(z_mm) + 20.0) / 200.0) ** 2


def anatomy_sample(rng: np.random.Generator) -> BodyAnatomy:
    """A plausible adult trunk: size and organ layout drawn from ``rng``."""
    ax = float(rng.uniform(140.0, 172.0))
    ay = float(rng.uniform(105.0, 128.0))
    fat = float(rng.uniform(8.0, 25.0))
    wall = float(rng.uniform(16.0, 20.0))
    cx, cy = ax - fat - wall, ay - fat - wall
    spine_y = cy - 8.0
    return BodyAnatomy(
        body_semi_axes_mm=(ax, ay),
        fat_thickness_mm=fat,
        wall_thickness_mm=wall,
        right_lung=Ellipsoid(
            (-0.5 * cx, 0.06 * cy, float(rng.uniform(15.0, 25.0))),
            (0.47 * cx, 0.92 * cy, float(rng.uniform(130.0, 140.0))),
        ),
        left_lung=Ellipsoid(
            (0.5 * cx, 0.06 * cy, float(rng.uniform(10.0, 20.0))),
            (0.45 * cx, 0.92 * cy, float(rng.uniform(132.0, 142.0))),
        ),
        # Everything below this dome is abdomen; its top is the left hemidiaphragm.
        abdomen_dome=Ellipsoid(
            (0.0, 0.15 * cy, -160.0), (1.3 * cx, 1.5 * cy, float(rng.uniform(105.0, 120.0)))
        ),
        heart=Ellipsoid((0.18 * cx, -0.35 * cy, 0.0), (0.42 * cx, 0.55 * cy, 62.0)),
        liver=Ellipsoid(
            (-0.33 * cx, 0.0, float(rng.uniform(-100.0, -90.0))),
            (0.66 * cx, 0.86 * cy, float(rng.uniform(82.0, 90.0))),
        ),
        spleen=Ellipsoid((0.62 * cx, 0.5 * cy, -75.0), (0.22 * cx, 0.35 * cy, 45.0)),
        right_kidney=Ellipsoid((-0.42 * cx, 0.62 * cy, -185.0), (0.2 * cx, 0.26 * cy, 55.0)),
        left_kidney=Ellipsoid((0.42 * cx, 0.62 * cy, -175.0), (0.2 * cx, 0.26 * cy, 55.0)),
        spine_y_mm=spine_y,
        vertebral_radius_mm=float(rng.uniform(15.0, 18.0)),
        aorta_centre_mm=(0.2 * cx, spine_y - 30.0),
        aorta_radius_mm=float(rng.uniform(11.0, 14.0)),
        vertebra_pitch_mm=float(rng.uniform(26.0, 30.0)),
        vertebra_phase_mm=float(rng.uniform(0.0, 26.0)),
        rib_pitch_mm=float(rng.uniform(26.0, 32.0)),
        scan_range_z_mm=(-170.0, 155.0),
        liver_hu=float(rng.uniform(55.0, 65.0)),
        fat_hu=float(rng.uniform(-110.0, -90.0)),
    )
