"""Wider anatomical variation for training the segmenter: warped anatomy and extra structures.

A `TrainingScene` is one phantom patient (`anatomy.anatomy_sample`, with organ sizes and
positions spread further) seen through a smooth random warp of the whole body (an
elastic deformation: organ shapes and positions change together, as between patients),
with structures the cohort's phantom leaves out: branching pulmonary vessels and
bronchi, hepatic vessels, simple liver cysts and bowel gas. Vessels, bronchi, ribs and
cysts are the hard negatives a lesion detector must learn to leave alone. Lesions are
placed in the scene's (warped) frame (`variation_lesions`); rendering is in
`variation_render`. Used for training only: the evaluation generator
(`imaging.core.synthetic_eval`) is written separately and shares none of this.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from imaging.core.geometry.triples import vec3
from imaging.core.synthetic.anatomy import HU_AIR, BodyAnatomy, Ellipsoid, anatomy_sample
from imaging.core.synthetic.anatomy_structures import (
    AnatomyStructure,
    SignedDistance,
    anatomy_structures,
)

#: Organ of each structure name, for the truth labels (vessels and bronchi inside the
#: lung count as lung, as lung masks include them; hepatic vessels and cysts as liver).
ORGAN_OF_STRUCTURE = {
    "right_lung": "lung",
    "left_lung": "lung",
    "lung_vessel": "lung",
    "bronchus_wall": "lung",
    "bronchus": "lung",
    "liver": "liver",
    "hepatic_vessel": "liver",
    "liver_cyst": "liver",
}


# --------------------------------------------------------------------------- the warp
@dataclass(frozen=True, eq=False)
class Warp:
    """A smooth displacement ``u(p) = sum_k a_k sin(2 pi f_k . p + phi_k)`` (mm).

    A scene point ``p`` shows what the undeformed anatomy holds at ``p + u(p)``. The
    gradient is bounded by ``sum_k 2 pi |f_k| |a_k|`` (kept below 0.5), so the warp is
    invertible and folds nothing.
    """

    frequencies: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    amplitudes: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    phases: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def reach_mm(self) -> float:
        """The largest displacement anywhere."""
        return float(np.linalg.norm(self.amplitudes, axis=1).sum()) if len(self.phases) else 0.0

    def apply(
        self, x: np.ndarray, y: np.ndarray, z: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``p + u(p)`` for body-frame coordinates (any broadcastable shapes)."""
        if not len(self.phases):
            return x, y, z
        ox, oy, oz = x.copy(), y.copy(), z.copy()
        # Python floats keep float32 coordinates float32 (NumPy scalars would promote).
        for f, a, phi in zip(self.frequencies.tolist(), self.amplitudes.tolist(),
                             self.phases.tolist(), strict=True):  # fmt: skip
            tau = 2 * np.pi
            s = np.sin(tau * f[0] * x + tau * f[1] * y + tau * f[2] * z + phi)
            ox += a[0] * s
            oy += a[1] * s
            oz += a[2] * s
        return ox, oy, oz


