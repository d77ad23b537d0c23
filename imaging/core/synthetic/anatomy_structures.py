"""The anatomy as painted: its structures in paint order, and what it holds at given points.

Each structure is a CT number, a signed distance (mm, negative inside) and a body-frame
bounding box; a later structure covers an earlier one. Signed distances are approximate
away from the surface: they only anti-alias anatomy, whose volume nobody measures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from imaging.core.synthetic.anatomy import (
    HU_ABDOMEN,
    HU_AIR,
    HU_AORTA,
    HU_CANCELLOUS_BONE,
    HU_CORTICAL_BONE,
    HU_CSF,
    HU_DISC,
    HU_HEART,
    HU_KIDNEY,
    HU_LUNG,
    HU_MEDIASTINUM,
    HU_MUSCLE,
    HU_RIB,
    HU_SPLEEN,
    BodyAnatomy,
    Ellipsoid,
)

SignedDistance = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
BoundsMm = tuple[tuple[float, float, float], tuple[float, float, float]]

_UNBOUNDED = 1e5
_POSTERIOR_ARCH_RADIUS_MM = 13.0
_CANAL_RADIUS_MM = 7.0


@dataclass(frozen=True)
class AnatomyStructure:
    """One painted structure: HU, signed distance (mm) and body-frame bounds (lo, hi)."""

    name: str
    hu: float
    signed_distance: SignedDistance
    bounds_mm: BoundsMm


def _ellipse_sd(x: np.ndarray, y: np.ndarray, ax: float, ay: float) -> np.ndarray:
    """Approximate signed distance (mm) to an axis-aligned ellipse centred at 0."""
    px, py = x / ax, y / ay
    k0 = np.sqrt(px * px + py * py)
    k1 = np.sqrt((px / ax) ** 2 + (py / ay) ** 2)
    # The formula is 0/0 at the centre, where the distance is the smaller semi-axis.
    return np.where(k1 > 1e-9, k0 * (k0 - 1.0) / np.maximum(k1, 1e-9), -np.minimum(ax, ay))


def antialias_fraction(sd_mm: np.ndarray, width_mm: float) -> np.ndarray:
    """Fraction inside for a signed distance, a linear ramp one voxel wide."""
    return np.clip(0.5 - sd_mm / width_mm, 0.0, 1.0)


def hu_blend(hu: np.ndarray, fraction: np.ndarray, value: float) -> None:
    """Cover ``hu`` in place by ``value`` over ``fraction`` of each voxel."""
    hu += fraction * (value - hu)


def _ellipsoid_bounds(e: Ellipsoid, pad: float = 0.0) -> BoundsMm:
    c, a = np.asarray(e.centre_mm), np.asarray(e.semi_axes_mm) + pad
    return tuple(c - a), tuple(c + a)


# --------------------------------------------------------------------------------------
# Signed distances shared by several structures. Cuts are intersections (max of signed
# distances): the liver pushes the right lung up, the heart and spine carve the
# mediastinum out of the lungs, the abdominal dome is the diaphragm.
# --------------------------------------------------------------------------------------
def _trunk(anatomy: BodyAnatomy, inset_mm: float) -> SignedDistance:
    ax, ay = anatomy.body_semi_axes_mm

    def sd(x, y, z):
        s = anatomy.body_scale(z)
        return _ellipse_sd(x, y, ax * s - inset_mm, ay * s - inset_mm)

    return sd


def _cavity(anatomy: BodyAnatomy) -> SignedDistance:
    """Inside the body wall (fat and muscle)."""
    return _trunk(anatomy, anatomy.fat_thickness_mm + anatomy.wall_thickness_mm)


def _in_cavity(
    anatomy: BodyAnatomy, organ: Ellipsoid, inset_mm: float, *, thorax: bool = False
) -> SignedDistance:
    """An organ cut to the cavity (and, in the thorax, to above the diaphragm)."""
    cavity = _cavity(anatomy)
    dome = anatomy.abdomen_dome.signed_distance_mm

    def sd(x, y, z):
        out = np.maximum(organ.signed_distance_mm(x, y, z), cavity(x, y, z) + inset_mm)
        if thorax:
            np.maximum(out, -dome(x, y, z), out=out)
        return out

    return sd


def _ribs(anatomy: BodyAnatomy) -> SignedDistance:
    cavity = _cavity(anatomy)

    def sd(x, y, z):
        # A ring just outside the cavity in sloping bands (anterior ends lower), with a
        # gap over the sternum, down to the upper abdomen.
        pitch = anatomy.rib_pitch_mm
        phase = np.mod(z + 0.25 * y, pitch) - 0.5 * pitch
        sternal_gap = np.where(y < 0, 25.0 - np.abs(x), -1e3)
        floor = anatomy.liver.centre_mm[2] - 30.0 - z
        ring = np.abs(cavity(x, y, z) - 6.0) - 4.0
        return np.maximum(np.maximum(ring, np.abs(phase) - 5.0), np.maximum(sternal_gap, floor))

    return sd


# --------------------------------------------------------------------------------------
# The structures, group by group
# --------------------------------------------------------------------------------------
def _wall_structures(anatomy: BodyAnatomy) -> list[AnatomyStructure]:
    """Fat, muscle, the mediastinum and abdomen filling the cavity, and the ribs."""
    ax, ay = anatomy.body_semi_axes_mm
    fat, wall = anatomy.fat_thickness_mm, anatomy.wall_thickness_mm
    big = _UNBOUNDED
    cavity = _cavity(anatomy)
    dome = anatomy.abdomen_dome.signed_distance_mm
    cavity_bounds = ((-(ax - fat - wall), -(ay - fat - wall), -big), (ax - fat, ay - fat, big))

    def abdomen(x, y, z):
        return np.maximum(cavity(x, y, z), dome(x, y, z))

    return [
        AnatomyStructure(
            "fat", anatomy.fat_hu, _trunk(anatomy, 0.0), ((-ax, -ay, -big), (ax, ay, big))
        ),
        AnatomyStructure(
            "muscle",
            HU_MUSCLE,
            _trunk(anatomy, fat),
            ((fat - ax, fat - ay, -big), (ax - fat, ay - fat, big)),
        ),
        AnatomyStructure("mediastinum", HU_MEDIASTINUM, cavity, cavity_bounds),
        AnatomyStructure("abdomen", HU_ABDOMEN, abdomen, cavity_bounds),
        AnatomyStructure(
            "rib",
            HU_RIB,
            _ribs(anatomy),
            ((-(ax - fat), -(ay - fat), -big), (ax - fat, ay - fat, big)),
        ),
    ]


def _organ_structures(anatomy: BodyAnatomy) -> list[AnatomyStructure]:
    """Lungs, heart, liver, spleen, kidneys and the aorta."""
    organs = (
        ("right_lung", HU_LUNG, anatomy.right_lung, 2.0, True),
        ("left_lung", HU_LUNG, anatomy.left_lung, 2.0, True),
        ("heart", HU_HEART, anatomy.heart, 2.0, False),
        ("liver", anatomy.liver_hu, anatomy.liver, 1.0, False),
        ("spleen", HU_SPLEEN, anatomy.spleen, 1.0, False),
        ("kidney", HU_KIDNEY, anatomy.right_kidney, 1.0, False),
        ("kidney", HU_KIDNEY, anatomy.left_kidney, 1.0, False),
    )
    structures = [
        AnatomyStructure(
            name,
            hu,
            _in_cavity(anatomy, organ, inset_mm, thorax=thorax),
            _ellipsoid_bounds(organ),
        )
        for name, hu, organ, inset_mm, thorax in organs
    ]
    acx, acy = anatomy.aorta_centre_mm
    big = _UNBOUNDED
    structures.append(
        AnatomyStructure(
            "aorta",
            HU_AORTA,
            lambda x, y, z: np.hypot(x - acx, y - acy) - anatomy.aorta_radius_mm,
            ((acx - 15.0, acy - 15.0, -big), (acx + 15.0, acy + 15.0, big)),
        )
    )
    return structures


def _spine_structures(anatomy: BodyAnatomy) -> list[AnatomyStructure]:
    """Vertebral bodies (cortex, cancellous bone, discs), posterior arch and canal."""
    r = anatomy.vertebral_radius_mm
    ys = anatomy.spine_y_mm
    canal_y = ys + r + 9.0
    arch = _POSTERIOR_ARCH_RADIUS_MM
    big = _UNBOUNDED

    def disc(x, y, z):
        phase = np.mod(z - anatomy.vertebra_phase_mm, anatomy.vertebra_pitch_mm) - 3.0
        return np.maximum(np.abs(phase) - 3.0, np.hypot(x, y - ys) - r + 0.5)

    def posterior_arch(x, y, z):
        spinous = np.maximum(np.abs(x) - 4.0, np.abs(y - canal_y - 20.0) - 14.0)
        return np.minimum(np.hypot(x, y - canal_y) - arch, spinous)

    vertebra_bounds = ((-r, ys - r, -big), (r, ys + r, big))
    return [
        AnatomyStructure(
            "bone", HU_CORTICAL_BONE, lambda x, y, z: np.hypot(x, y - ys) - r, vertebra_bounds
        ),
        AnatomyStructure(
            "bone",
            HU_CANCELLOUS_BONE,
            lambda x, y, z: np.hypot(x, y - ys) - (r - 2.5),
            vertebra_bounds,
        ),
        AnatomyStructure("disc", HU_DISC, disc, vertebra_bounds),
        AnatomyStructure(
            "bone",
            HU_RIB,
            posterior_arch,
            ((-arch, canal_y - arch, -big), (arch, canal_y + 34.0, big)),
        ),
        AnatomyStructure(
            "canal",
            HU_CSF,
            lambda x, y, z: np.hypot(x, y - canal_y) - _CANAL_RADIUS_MM,
            ((-8.0, canal_y - 8.0, -big), (8.0, canal_y + 8.0, big)),
        ),
    ]


def anatomy_structures(anatomy: BodyAnatomy) -> list[AnatomyStructure]:
    """The structures in paint order: a later one covers an earlier one."""
    return [
        *_wall_structures(anatomy),
        *_organ_structures(anatomy),
        *_spine_structures(anatomy),
    ]


# --------------------------------------------------------------------------------------
# What the anatomy holds at points
# --------------------------------------------------------------------------------------
def anatomy_hu(
    anatomy: BodyAnatomy, x: np.ndarray, y: np.ndarray, z: np.ndarray, *, voxel_mm: float
) -> np.ndarray:
    """CT numbers (HU, float32) of the anatomy at body-frame points ``x, y, z`` (mm).

    Edges are anti-aliased over ``voxel_mm``.
    """
    hu = np.full(np.broadcast_shapes(x.shape, y.shape, z.shape), HU_AIR, dtype=np.float32)
    for structure in anatomy_structures(anatomy):
        hu_blend(hu, antialias_fraction(structure.signed_distance(x, y, z), voxel_mm), structure.hu)
    return hu


def anatomy_label(anatomy: BodyAnatomy, points_mm: np.ndarray) -> np.ndarray:
    """Name of the visible structure at body-frame points (N, 3) ('air' outside the body)."""
    points_mm = np.atleast_2d(np.asarray(points_mm, dtype=float))
    x, y, z = points_mm[:, 0], points_mm[:, 1], points_mm[:, 2]
    labels = np.full(len(points_mm), "air", dtype=object)
    for structure in anatomy_structures(anatomy):
        labels[structure.signed_distance(x, y, z) < 0] = structure.name
    return labels


def _fibonacci_sphere(n: int) -> np.ndarray:
    i = np.arange(n) + 0.5
    polar = np.arccos(1.0 - 2.0 * i / n)
    azimuth = np.pi * (1.0 + 5.0**0.5) * i
    return np.stack(
        [np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar), np.cos(polar)], axis=1
    )


_BALL_SAMPLES = np.concatenate(
    [np.zeros((1, 3))] + [r * _fibonacci_sphere(n) for r, n in ((0.35, 60), (0.7, 200), (1.0, 600))]
)


def anatomy_balls_within(
    anatomy: BodyAnatomy, centres_mm: np.ndarray, radius_mm: float, organ: str
) -> np.ndarray:
    """For each centre (M, 3), whether the ball (body frame) lies in ``organ`` as painted.

    Checked on ~860 points per ball (centre and three Fibonacci shells).
    """
    centres = np.atleast_2d(np.asarray(centres_mm, dtype=float))
    points = centres[:, None, :] + radius_mm * _BALL_SAMPLES[None, :, :]
    labels = anatomy_label(anatomy, points.reshape(-1, 3)).reshape(len(centres), -1)
    return np.all(labels == organ, axis=1)


def anatomy_ball_is_within(
    anatomy: BodyAnatomy, centre_mm: np.ndarray, radius_mm: float, organ: str
) -> bool:
    """Whether one ball (body frame) lies in ``organ`` as painted."""
    return bool(anatomy_balls_within(anatomy, centre_mm, radius_mm, organ)[0])
