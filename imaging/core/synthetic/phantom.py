"""A crude chest/upper-abdomen CT phantom in Hounsfield units, with lung nodules and liver mets.

Frames. Anatomy and lesions live in a *body frame*: millimetres, axes parallel to DICOM
LPS for an unrotated patient (x towards the patient's left, y posterior, z superior),
origin on the trunk's long axis near the dome of the diaphragm. A study places the body
in its own patient coordinates with a rigid 4x4 *pose* (body -> LPS mm); the scanner grid
is a `ScanGeometry` in LPS. Rendering maps each voxel from LPS back into the body frame.

Partial volume. A voxel holds the mean over its box (spacing_mm, not thickness) of the
scene, so the sum of a lesion's voxel fractions times the voxel volume is the lesion's
volume. Lesion boundary voxels are supersampled on a sub-voxel lattice (interior and
exterior voxels are classified with a rigorous bound and not sampled). A slice thicker
than the slice spacing is then modelled by a sum-preserving Gaussian blur along the
slice axis, a point spread function by a sum-preserving in-plane blur, and scanner
noise is added last (Gaussian, lightly correlated in-plane).

Lesions are star-shaped: the surface, about a reference point, is at radius
``R * rho(u)`` in unit direction ``u``, with ``rho(u) = 1 + sum_n c_n exp(kappa_n (u.d_n - 1))``
(a sphere when there are no lobes). The exact volume is ``R^3 / 3 * integral rho^3 dOmega``
and the centroid ``R / 4 * integral rho^4 u dOmega / volume``, both integrated by
Gauss-Legendre x trapezoid quadrature, which converges spectrally for this smooth
integrand. A lesion's *centre* is its exact centroid; it grows or shrinks about it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy import ndimage

from imaging.core.geometry.volume import Volume

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

_QUADRATURE_POLAR = 64
_QUADRATURE_AZIMUTH = 128
_POSTERIOR_ARCH_RADIUS_MM = 13.0
_CANAL_RADIUS_MM = 7.0


# --------------------------------------------------------------------------------------
# Geometry helpers (signed distances are approximate away from the surface; they only
# anti-alias anatomy, whose volume nobody measures)
# --------------------------------------------------------------------------------------
def _ellipse_sd(x: np.ndarray, y: np.ndarray, ax: float, ay: float) -> np.ndarray:
    """Approximate signed distance (mm) to an axis-aligned ellipse centred at 0."""
    px, py = x / ax, y / ay
    k0 = np.sqrt(px * px + py * py)
    k1 = np.sqrt((px / ax) ** 2 + (py / ay) ** 2)
    # The formula is 0/0 at the centre, where the distance is the smaller semi-axis.
    return np.where(k1 > 1e-9, k0 * (k0 - 1.0) / np.maximum(k1, 1e-9), -np.minimum(ax, ay))


def _antialias(sd_mm: np.ndarray, width_mm: float) -> np.ndarray:
    """Fraction inside for a signed distance, a linear ramp one voxel wide."""
    return np.clip(0.5 - sd_mm / width_mm, 0.0, 1.0)


def _blend(hu: np.ndarray, fraction: np.ndarray, value: float) -> None:
    hu += fraction * (value - hu)


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


# --------------------------------------------------------------------------------------
# Anatomy
# --------------------------------------------------------------------------------------
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


@dataclass(frozen=True)
class _Structure:
    """One painted structure: HU, signed distance (mm) and body-frame bounds (lo, hi)."""

    name: str
    hu: float
    signed_distance: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
    bounds_mm: tuple[tuple[float, float, float], tuple[float, float, float]]


_UNBOUNDED = 1e5


def _ellipsoid_bounds(e: Ellipsoid, pad: float = 0.0):
    c, a = np.asarray(e.centre_mm), np.asarray(e.semi_axes_mm) + pad
    return tuple(c - a), tuple(c + a)


def _anatomy_structures(anatomy: BodyAnatomy) -> list[_Structure]:
    """The structures in paint order: a later one covers an earlier one.

    Cuts are intersections (max of signed distances): the liver pushes the right lung
    up, the heart and spine carve the mediastinum out of the lungs, the abdominal dome
    is the diaphragm.
    """
    ax, ay = anatomy.body_semi_axes_mm
    fat, wall = anatomy.fat_thickness_mm, anatomy.wall_thickness_mm
    big = _UNBOUNDED

    def trunk(inset: float):
        def sd(x, y, z):
            s = anatomy.body_scale(z)
            return _ellipse_sd(x, y, ax * s - inset, ay * s - inset)

        return sd

    cavity = trunk(fat + wall)
    dome = anatomy.abdomen_dome.signed_distance_mm
    cavity_bounds = ((-(ax - fat - wall), -(ay - fat - wall), -big), (ax - fat, ay - fat, big))

    def abdomen(x, y, z):
        return np.maximum(cavity(x, y, z), dome(x, y, z))

    def rib(x, y, z):
        # A ring just outside the cavity in sloping bands (anterior ends lower), with a
        # gap over the sternum, down to the upper abdomen.
        pitch = anatomy.rib_pitch_mm
        phase = np.mod(z + 0.25 * y, pitch) - 0.5 * pitch
        sternal_gap = np.where(y < 0, 25.0 - np.abs(x), -1e3)
        floor = anatomy.liver.centre_mm[2] - 30.0 - z
        ring = np.abs(cavity(x, y, z) - 6.0) - 4.0
        return np.maximum(np.maximum(ring, np.abs(phase) - 5.0), np.maximum(sternal_gap, floor))

    def in_cavity(organ: Ellipsoid, inset: float, *, thorax: bool = False):
        def sd(x, y, z):
            out = np.maximum(organ.signed_distance_mm(x, y, z), cavity(x, y, z) + inset)
            if thorax:
                np.maximum(out, -dome(x, y, z), out=out)
            return out

        return sd

    acx, acy = anatomy.aorta_centre_mm
    r = anatomy.vertebral_radius_mm
    ys = anatomy.spine_y_mm
    canal_y = ys + r + 9.0
    arch = _POSTERIOR_ARCH_RADIUS_MM

    def disc(x, y, z):
        phase = np.mod(z - anatomy.vertebra_phase_mm, anatomy.vertebra_pitch_mm) - 3.0
        return np.maximum(np.abs(phase) - 3.0, np.hypot(x, y - ys) - r + 0.5)

    def posterior_arch(x, y, z):
        spinous = np.maximum(np.abs(x) - 4.0, np.abs(y - canal_y - 20.0) - 14.0)
        return np.minimum(np.hypot(x, y - canal_y) - arch, spinous)

    return [
        _Structure("fat", anatomy.fat_hu, trunk(0.0), ((-ax, -ay, -big), (ax, ay, big))),
        _Structure(
            "muscle", HU_MUSCLE, trunk(fat), ((fat - ax, fat - ay, -big), (ax - fat, ay - fat, big))
        ),
        _Structure("mediastinum", HU_MEDIASTINUM, cavity, cavity_bounds),
        _Structure("abdomen", HU_ABDOMEN, abdomen, cavity_bounds),
        _Structure(
            "rib", HU_RIB, rib, ((-(ax - fat), -(ay - fat), -big), (ax - fat, ay - fat, big))
        ),
        _Structure(
            "right_lung",
            HU_LUNG,
            in_cavity(anatomy.right_lung, 2.0, thorax=True),
            _ellipsoid_bounds(anatomy.right_lung),
        ),
        _Structure(
            "left_lung",
            HU_LUNG,
            in_cavity(anatomy.left_lung, 2.0, thorax=True),
            _ellipsoid_bounds(anatomy.left_lung),
        ),
        _Structure(
            "heart", HU_HEART, in_cavity(anatomy.heart, 2.0), _ellipsoid_bounds(anatomy.heart)
        ),
        _Structure(
            "liver",
            anatomy.liver_hu,
            in_cavity(anatomy.liver, 1.0),
            _ellipsoid_bounds(anatomy.liver),
        ),
        _Structure(
            "spleen", HU_SPLEEN, in_cavity(anatomy.spleen, 1.0), _ellipsoid_bounds(anatomy.spleen)
        ),
        _Structure(
            "kidney",
            HU_KIDNEY,
            in_cavity(anatomy.right_kidney, 1.0),
            _ellipsoid_bounds(anatomy.right_kidney),
        ),
        _Structure(
            "kidney",
            HU_KIDNEY,
            in_cavity(anatomy.left_kidney, 1.0),
            _ellipsoid_bounds(anatomy.left_kidney),
        ),
        _Structure(
            "aorta",
            HU_AORTA,
            lambda x, y, z: np.hypot(x - acx, y - acy) - anatomy.aorta_radius_mm,
            ((acx - 15.0, acy - 15.0, -big), (acx + 15.0, acy + 15.0, big)),
        ),
        # Spine: vertebral bodies (cortex, cancellous bone, discs), posterior arch, canal.
        _Structure(
            "bone",
            HU_CORTICAL_BONE,
            lambda x, y, z: np.hypot(x, y - ys) - r,
            ((-r, ys - r, -big), (r, ys + r, big)),
        ),
        _Structure(
            "bone",
            HU_CANCELLOUS_BONE,
            lambda x, y, z: np.hypot(x, y - ys) - (r - 2.5),
            ((-r, ys - r, -big), (r, ys + r, big)),
        ),
        _Structure("disc", HU_DISC, disc, ((-r, ys - r, -big), (r, ys + r, big))),
        _Structure(
            "bone",
            HU_RIB,
            posterior_arch,
            ((-arch, canal_y - arch, -big), (arch, canal_y + 34.0, big)),
        ),
        _Structure(
            "canal",
            HU_CSF,
            lambda x, y, z: np.hypot(x, y - canal_y) - _CANAL_RADIUS_MM,
            ((-8.0, canal_y - 8.0, -big), (8.0, canal_y + 8.0, big)),
        ),
    ]


def anatomy_hu(
    anatomy: BodyAnatomy, x: np.ndarray, y: np.ndarray, z: np.ndarray, *, voxel_mm: float
) -> np.ndarray:
    """CT numbers (HU, float32) of the anatomy at body-frame points ``x, y, z`` (mm).

    Edges are anti-aliased over ``voxel_mm``.
    """
    hu = np.full(np.broadcast_shapes(x.shape, y.shape, z.shape), HU_AIR, dtype=np.float32)
    for structure in _anatomy_structures(anatomy):
        _blend(hu, _antialias(structure.signed_distance(x, y, z), voxel_mm), structure.hu)
    return hu


def anatomy_label(anatomy: BodyAnatomy, points_mm: np.ndarray) -> np.ndarray:
    """Name of the visible structure at body-frame points (N, 3) ('air' outside the body)."""
    points_mm = np.atleast_2d(np.asarray(points_mm, dtype=float))
    x, y, z = points_mm[:, 0], points_mm[:, 1], points_mm[:, 2]
    labels = np.full(len(points_mm), "air", dtype=object)
    for structure in _anatomy_structures(anatomy):
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


# --------------------------------------------------------------------------------------
# Lesions
# --------------------------------------------------------------------------------------
def _sphere_quadrature(n_polar: int, n_azimuth: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit directions (N, 3) and solid-angle weights (N,) integrating exactly-smooth functions."""
    mu, w_mu = np.polynomial.legendre.leggauss(n_polar)
    phi = (np.arange(n_azimuth) + 0.5) * (2.0 * np.pi / n_azimuth)
    sin_theta = np.sqrt(1.0 - mu**2)
    u = np.stack(
        [
            (sin_theta[:, None] * np.cos(phi)[None, :]).ravel(),
            (sin_theta[:, None] * np.sin(phi)[None, :]).ravel(),
            np.repeat(mu, n_azimuth),
        ],
        axis=1,
    )
    weights = np.repeat(w_mu, n_azimuth) * (2.0 * np.pi / n_azimuth)
    return u, weights


