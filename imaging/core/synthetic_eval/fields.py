"""Implicit shapes of the evaluation generator: approximate signed distances in mm.

Every field is negative inside, positive outside and close to the distance from the
surface near it (enough to anti-alias edges over one voxel). A `Part` is one painted
structure: a field, its CT number (a constant or a function of position), the organ it
counts as in the truth, and a bounding box in the reference frame.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from imaging.core.geometry.triples import vec3

Field = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
HuFunction = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
Box = tuple[tuple[float, float, float], tuple[float, float, float]]


@dataclass(frozen=True, eq=False)
class Part:
    """One structure: name, field, HU (constant or callable), organ and side, box (mm)."""

    name: str
    field: Field
    hu: float | HuFunction
    box: Box
    organ: str = ""
    side: str = ""

    def hu_at(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray | float:
        return self.hu(x, y, z) if callable(self.hu) else self.hu


def box_of(centre, half) -> Box:
    c, h = np.asarray(centre, float), np.asarray(half, float)
    return vec3(c - h), vec3(c + h)


def rotation_zyx(yaw: float, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """Rotation about z (yaw), then y (pitch), then x (roll), radians."""
    cz, sz, cy, sy, cx, sx = (np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch),
                              np.cos(roll), np.sin(roll))  # fmt: skip
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return rz @ ry @ rx


def ellipsoid(centre, semi_axes, rotation: np.ndarray | None = None) -> Field:
    """A (possibly rotated) ellipsoid; distance scaled by the smallest semi-axis."""
    c = np.asarray(centre, float)
    a = np.asarray(semi_axes, float)
    r = np.eye(3) if rotation is None else np.asarray(rotation, float)
    scale = float(a.min())
    m = (r.T / a[:, None]).tolist()  # local = R^T (p - c), then / a

    def field(x, y, z):
        dx, dy, dz = x - c[0], y - c[1], z - c[2]
        u = m[0][0] * dx + m[0][1] * dy + m[0][2] * dz
        v = m[1][0] * dx + m[1][1] * dy + m[1][2] * dz
        w = m[2][0] * dx + m[2][1] * dy + m[2][2] * dz
        return (np.sqrt(u * u + v * v + w * w) - 1.0) * scale

    return field


def capsule(p0, p1, radius: float) -> Field:
    """A tube of ``radius`` from ``p0`` to ``p1`` with round ends."""
    a = np.asarray(p0, float)
    d = np.asarray(p1, float) - a
    length2 = float(d @ d) or 1e-9
    ax, ay, az = a.tolist()
    dx_, dy_, dz_ = d.tolist()

    def field(x, y, z):
        px, py, pz = x - ax, y - ay, z - az
        t = np.clip((px * dx_ + py * dy_ + pz * dz_) / length2, 0.0, 1.0)
        return np.sqrt((px - t * dx_) ** 2 + (py - t * dy_) ** 2 + (pz - t * dz_) ** 2) - radius

    return field


def capsule_box(p0, p1, radius: float) -> Box:
    lo = np.minimum(p0, p1) - radius - 2.0
    hi = np.maximum(p0, p1) + radius + 2.0
    return vec3(lo), vec3(hi)


def rounded_box(centre, half, radius: float) -> Field:
    """An axis-aligned box with edges rounded by ``radius`` (exact signed distance)."""
    c = np.asarray(centre, float).tolist()
    h = (np.asarray(half, float) - radius).tolist()

    def field(x, y, z):
        qx = np.abs(x - c[0]) - h[0]
        qy = np.abs(y - c[1]) - h[1]
        qz = np.abs(z - c[2]) - h[2]
        outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2 + np.maximum(qz, 0) ** 2)
        inside = np.minimum(np.maximum(qx, np.maximum(qy, qz)), 0.0)
        return outside + inside - radius

    return field


def superellipse_2d(x: np.ndarray, y: np.ndarray, a, b, n: float) -> np.ndarray:
    """Approximate signed distance (mm) to |x/a|^n + |y/b|^n = 1 (``a``, ``b`` may vary)."""
    rho = (np.abs(x / a) ** n + np.abs(y / b) ** n) ** (1.0 / n)
    return (rho - 1.0) * np.minimum(a, b)


def intersect(*fields: Field) -> Field:
    def field(x, y, z):
        out = fields[0](x, y, z)
        for f in fields[1:]:
            out = np.maximum(out, f(x, y, z))
        return out

    return field


def subtract(base: Field, cut: Field) -> Field:
    return lambda x, y, z: np.maximum(base(x, y, z), -cut(x, y, z))


def union(*fields: Field) -> Field:
    def field(x, y, z):
        out = fields[0](x, y, z)
        for f in fields[1:]:
            out = np.minimum(out, f(x, y, z))
        return out

    return field


def near_only(inner: Field, container: Field, reach_mm: float = 3.0) -> Field:
    """``inner`` cut to ``container``, which is evaluated only where ``inner`` is near."""

    def field(x, y, z):
        out = inner(x, y, z)
        near = out < reach_mm
        if near.any():
            out[near] = np.maximum(out[near], container(x[near], y[near], z[near]))
        return out

    return field
