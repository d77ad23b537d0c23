"""Lesion shapes with exact volume and centroid: spheres, or smooth lobulated star shapes.

Lesions are star-shaped: the surface, about a reference point, is at radius
``R * rho(u)`` in unit direction ``u``, with ``rho(u) = 1 + sum_n c_n exp(kappa_n (u.d_n - 1))``
(a sphere when there are no lobes). The exact volume is ``R^3 / 3 * integral rho^3 dOmega``
and the centroid ``R / 4 * integral rho^4 u dOmega / volume``, both integrated by
Gauss-Legendre x trapezoid quadrature, which converges spectrally for this smooth
integrand. A lesion's *centre* is its exact centroid; it grows or shrinks about it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from imaging.core.geometry.triples import vec3

_QUADRATURE_POLAR = 64
_QUADRATURE_AZIMUTH = 128


def sphere_quadrature(n_polar: int, n_azimuth: int) -> tuple[np.ndarray, np.ndarray]:
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
    return sphere_quadrature(n_polar, n_azimuth)


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
    return volume, vec3(centroid), float(rho_max), float(lipschitz)


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
        return LesionShape(vec3(centre_body_mm), float(hu))
    n = int(rng.integers(3, 7))
    directions = rng.normal(size=(n, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return LesionShape(
        centre_body_mm=vec3(centre_body_mm),
        hu=float(hu),
        lobe_directions=tuple(vec3(d) for d in directions),
        lobe_amplitudes=tuple(float(v) for v in rng.uniform(0.12, 0.4, size=n)),
        lobe_sharpness=tuple(float(v) for v in rng.uniform(3.0, 9.0, size=n)),
    )