@lru_cache(maxsize=8)
def _sphere_quadrature_cached(n_polar: int, n_azimuth: int) -> tuple[np.ndarray, np.ndarray]:
    return _sphere_quadrature(n_polar, n_azimuth)


def _rho(directions, amplitudes, sharpness, u: np.ndarray) -> np.ndarray:
    out = np.ones(u.shape[:-1], dtype=np.float64 if u.dtype == np.float64 else np.float32)
    for d, c, kappa in zip(directions, amplitudes, sharpness, strict=True):
        cos = u[..., 0] * d[0] + u[..., 1] * d[1] + u[..., 2] * d[2]
        out += c * np.exp(kappa * (cos - 1.0))
    return out


@lru_cache(maxsize=4096)
def _shape_constants(
    directions: tuple, amplitudes: tuple, sharpness: tuple
) -> tuple[float, tuple[float, float, float], float, float]:
    """(unit volume mm^3, unit centroid offset, max rho, Lipschitz bound of rho)."""
    if not amplitudes:
        return 4.0 * np.pi / 3.0, (0.0, 0.0, 0.0), 1.0, 0.0
    u, w = _sphere_quadrature_cached(_QUADRATURE_POLAR, _QUADRATURE_AZIMUTH)
    rho = _rho(directions, amplitudes, sharpness, u)
    volume = float(np.sum(w * rho**3) / 3.0)
    centroid = (w * rho**4) @ u / 4.0 / volume
    gamma = np.linspace(0.0, np.pi, 2001)
    lipschitz = 1.01 * sum(
        c * k * float(np.max(np.sin(gamma) * np.exp(k * (np.cos(gamma) - 1.0))))
        for c, k in zip(amplitudes, sharpness, strict=True)
    )
    # Every direction is within pi/60 rad of a quadrature node (the node spacing is
    # ~pi/64 in both angles), so the sampled maximum plus that slack bounds rho.
    sampled = max(
        float(rho.max()),
        float(_rho(directions, amplitudes, sharpness, np.asarray(directions)).max()),
    )
    rho_max = min(sampled + lipschitz * np.pi / 60.0, 1.0 + sum(amplitudes))
    return volume, tuple(float(v) for v in centroid), rho_max, lipschitz