def warp_sample(rng: np.random.Generator, *, max_mm: float = 14.0) -> Warp:
    """Five modes of 150-450 mm wavelength; displacement up to ``max_mm``, gradient < 0.5."""
    n = 5
    wavelengths = rng.uniform(150.0, 450.0, size=n)
    directions = rng.normal(size=(n, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    frequencies = directions / wavelengths[:, None]
    amplitudes = rng.normal(size=(n, 3))
    amplitudes *= rng.uniform(0.0, max_mm) / np.linalg.norm(amplitudes, axis=1).sum()
    gradient = float((2 * np.pi * np.linalg.norm(frequencies, axis=1)
                      * np.linalg.norm(amplitudes, axis=1)).sum())  # fmt: skip
    if gradient > 0.5:
        amplitudes *= 0.5 / gradient
    return Warp(frequencies, amplitudes, rng.uniform(0.0, 2 * np.pi, size=n))


def structure_warp(structure: AnatomyStructure, warp: Warp) -> AnatomyStructure:
    """The structure seen through ``warp`` (bounds grown by its reach)."""
    if warp.reach_mm == 0.0:
        return structure
    inner = structure.signed_distance

    def sd(x, y, z):
        return inner(*warp.apply(x, y, z))

    pad = warp.reach_mm + 1.0
    lo, hi = structure.bounds_mm
    bounds = (vec3(v - pad for v in lo), vec3(v + pad for v in hi))
    return AnatomyStructure(structure.name, structure.hu, sd, bounds)


# --------------------------------------------------------------------------- anatomy
def _ellipsoid_jitter(e: Ellipsoid, rng: np.random.Generator, scale: float, shift_mm: float):
    centre = np.asarray(e.centre_mm) + rng.normal(0.0, shift_mm, 3)
    axes = np.asarray(e.semi_axes_mm) * rng.uniform(1 - scale, 1 + scale, 3)
    return Ellipsoid(vec3(centre), vec3(axes))


def anatomy_vary(rng: np.random.Generator) -> BodyAnatomy:
    """A phantom trunk with body size, organ sizes and positions spread wider than the cohort's."""
    base = anatomy_sample(rng)
    ax, ay = base.body_semi_axes_mm
    body = (ax * float(rng.uniform(0.85, 1.15)), ay * float(rng.uniform(0.85, 1.15)))
    organs = {
        name: _ellipsoid_jitter(getattr(base, name), rng, scale, shift)
        for name, scale, shift in (
            ("right_lung", 0.12, 6.0),
            ("left_lung", 0.12, 6.0),
            ("heart", 0.15, 6.0),
            ("liver", 0.15, 8.0),
            ("spleen", 0.2, 6.0),
            ("right_kidney", 0.15, 6.0),
            ("left_kidney", 0.15, 6.0),
        )
    }
    return replace(
        base,
        body_semi_axes_mm=body,
        fat_thickness_mm=float(rng.uniform(4.0, 35.0)),
        # A fatty liver reads 30-45 HU unenhanced (steatosis is common after chemotherapy);
        # a normal one 50-65, and up to 110 in the portal venous phase.
        liver_hu=float(rng.uniform(30.0, 110.0)),
        **organs,
    )


# --------------------------------------------------------------------------- extra structures
def capsule_distance(p0: np.ndarray, p1: np.ndarray, radius: float) -> SignedDistance:
    """Signed distance (mm) to a round-ended tube from ``p0`` to ``p1``."""
    axis = p1 - p0
    length2 = float(axis @ axis)

    def sd(x, y, z):
        dx, dy, dz = x - p0[0], y - p0[1], z - p0[2]
        t = np.clip((dx * axis[0] + dy * axis[1] + dz * axis[2]) / length2, 0.0, 1.0)
        return (
            np.sqrt((dx - t * axis[0]) ** 2 + (dy - t * axis[1]) ** 2 + (dz - t * axis[2]) ** 2)
            - radius
        )

    return sd


def _clipped(sd: SignedDistance, container: SignedDistance) -> SignedDistance:
    """``sd`` cut to inside ``container``; the container is only evaluated near ``sd``'s
    inside (anti-aliasing needs no more), which keeps thin tubes cheap."""

    def clipped(x, y, z):
        out = sd(x, y, z)
        near = out < 3.0
        if near.any():
            out[near] = np.maximum(out[near], container(x[near], y[near], z[near]))
        return out

    return clipped


def _capsule_bounds(p0: np.ndarray, p1: np.ndarray, radius: float):
    lo = np.minimum(p0, p1) - radius - 1.0
    hi = np.maximum(p0, p1) + radius + 1.0
    return tuple(float(v) for v in lo), tuple(float(v) for v in hi)


def _perpendicular_turn(direction: np.ndarray, angle: float, rng: np.random.Generator):
    other = rng.normal(size=3)
    other -= (other @ direction) * direction
    other /= np.linalg.norm(other)
    turned = np.cos(angle) * direction + np.sin(angle) * other
    return turned / np.linalg.norm(turned)


@dataclass(frozen=True)
class Segment:
    """One tube of a branching tree (body frame, mm)."""

    start_mm: tuple[float, float, float]
    end_mm: tuple[float, float, float]
    radius_mm: float


def tree_grow(
    rng: np.random.Generator,
    *,
    root: np.ndarray,
    direction: np.ndarray,
    length_mm: float,
    radius_mm: float,
    depth: int,
) -> list[Segment]:
    """A binary tree of tubes: each child 20-45 degrees off its parent, shorter and thinner."""
    segments: list[Segment] = []
    stack = [(np.asarray(root, float), np.asarray(direction, float), length_mm, radius_mm, 0)]
    while stack:
        start, d, length, radius, level = stack.pop()
        end = start + d * length
        segments.append(Segment(tuple(start), tuple(end), radius))
        if level + 1 >= depth or radius < 0.8:
            continue
        for _ in range(2):
            child = _perpendicular_turn(d, float(rng.uniform(0.35, 0.8)), rng)
            stack.append(
                (end, child, length * float(rng.uniform(0.65, 0.9)),
                 radius * float(rng.uniform(0.62, 0.8)), level + 1)
            )  # fmt: skip
    return segments


@dataclass(frozen=True, eq=False)
class SceneExtras:
    """What the scene adds to the phantom (body frame, before the warp)."""

    lung_vessels: tuple[Segment, ...]
    bronchi: tuple[Segment, ...]
    hepatic_vessels: tuple[Segment, ...]
    liver_cysts: tuple[Ellipsoid, ...]
    bowel_gas: tuple[Ellipsoid, ...]
    vessel_hu: float
    hepatic_vessel_hu: float
    cyst_hu: float
    hila_mm: tuple[tuple[float, float, float], ...]
    #: Lung parenchyma: its CT number (inspiration depth, emphysema, dependent density)
    #: and how much denser the dependent side is (signed: + posterior, lying supine).
    lung_hu: float = -850.0
    lung_gradient_hu: float = 0.0


def _hilum(lung: Ellipsoid, side: float, rng: np.random.Generator) -> np.ndarray:
    (cx, cy, cz), (ax, _, _) = lung.centre_mm, lung.semi_axes_mm
    return np.array([cx - side * 0.55 * ax, cy + rng.uniform(-5, 10), cz + rng.uniform(-25, 10)])


def _lung_trees(anatomy: BodyAnatomy, rng: np.random.Generator):
    vessels: list[Segment] = []
    bronchi: list[Segment] = []
    hila = []
    for lung, side in ((anatomy.right_lung, -1.0), (anatomy.left_lung, 1.0)):
        hilum = _hilum(lung, side, rng)
        hila.append(tuple(float(v) for v in hilum))
        for _ in range(3):  # upper, middle, lower trunks
            d = np.array([side * rng.uniform(0.3, 1.0), rng.uniform(-0.5, 0.5),
                          rng.uniform(-1.0, 1.0)])  # fmt: skip
            d /= np.linalg.norm(d)
            vessels += tree_grow(rng, root=hilum, direction=d, length_mm=rng.uniform(28, 45),
                                 radius_mm=rng.uniform(3.0, 5.5), depth=5)  # fmt: skip
        for _ in range(2):
            d = np.array([side * rng.uniform(0.3, 1.0), rng.uniform(-0.3, 0.5),
                          rng.uniform(-1.0, 0.6)])  # fmt: skip
            d /= np.linalg.norm(d)
            bronchi += tree_grow(rng, root=hilum + [0, 6.0, 0], direction=d,
                                 length_mm=rng.uniform(25, 40), radius_mm=rng.uniform(3.5, 6.0),
                                 depth=3)  # fmt: skip
    return vessels, bronchi, hila


def _random_inside(e: Ellipsoid, rng: np.random.Generator, shrink: float) -> np.ndarray:
    d = rng.normal(size=3)
    d /= np.linalg.norm(d)
    return np.asarray(e.centre_mm) + np.asarray(e.semi_axes_mm) * shrink * d * rng.random() ** (
        1 / 3
    )


def extras_sample(anatomy: BodyAnatomy, rng: np.random.Generator) -> SceneExtras:
    """Vessel and bronchial trees, hepatic vessels, 0-3 liver cysts and 0-4 pockets of bowel gas."""
    vessels, bronchi, hila = _lung_trees(anatomy, rng)
    liver = anatomy.liver
    porta = np.asarray(liver.centre_mm) + [
        0.4 * liver.semi_axes_mm[0],
        0.2 * liver.semi_axes_mm[1],
        -10.0,
    ]
    hepatic: list[Segment] = []
    for _ in range(3):
        d = rng.normal(size=3) * [1.0, 0.6, 0.8] - [0.7, 0.0, 0.0]
        d /= np.linalg.norm(d)
        hepatic += tree_grow(rng, root=porta, direction=d, length_mm=rng.uniform(30, 50),
                             radius_mm=rng.uniform(3.0, 6.0), depth=4)  # fmt: skip
    cysts = []
    for _ in range(int(rng.integers(0, 4))):
        r = float(rng.uniform(3.0, 12.0))
        centre = _random_inside(liver, rng, 0.75)
        cysts.append(Ellipsoid(vec3(centre), (r, r * float(rng.uniform(0.85, 1.15)), r)))
    gas = []
    for _ in range(int(rng.integers(0, 5))):
        centre = np.array([rng.uniform(-0.5, 0.6) * anatomy.body_semi_axes_mm[0],
                           rng.uniform(-0.6, 0.2) * anatomy.body_semi_axes_mm[1],
                           rng.uniform(-170.0, -110.0)])  # fmt: skip
        gas.append(Ellipsoid(vec3(centre), vec3(rng.uniform(5.0, 22.0, 3))))
    contrast = rng.random() < 0.7
    return SceneExtras(
        lung_vessels=tuple(vessels),
        bronchi=tuple(bronchi),
        hepatic_vessels=tuple(hepatic),
        liver_cysts=tuple(cysts),
        bowel_gas=tuple(gas),
        vessel_hu=float(rng.uniform(120.0, 300.0) if contrast else rng.uniform(30.0, 55.0)),
        hepatic_vessel_hu=float(
            anatomy.liver_hu + (rng.uniform(20, 70) if contrast else rng.uniform(-25, -5))
        ),  # fmt: skip
        cyst_hu=float(rng.uniform(-5.0, 15.0)),
        hila_mm=tuple(hila),
        lung_hu=float(rng.uniform(-920.0, -760.0)),
        lung_gradient_hu=float(rng.uniform(0.0, 60.0) * rng.choice([-1.0, 1.0])),
    )


# --------------------------------------------------------------------------- the scene
@dataclass(frozen=True, eq=False)
class TrainingScene:
    """A varied phantom: anatomy, extras and warp; ``base_structures`` in paint order as
    drawn, ``structures`` the same seen through the warp (what the scene shows)."""

    anatomy: BodyAnatomy
    extras: SceneExtras
    warp: Warp
    base_structures: tuple[AnatomyStructure, ...]
    structures: tuple[AnatomyStructure, ...]


def _tube_structures(name, hu, segments, container) -> list[AnatomyStructure]:
    out = []
    for s in segments:
        p0, p1 = np.asarray(s.start_mm), np.asarray(s.end_mm)
        sd = capsule_distance(p0, p1, s.radius_mm)
        out.append(AnatomyStructure(name, hu, _clipped(sd, container) if container else sd,
                                    _capsule_bounds(p0, p1, s.radius_mm)))  # fmt: skip
    return out


def _extra_structures(base: dict[str, AnatomyStructure], extras: SceneExtras):
    """Extra structures keyed by the base structure they are painted after."""
    lungs = [base["right_lung"].signed_distance, base["left_lung"].signed_distance]

    def in_lungs(x, y, z):
        return np.minimum(lungs[0](x, y, z), lungs[1](x, y, z))

    liver = base["liver"].signed_distance
    abdomen = base["abdomen"].signed_distance
    walls = [Segment(s.start_mm, s.end_mm, s.radius_mm + 1.2) for s in extras.bronchi]
    return {
        "left_lung": [
            *_tube_structures("lung_vessel", extras.vessel_hu, extras.lung_vessels, in_lungs),
            *_tube_structures("bronchus_wall", 30.0, walls, in_lungs),
            *_tube_structures("bronchus", HU_AIR, extras.bronchi, in_lungs),
        ],
        "liver": [
            *_tube_structures(
                "hepatic_vessel", extras.hepatic_vessel_hu, extras.hepatic_vessels, liver
            ),  # fmt: skip
            *[
                AnatomyStructure(
                    "liver_cyst",
                    extras.cyst_hu,
                    _clipped(c.signed_distance_mm, liver),
                    (
                        tuple(np.subtract(c.centre_mm, c.semi_axes_mm)),
                        tuple(np.add(c.centre_mm, c.semi_axes_mm)),
                    ),
                )  # fmt: skip
                for c in extras.liver_cysts
            ],
        ],
        "abdomen": [
            AnatomyStructure(
                "bowel_gas",
                HU_AIR,
                _clipped(g.signed_distance_mm, abdomen),
                (
                    tuple(np.subtract(g.centre_mm, g.semi_axes_mm)),
                    tuple(np.add(g.centre_mm, g.semi_axes_mm)),
                ),
            )  # fmt: skip
            for g in extras.bowel_gas
        ],
    }


def scene_sample(rng: np.random.Generator, *, plain: bool = False) -> TrainingScene:
    """A varied scene; ``plain`` gives the cohort's phantom as it is (no warp, no extras)."""
    if plain:
        anatomy = anatomy_sample(rng)
        extras = SceneExtras((), (), (), (), (), 0.0, 0.0, 0.0, ())
        structures = tuple(anatomy_structures(anatomy))
        return TrainingScene(anatomy, extras, Warp(), structures, structures)
    anatomy = anatomy_vary(rng)
    extras = extras_sample(anatomy, rng)
    warp = warp_sample(rng)
    base = anatomy_structures(anatomy)
    by_name = {s.name: s for s in base}
    after = _extra_structures(by_name, extras)
    ordered: list[AnatomyStructure] = []
    for structure in base:
        ordered.append(structure)
        ordered += after.pop(structure.name, [])
    return TrainingScene(
        anatomy, extras, warp, tuple(ordered), tuple(structure_warp(s, warp) for s in ordered)
    )


def scene_label(scene: TrainingScene, points_mm: np.ndarray) -> np.ndarray:
    """Name of the visible structure at scene points (N, 3) ('air' outside the body)."""
    points = np.atleast_2d(np.asarray(points_mm, dtype=float))
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    labels = np.full(len(points), "air", dtype=object)
    for structure in scene.structures:
        (lo, hi) = structure.bounds_mm
        near = np.all((points >= np.asarray(lo)) & (points <= np.asarray(hi)), axis=1)
        if not near.any():
            continue
        inside = np.zeros(len(points), dtype=bool)
        inside[near] = structure.signed_distance(x[near], y[near], z[near]) < 0
        labels[inside] = structure.name
    return labels


def scene_organ(scene: TrainingScene, points_mm: np.ndarray) -> np.ndarray:
    """Organ ('lung', 'liver' or '') at scene points (N, 3), as the truth labels count it."""
    names = scene_label(scene, points_mm)
    return np.array([ORGAN_OF_STRUCTURE.get(n, "") for n in names], dtype=object)