@dataclass(frozen=True)
class LesionShape:
    """A lesion's fixed shape and CT number; its size is set per study by its volume.

    ``lobe_directions`` are unit vectors in the body frame; with no lobes the lesion is a
    sphere. ``centre_body_mm`` is the exact centroid, constant while the lesion grows.
    """

    centre_body_mm: tuple[float, float, float]
    hu: float
    lobe_directions: tuple[tuple[float, float, float], ...] = ()
    lobe_amplitudes: tuple[float, ...] = ()
    lobe_sharpness: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not (len(self.lobe_directions) == len(self.lobe_amplitudes) == len(self.lobe_sharpness)):
            raise ValueError("one amplitude and one sharpness per lobe direction")
        if any(c < 0 for c in self.lobe_amplitudes):
            raise ValueError("lobe amplitudes must be >= 0 (bumps, not dents)")

    @property
    def is_irregular(self) -> bool:
        return bool(self.lobe_amplitudes)

    def rho(self, u: np.ndarray) -> np.ndarray:
        """Relative surface radius in unit directions ``u`` (..., 3), body frame."""
        return _rho(self.lobe_directions, self.lobe_amplitudes, self.lobe_sharpness, u)

    @property
    def _constants(self) -> tuple[float, tuple[float, float, float], float, float]:
        return _shape_constants(self.lobe_directions, self.lobe_amplitudes, self.lobe_sharpness)

    @property
    def unit_volume_mm3(self) -> float:
        """Exact volume (mm^3) at scale R = 1 mm."""
        return self._constants[0]

    @property
    def unit_centroid_offset(self) -> np.ndarray:
        """Centroid minus reference point at scale R = 1 mm (body frame)."""
        return np.asarray(self._constants[1])

    @property
    def rho_bounds(self) -> tuple[float, float]:
        """(min, max) of rho over the sphere: bumps only, so min >= 1."""
        return 1.0, self._constants[2]

    @property
    def rho_lipschitz(self) -> float:
        """Upper bound of |grad rho| on the unit sphere (per radian)."""
        return self._constants[3]

    def scale_for_volume_mm(self, volume_ml: float) -> float:
        """R (mm) at which the exact volume is ``volume_ml``."""
        return float(np.cbrt(max(volume_ml, 0.0) * 1000.0 / self.unit_volume_mm3))

    def reference_point_body_mm(self, volume_ml: float) -> np.ndarray:
        scale = self.scale_for_volume_mm(volume_ml)
        return np.asarray(self.centre_body_mm) - scale * self.unit_centroid_offset

    def bounding_radius_mm(self, volume_ml: float) -> float:
        """Radius about the centre of a ball that holds the whole lesion."""
        scale = self.scale_for_volume_mm(volume_ml)
        return scale * (self.rho_bounds[1] + float(np.linalg.norm(self.unit_centroid_offset)))

    def contains(self, points_body_mm: np.ndarray, volume_ml: float) -> np.ndarray:
        """Whether body-frame points (..., 3) are inside the lesion at ``volume_ml``."""
        if volume_ml <= 0:
            return np.zeros(np.asarray(points_body_mm).shape[:-1], dtype=bool)
        scale = self.scale_for_volume_mm(volume_ml)
        rel = np.asarray(points_body_mm) - self.reference_point_body_mm(volume_ml)
        dist = np.linalg.norm(rel, axis=-1)
        u = rel / np.maximum(dist, 1e-12)[..., None]
        return dist < scale * self.rho(u)


def equivalent_diameter_mm(volume_ml: float) -> float:
    """Diameter (mm) of the sphere with this volume."""
    return float(np.cbrt(6.0 * max(volume_ml, 0.0) * 1000.0 / np.pi))


def volume_for_diameter_ml(diameter_mm: float) -> float:
    """Volume (ml) of a sphere of this diameter."""
    return float(np.pi * diameter_mm**3 / 6.0 / 1000.0)


def lesion_shape_sample(
    rng: np.random.Generator, *, centre_body_mm: np.ndarray, hu: float, irregular: bool
) -> LesionShape:
    """A sphere, or a lobulated shape with 3-6 smooth bumps of random size and direction."""
    if not irregular:
        return LesionShape(tuple(float(v) for v in centre_body_mm), float(hu))
    n = int(rng.integers(3, 7))
    directions = rng.normal(size=(n, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return LesionShape(
        centre_body_mm=tuple(float(v) for v in centre_body_mm),
        hu=float(hu),
        lobe_directions=tuple(tuple(float(v) for v in d) for d in directions),
        lobe_amplitudes=tuple(float(v) for v in rng.uniform(0.12, 0.4, size=n)),
        lobe_sharpness=tuple(float(v) for v in rng.uniform(3.0, 9.0, size=n)),
    )


# --------------------------------------------------------------------------------------
# Scanner grid and rendering
# --------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class ScanGeometry:
    """A CT acquisition grid in LPS mm, with the same conventions as `Volume`.

    ``spacing_mm`` is (column spacing, row spacing, slice spacing); ``direction`` columns are
    the row cosine, the column cosine and the slice direction (+-(row x column));
    ``slice_thickness_mm`` >= the slice spacing (overlapping reconstructions are blurred).
    """

    shape_ijk: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]
    direction: np.ndarray
    slice_thickness_mm: float

    def empty_volume(self, frame_of_reference_uid: str = "") -> Volume:
        ni, nj, nk = self.shape_ijk
        return Volume(
            array=np.zeros((nk, nj, ni), dtype=np.float32),
            spacing_mm=self.spacing_mm,
            origin_mm=self.origin_mm,
            direction=self.direction,
            frame_of_reference_uid=frame_of_reference_uid,
        )

    @classmethod
    def centred(
        cls,
        *,
        centre_lps_mm: np.ndarray,
        shape_ijk: tuple[int, int, int],
        spacing_mm: tuple[float, float, float],
        direction: np.ndarray,
        slice_thickness_mm: float,
    ) -> ScanGeometry:
        """The grid whose central voxel position is ``centre_lps_mm``."""
        direction = np.asarray(direction, dtype=float)
        half = (np.asarray(shape_ijk, dtype=float) - 1.0) / 2.0 * np.asarray(spacing_mm)
        origin = np.asarray(centre_lps_mm, dtype=float) - direction @ half
        return cls(
            shape_ijk=tuple(int(n) for n in shape_ijk),
            spacing_mm=tuple(float(s) for s in spacing_mm),
            origin_mm=tuple(float(o) for o in origin),
            direction=direction,
            slice_thickness_mm=float(slice_thickness_mm),
        )


@dataclass(frozen=True)
class LesionAtStudy:
    """A lesion's shape and its exact volume (ml) at one study."""

    lesion_id: str
    shape: LesionShape
    volume_ml: float


@dataclass(frozen=True, eq=False)
class LesionFraction:
    """A lesion's voxel occupancy (0..1, before blur and noise) in a box of the grid."""

    lesion_id: str
    start_kji: tuple[int, int, int]
    fraction: np.ndarray

    def volume_ml(self, voxel_volume_ml: float) -> float:
        return float(self.fraction.sum(dtype=np.float64) * voxel_volume_ml)


@dataclass(frozen=True, eq=False)
class RenderedStudy:
    """The image (HU, float32) and each lesion's occupancy as rendered."""

    volume: Volume
    lesion_fractions: dict[str, LesionFraction] = field(default_factory=dict)


def _body_coordinates(
    geometry: ScanGeometry,
    body_from_lps: np.ndarray,
    box: tuple[int, int, int, int, int, int],
    dtype: type = np.float32,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Body-frame x, y, z ([k, j, i]) of voxel centres in the index box (k0, k1, j0, j1, i0, i1)."""
    k0, k1, j0, j1, i0, i1 = box
    affine = body_from_lps[:3, :3] @ (geometry.direction * np.asarray(geometry.spacing_mm)[None, :])
    offset = body_from_lps[:3, :3] @ np.asarray(geometry.origin_mm) + body_from_lps[:3, 3]
    # Sum the small (k, j) plane first, then broadcast once along i, in the output dtype.
    i = np.arange(i0, i1, dtype=np.float64)[None, None, :]
    j = np.arange(j0, j1, dtype=np.float64)[None, :, None]
    k = np.arange(k0, k1, dtype=np.float64)[:, None, None]
    out = []
    for r in range(3):
        plane = (affine[r, 1] * j + affine[r, 2] * k + offset[r]).astype(dtype)
        out.append(plane + (affine[r, 0] * i).astype(dtype))
    return tuple(out)


def _sub_voxel_offsets(spacing_mm: np.ndarray, step_mm: float) -> np.ndarray:
    """Stratified offsets (M, 3) in index units, inside (-0.5, 0.5)^3, ~step_mm apart."""
    counts = np.clip(np.ceil(spacing_mm / step_mm), 2, 24).astype(int)
    axes = [(np.arange(n) + 0.5) / n - 0.5 for n in counts]
    grid = np.meshgrid(*axes, indexing="ij")
    return np.stack([g.ravel() for g in grid], axis=1)


def lesion_fraction_render(
    lesion: LesionAtStudy, geometry: ScanGeometry, body_from_lps: np.ndarray
) -> LesionFraction | None:
    """The lesion's partial-volume occupancy of each voxel box, or None when absent.

    Voxels whose whole box is certainly inside or outside (from rho's bounds and
    Lipschitz constant) get 1 or 0; the others are sampled on a sub-voxel lattice fine
    enough (about R/12, 0.1-0.6 mm) that the summed volume error is well under 1 %.
    """
    if lesion.volume_ml <= 0:
        return None
    shape = lesion.shape
    spacing = np.asarray(geometry.spacing_mm)
    lps_from_body = np.linalg.inv(body_from_lps)
    centre_lps = lps_from_body[:3, :3] @ np.asarray(shape.centre_body_mm) + lps_from_body[:3, 3]
    # The inverse affine of the grid: index = (D^T (lps - origin)) / spacing.
    centre_idx = (geometry.direction.T @ (centre_lps - np.asarray(geometry.origin_mm))) / spacing
    reach = shape.bounding_radius_mm(lesion.volume_ml) + float(np.max(spacing))
    half_idx = reach / spacing
    lo = np.maximum(np.floor(centre_idx - half_idx).astype(int), 0)
    hi = np.minimum(np.ceil(centre_idx + half_idx).astype(int) + 1, np.asarray(geometry.shape_ijk))
    if np.any(hi <= lo):
        return None
    (i0, j0, k0), (i1, j1, k1) = lo, hi
    x, y, z = _body_coordinates(geometry, body_from_lps, (k0, k1, j0, j1, i0, i1), dtype=np.float64)
    scale = shape.scale_for_volume_mm(lesion.volume_ml)
    ref = shape.reference_point_body_mm(lesion.volume_ml)
    rel = np.stack([x - ref[0], y - ref[1], z - ref[2]], axis=-1)
    dist = np.linalg.norm(rel, axis=-1)
    surface = scale * shape.rho(rel / np.maximum(dist, 1e-9)[..., None])
    rho_min, rho_max = shape.rho_bounds
    half_diagonal = 0.5 * float(np.linalg.norm(spacing))
    # How far the surface radius can change across a voxel seen from the reference point.
    angle = np.minimum(np.pi / 2 * half_diagonal / np.maximum(dist - half_diagonal, 1e-9), np.pi)
    margin = half_diagonal + scale * shape.rho_lipschitz * angle
    inside = ((surface - dist) > margin) | (dist + half_diagonal < scale * rho_min)
    outside = ((dist - surface) > margin) | (dist - half_diagonal > scale * rho_max)
    fraction = inside.astype(np.float32)
    boundary = np.argwhere(~inside & ~outside)
    if len(boundary):
        offsets = _sub_voxel_offsets(spacing, float(np.clip(scale / 12.0, 0.1, 0.6)))
        affine = body_from_lps[:3, :3] @ (geometry.direction * spacing[None, :])
        base = np.stack([x, y, z], axis=-1)[tuple(boundary.T)]
        sub = offsets[:, [0, 1, 2]] @ affine.T  # index offsets (i, j, k) to body mm
        chunk = max(1, 2_000_000 // len(offsets))
        for start in range(0, len(boundary), chunk):
            points = base[start : start + chunk, None, :] + sub[None, :, :] - ref
            d = np.linalg.norm(points, axis=-1)
            hit = d < scale * shape.rho(points / np.maximum(d, 1e-12)[..., None])
            idx = boundary[start : start + chunk]
            fraction[idx[:, 0], idx[:, 1], idx[:, 2]] = hit.mean(axis=1)
    return LesionFraction(lesion.lesion_id, (int(k0), int(j0), int(i0)), fraction)


def _anatomy_paint(
    anatomy: BodyAnatomy,
    geometry: ScanGeometry,
    body_from_lps: np.ndarray,
    hu: np.ndarray,
    *,
    voxel_mm: float,
    chunk: int,
) -> None:
    """Paint the anatomy into ``hu`` ([k, j, i]), each structure only inside its bounds."""
    hu.fill(HU_AIR)
    structures = _anatomy_structures(anatomy)
    ni, nj, nk = geometry.shape_ijk
    spacing = np.asarray(geometry.spacing_mm)
    lps_from_body = np.linalg.inv(body_from_lps)
    index_from_body = (geometry.direction.T @ lps_from_body[:3, :3]) / spacing[:, None]
    index_offset = geometry.direction.T @ (lps_from_body[:3, 3] - geometry.origin_mm) / spacing
    body_from_index = body_from_lps[:3, :3] @ (geometry.direction * spacing[None, :])
    body_offset = body_from_lps[:3, :3] @ np.asarray(geometry.origin_mm) + body_from_lps[:3, 3]
    unit_box = np.array(np.meshgrid([0, 1], [0, 1], [0, 1], indexing="ij")).reshape(3, -1).T
    pad = 2.0 * voxel_mm + float(np.max(spacing))
    for k0 in range(0, nk, chunk):
        k1 = min(nk, k0 + chunk)
        corners = unit_box * [ni - 1, nj - 1, k1 - 1 - k0] + [0, 0, k0]
        chunk_z = (corners @ body_from_index.T + body_offset)[:, 2]
        for structure in structures:
            lo, hi = (np.array(b, dtype=float) for b in structure.bounds_mm)
            lo[2], hi[2] = max(lo[2], chunk_z.min()), min(hi[2], chunk_z.max())
            if lo[2] > hi[2] + pad:
                continue
            lo, hi = lo - pad, hi + pad
            box = (unit_box * (hi - lo) + lo) @ index_from_body.T + index_offset
            i0, j0, ka = np.maximum(np.floor(box.min(axis=0)).astype(int), [0, 0, k0])
            i1, j1, kb = np.minimum(np.ceil(box.max(axis=0)).astype(int) + 1, [ni, nj, k1])
            if i1 <= i0 or j1 <= j0 or kb <= ka:
                continue
            x, y, z = _body_coordinates(geometry, body_from_lps, (ka, kb, j0, j1, i0, i1))
            fraction = _antialias(structure.signed_distance(x, y, z), voxel_mm)
            _blend(hu[ka:kb, j0:j1, i0:i1], fraction, structure.hu)


def _gaussian_noise(
    rng: np.random.Generator, shape: tuple[int, ...], sigma_px: float
) -> np.ndarray:
    """Unit-variance Gaussian noise, correlated in-plane by a Gaussian of ``sigma_px``."""
    noise = rng.standard_normal(shape, dtype=np.float32)
    if sigma_px <= 0:
        return noise
    delta = np.zeros((1, 33, 33), dtype=np.float64)
    delta[0, 16, 16] = 1.0
    gain = float(np.sqrt((ndimage.gaussian_filter(delta, (0, sigma_px, sigma_px)) ** 2).sum()))
    ndimage.gaussian_filter(noise, (0, sigma_px, sigma_px), output=noise, mode="wrap")
    noise /= gain
    return noise


def phantom_render(
    *,
    anatomy: BodyAnatomy,
    lesions: list[LesionAtStudy],
    geometry: ScanGeometry,
    pose_body_to_lps: np.ndarray,
    noise_hu: float,
    rng: np.random.Generator,
    psf_fwhm_mm: float = 1.0,
    noise_correlation_px: float = 0.6,
    frame_of_reference_uid: str = "",
    slices_per_chunk: int = 16,
) -> RenderedStudy:
    """Render one acquisition: anatomy + lesions (partial volume), blur, then noise (HU)."""
    pose = np.asarray(pose_body_to_lps, dtype=float)
    body_from_lps = np.linalg.inv(pose)
    ni, nj, nk = geometry.shape_ijk
    volume = geometry.empty_volume(frame_of_reference_uid)
    hu = volume.array
    pixel_mm = float(min(geometry.spacing_mm[:2]))
    _anatomy_paint(anatomy, geometry, body_from_lps, hu, voxel_mm=pixel_mm, chunk=slices_per_chunk)

    fractions: dict[str, LesionFraction] = {}
    for lesion in lesions:
        frac = lesion_fraction_render(lesion, geometry, body_from_lps)
        if frac is None:
            continue
        fractions[lesion.lesion_id] = frac
        k0, j0, i0 = frac.start_kji
        nk_, nj_, ni_ = frac.fraction.shape
        box = hu[k0 : k0 + nk_, j0 : j0 + nj_, i0 : i0 + ni_]
        box += frac.fraction * (lesion.shape.hu - box)

    # Slice sensitivity: a slab of slice_thickness sampled every slice spacing.
    spacing_k = geometry.spacing_mm[2]
    extra = max(geometry.slice_thickness_mm**2 - spacing_k**2, 0.0)
    if extra > 1e-6:
        sigma_k = np.sqrt(extra) / 2.3548 / spacing_k
        ndimage.gaussian_filter1d(hu, sigma_k, axis=0, output=hu, mode="nearest")
    if psf_fwhm_mm > 0:
        sigma_j = psf_fwhm_mm / 2.3548 / geometry.spacing_mm[1]
        sigma_i = psf_fwhm_mm / 2.3548 / geometry.spacing_mm[0]
        ndimage.gaussian_filter(hu, (0, sigma_j, sigma_i), output=hu, mode="nearest")
    if noise_hu > 0:
        for k0 in range(0, nk, slices_per_chunk):
            k1 = min(nk, k0 + slices_per_chunk)
            hu[k0:k1] += noise_hu * _gaussian_noise(rng, (k1 - k0, nj, ni), noise_correlation_px)
    return RenderedStudy(volume=volume, lesion_fractions=fractions)


# --------------------------------------------------------------------------------------
# Truth label maps (for training and scoring segmenters)
# --------------------------------------------------------------------------------------
#: Codes of `study_label_render`: the classes of `imaging.core.segmentation`.
LABEL_CODES = {"lung": 1, "liver": 2, "lung_lesion": 3, "liver_lesion": 4}
_ORGAN_OF_STRUCTURE = {"right_lung": "lung", "left_lung": "lung", "liver": "liver"}


def anatomy_label_render(
    *,
    anatomy: BodyAnatomy,
    geometry: ScanGeometry,
    pose_body_to_lps: np.ndarray,
    codes: dict[str, int] | None = None,
    slices_per_chunk: int = 16,
) -> np.ndarray:
    """Per-voxel organ codes ([k, j, i], uint8) of the anatomy as painted, without lesions.

    A voxel takes the code of the last structure, in paint order, whose surface holds
    its centre (the same rule as `anatomy_label`, so a structure painted over an organ
    hides it); ``codes`` maps organ names (``lung``, ``liver``) to codes, defaulting to
    `LABEL_CODES`; every other structure and air is 0. Structures are evaluated only in
    their bounding boxes, as in rendering.
    """
    codes = {k: v for k, v in (codes or LABEL_CODES).items() if k in ("lung", "liver")}
    pose = np.asarray(pose_body_to_lps, dtype=float)
    body_from_lps = np.linalg.inv(pose)
    ni, nj, nk = geometry.shape_ijk
    out = np.zeros((nk, nj, ni), dtype=np.uint8)
    spacing = np.asarray(geometry.spacing_mm)
    lps_from_body = pose
    index_from_body = (geometry.direction.T @ lps_from_body[:3, :3]) / spacing[:, None]
    index_offset = geometry.direction.T @ (lps_from_body[:3, 3] - geometry.origin_mm) / spacing
    body_from_index = body_from_lps[:3, :3] @ (geometry.direction * spacing[None, :])
    body_offset = body_from_lps[:3, :3] @ np.asarray(geometry.origin_mm) + body_from_lps[:3, 3]
    unit_box = np.array(np.meshgrid([0, 1], [0, 1], [0, 1], indexing="ij")).reshape(3, -1).T
    pad = 2.0 * float(np.max(spacing))
    structures = _anatomy_structures(anatomy)
    for k0 in range(0, nk, slices_per_chunk):
        k1 = min(nk, k0 + slices_per_chunk)
        corners = unit_box * [ni - 1, nj - 1, k1 - 1 - k0] + [0, 0, k0]
        chunk_z = (corners @ body_from_index.T + body_offset)[:, 2]
        for structure in structures:
            code = codes.get(_ORGAN_OF_STRUCTURE.get(structure.name, ""), 0)
            lo, hi = (np.array(b, dtype=float) for b in structure.bounds_mm)
            lo[2], hi[2] = max(lo[2], chunk_z.min()), min(hi[2], chunk_z.max())
            if lo[2] > hi[2] + pad:
                continue
            lo, hi = lo - pad, hi + pad
            box = (unit_box * (hi - lo) + lo) @ index_from_body.T + index_offset
            i0, j0, ka = np.maximum(np.floor(box.min(axis=0)).astype(int), [0, 0, k0])
            i1, j1, kb = np.minimum(np.ceil(box.max(axis=0)).astype(int) + 1, [ni, nj, k1])
            if i1 <= i0 or j1 <= j0 or kb <= ka:
                continue
            x, y, z = _body_coordinates(geometry, body_from_lps, (ka, kb, j0, j1, i0, i1))
            inside = structure.signed_distance(x, y, z) < 0
            out[ka:kb, j0:j1, i0:i1][inside] = code
    return out


@dataclass(frozen=True, eq=False)
class StudyLabels:
    """Exact truth on one grid: organ codes, lesion occupancy and lesion identities.

    ``label`` ([k, j, i], uint8, `LABEL_CODES`) is the organ code, overwritten by the
    lesion code of its organ where a lesion occupies at least half the voxel;
    ``lesion_fraction`` (float32, 0..1) is the summed occupancy of all lesions;
    ``lesion_index`` (uint16) is 1 + the position in ``lesion_ids`` of the lesion that
    occupies at least half the voxel (0 elsewhere); ``lesion_code`` (uint8) is the
    lesion code of the organ of the lesion that touches the voxel at all (0 elsewhere).
    """

    label: np.ndarray
    lesion_fraction: np.ndarray
    lesion_index: np.ndarray
    lesion_code: np.ndarray
    lesion_ids: tuple[str, ...]
    lesion_organs: tuple[str, ...]


def study_label_render(
    *,
    anatomy: BodyAnatomy,
    lesions: list[LesionAtStudy],
    lesion_organs: dict[str, str],
    geometry: ScanGeometry,
    pose_body_to_lps: np.ndarray,
) -> StudyLabels:
    """The truth label maps of a study on ``geometry`` (any grid: the scanner's or a model's).

    ``lesion_organs`` maps lesion ids to ``lung`` or ``liver``. Lesion occupancy is the
    exact partial-volume fraction of `lesion_fraction_render` (no blur, no noise).
    """
    label = anatomy_label_render(
        anatomy=anatomy, geometry=geometry, pose_body_to_lps=pose_body_to_lps
    )
    body_from_lps = np.linalg.inv(np.asarray(pose_body_to_lps, dtype=float))
    fraction = np.zeros(label.shape, dtype=np.float32)
    index = np.zeros(label.shape, dtype=np.uint16)
    code = np.zeros(label.shape, dtype=np.uint8)
    ids, organs = [], []
    for lesion in lesions:
        rendered = lesion_fraction_render(lesion, geometry, body_from_lps)
        if rendered is None:
            continue
        ids.append(lesion.lesion_id)
        organ = lesion_organs[lesion.lesion_id]
        organs.append(organ)
        k0, j0, i0 = rendered.start_kji
        nk_, nj_, ni_ = rendered.fraction.shape
        box = (slice(k0, k0 + nk_), slice(j0, j0 + nj_), slice(i0, i0 + ni_))
        fraction[box] += rendered.fraction
        core = rendered.fraction >= 0.5
        index[box][core] = len(ids)
        label[box][core] = LABEL_CODES[f"{organ}_lesion"]
        code[box][rendered.fraction > 0] = LABEL_CODES[f"{organ}_lesion"]
    np.clip(fraction, 0.0, 1.0, out=fraction)
    return StudyLabels(label, fraction, index, code, tuple(ids), tuple(organs))
