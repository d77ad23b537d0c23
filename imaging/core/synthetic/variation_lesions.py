"""Lesions of many kinds, anywhere in their organ, for training scenes (`variation`).

Lung nodules: solid, lobulated, spiculated, part-solid, ground-glass, cavitating and
calcified; liver lesions: hypodense, lobulated, rim-enhancing, cystic and hyperdense.
A lesion is a star-shaped `lesion_shape.LesionShape` (so its volume and centroid are
exact) with an inner structure: shells of the normalised radius ``t`` (0 at the
reference point, 1 on the surface, following the lobes) with their own CT numbers (a
solid core in ground glass, an air cavity, a calcified core, an enhancing rim), and
optionally spicules (thin strands beyond the surface that the truth leaves out, as a
radiologist's outline does).

Placement: in the parenchyma (the whole lesion inside the organ), subpleural or at the
liver's dome and edges (within a few millimetres of the organ's boundary), juxtavascular
(touching a vessel) or perihilar (near the hilum).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from imaging.core.geometry.triples import vec3
from imaging.core.synthetic.lesion_shape import (
    LesionShape,
    lesion_shape_sample,
    volume_for_diameter_ml,
)
from imaging.core.synthetic.phantom import LesionAtStudy
from imaging.core.synthetic.variation import Segment, TrainingScene, scene_label, scene_organ

LUNG_KINDS = ("solid", "lobulated", "spiculated", "part_solid", "ground_glass", "cavitating",
              "calcified")  # fmt: skip
LIVER_KINDS = ("hypodense", "lobulated", "rim_enhancing", "cystic", "hyperdense")
LUNG_PLACEMENTS = ("interior", "subpleural", "juxtavascular", "perihilar")
LIVER_PLACEMENTS = ("interior", "dome", "edge")
#: Structures a lesion's centre may not sit in (it would be a vessel, not a lesion).
_NOT_PARENCHYMA = ("lung_vessel", "bronchus", "bronchus_wall", "hepatic_vessel", "liver_cyst")


@dataclass(frozen=True)
class ProfiledLesion:
    """A lesion of a training scene: shape (base HU), volume, inner shells and spicules.

    ``shells`` are (t_low, t_high, HU) of the normalised radius; ``spicules`` thin
    strands painted with the base HU outside the truth.
    """

    lesion_id: str
    organ: str
    kind: str
    placement: str
    shape: LesionShape
    volume_ml: float
    shells: tuple[tuple[float, float, float], ...] = ()
    spicules: tuple[Segment, ...] = ()

    def at_study(self) -> LesionAtStudy:
        return LesionAtStudy(self.lesion_id, self.shape, self.volume_ml)

    def hu_at(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """CT number inside the lesion at scene points (the base HU where no shell applies)."""
        hu = np.full(x.shape, self.shape.hu, dtype=np.float32)
        if not self.shells:
            return hu
        scale = self.shape.scale_for_volume_mm(self.volume_ml)
        ref = self.shape.reference_point_body_mm(self.volume_ml)
        rel = np.stack([x - ref[0], y - ref[1], z - ref[2]], axis=-1)
        dist = np.linalg.norm(rel, axis=-1)
        t = dist / (scale * self.shape.rho(rel / np.maximum(dist, 1e-9)[..., None]))
        for low, high, value in self.shells:
            hu[(t >= low) & (t < high)] = value
        return hu


# --------------------------------------------------------------------------- kinds
def _lung_kind(kind: str, rng: np.random.Generator):
    """(base HU, shells, irregular, spiculated) of a lung nodule kind."""
    solid = float(rng.uniform(0.0, 60.0))
    table = {
        "solid": (solid, (), False, False),
        "lobulated": (solid, (), True, False),
        "spiculated": (solid, (), bool(rng.random() < 0.5), True),
        "part_solid": (float(rng.uniform(-650, -420)), ((0.0, float(rng.uniform(0.3, 0.6)), solid),),
                       bool(rng.random() < 0.4), False),
        "ground_glass": (float(rng.uniform(-700, -400)), (), bool(rng.random() < 0.4), False),
        "cavitating": (solid, ((0.0, float(rng.uniform(0.3, 0.55)), float(rng.uniform(-960, -850))),),
                       bool(rng.random() < 0.5), False),
        "calcified": (solid, ((0.0, float(rng.uniform(0.3, 1.01)), float(rng.uniform(250, 900))),),
                      False, False),
    }  # fmt: skip
    return table[kind]


def _liver_kind(kind: str, liver_hu: float, rng: np.random.Generator):
    """(base HU, shells, irregular, spiculated) of a liver lesion kind.

    Contrast reaches down to near-isodense (a hypodense lesion 12 HU under the liver, a rim
    5 HU under it): subtle metastases in an enhanced liver are where a detector trained
    on conspicuous ones goes blind.
    """
    low = liver_hu - float(rng.uniform(12.0, 60.0))
    table = {
        "hypodense": (low, (), False, False),
        "lobulated": (low, (), True, False),
        "rim_enhancing": (liver_hu - float(rng.uniform(18, 70)),
                          ((float(rng.uniform(0.7, 0.85)), 1.01, liver_hu + float(rng.uniform(-5, 60))),),
                          bool(rng.random() < 0.5), False),
        "cystic": (float(rng.uniform(0.0, 20.0)),
                   ((float(rng.uniform(0.65, 0.8)), 1.01, liver_hu - float(rng.uniform(0.0, 25.0))),),
                   bool(rng.random() < 0.5), False),
        "hyperdense": (liver_hu + float(rng.uniform(25.0, 60.0)), (), bool(rng.random() < 0.3), False),
    }  # fmt: skip
    return table[kind]


def _diameter_mm(organ: str, rng: np.random.Generator) -> float:
    """Equivalent diameter: mostly 4-20 mm (the hard sizes), log-uniform up to 32 / 45 mm."""
    top = 32.0 if organ == "lung" else 45.0
    if rng.random() < 0.7:
        return float(np.exp(rng.uniform(np.log(4.0), np.log(20.0))))
    return float(np.exp(rng.uniform(np.log(3.0), np.log(top))))


def _spicules(shape: LesionShape, volume_ml: float, rng: np.random.Generator):
    scale = shape.scale_for_volume_mm(volume_ml)
    ref = shape.reference_point_body_mm(volume_ml)
    out = []
    for _ in range(int(rng.integers(5, 13))):
        u = rng.normal(size=3)
        u /= np.linalg.norm(u)
        start = ref + u * scale * float(shape.rho(u[None])[0]) * 0.85
        end = start + u * float(rng.uniform(3.0, 6.0 + 0.6 * scale))
        out.append(Segment(vec3(start), vec3(end), float(rng.uniform(0.35, 0.9))))
    return tuple(out)


# --------------------------------------------------------------------------- placement
def _fibonacci_ball(n_shell: int = 120) -> np.ndarray:
    i = np.arange(n_shell) + 0.5
    polar = np.arccos(1.0 - 2.0 * i / n_shell)
    azimuth = np.pi * (1.0 + 5.0**0.5) * i
    shell = np.stack([np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar),
                      np.cos(polar)], axis=1)  # fmt: skip
    return np.concatenate([np.zeros((1, 3)), 0.5 * shell[::3], shell])


_BALL = _fibonacci_ball()


def _ball_in_organ(scene: TrainingScene, centre: np.ndarray, radius: float, organ: str) -> bool:
    return bool(np.all(scene_organ(scene, centre + radius * _BALL) == organ))


def _warp_inverse(scene: TrainingScene, points: np.ndarray) -> np.ndarray:
    """Scene points that show the given undeformed-anatomy points (fixed-point iteration)."""
    q = np.atleast_2d(np.asarray(points, dtype=float))
    p = q.copy()
    for _ in range(12):
        x, y, z = scene.warp.apply(p[:, 0], p[:, 1], p[:, 2])
        p = q - (np.stack([x, y, z], axis=1) - p)
    return p


def _candidate_centres(scene, organ, placement, reach, rng, n=60) -> np.ndarray:
    """Scene points where a lesion of this placement might go (checked afterwards)."""
    anatomy, extras = scene.anatomy, scene.extras
    if placement == "juxtavascular" and extras.lung_vessels:
        segs = [extras.lung_vessels[i] for i in rng.integers(len(extras.lung_vessels), size=n)]
        points = []
        for s in segs:
            p0, p1 = np.asarray(s.start_mm), np.asarray(s.end_mm)
            axis = (p1 - p0) / max(np.linalg.norm(p1 - p0), 1e-6)
            off = rng.normal(size=3)
            off -= (off @ axis) * axis
            off /= max(np.linalg.norm(off), 1e-6)
            base = p0 + rng.random() * (p1 - p0)
            points.append(base + off * (s.radius_mm + reach * rng.uniform(0.6, 1.0)))
        return _warp_inverse(scene, np.array(points))
    if placement == "perihilar" and extras.hila_mm:
        hila = np.asarray(extras.hila_mm)[rng.integers(len(extras.hila_mm), size=n)]
        d = rng.normal(size=(n, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        return _warp_inverse(scene, hila + d * (reach + rng.uniform(8.0, 35.0, (n, 1))))
    organs = [anatomy.liver] if organ == "liver" else [anatomy.right_lung, anatomy.left_lung]
    chosen = [organs[i] for i in rng.integers(len(organs), size=n)]
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    radius = rng.random((n, 1)) ** (1 / 3)
    if placement == "dome":
        d[:, 2] = np.abs(d[:, 2]) + 0.8
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        radius = rng.uniform(0.6, 1.0, (n, 1))
    elif placement in ("subpleural", "edge"):
        radius = rng.uniform(0.65, 1.0, (n, 1))
    centres = np.array([e.centre_mm for e in chosen])
    axes = np.array([e.semi_axes_mm for e in chosen])
    return _warp_inverse(scene, centres + axes * d * radius)


def _placed_ok(scene, centre, organ, placement, reach, placed) -> bool:
    for other, r in placed:
        if np.linalg.norm(centre - other) < reach + r + 3.0:
            return False
    if scene_organ(scene, centre)[0] != organ or scene_label(scene, centre)[0] in _NOT_PARENCHYMA:
        return False
    if placement in ("subpleural", "edge", "dome"):
        return _ball_in_organ(scene, centre, reach + 0.5, organ) and not _ball_in_organ(
            scene, centre, reach + 4.0, organ
        )
    if placement == "juxtavascular":  # touches a vessel: its ball holds the organ only
        return _ball_in_organ(scene, centre, 0.6 * reach, organ)
    return _ball_in_organ(scene, centre, reach + 1.5, organ)


def lesion_draw(
    scene: TrainingScene,
    rng: np.random.Generator,
    *,
    lesion_id: str,
    organ: str,
    placed: list[tuple[np.ndarray, float]],
) -> ProfiledLesion | None:
    """One lesion of a random kind, size and placement, or None when nothing fits."""
    kinds = LUNG_KINDS if organ == "lung" else LIVER_KINDS
    placements = LUNG_PLACEMENTS if organ == "lung" else LIVER_PLACEMENTS
    kind = str(rng.choice(kinds))
    placement = str(rng.choice(placements))
    if organ == "lung":
        hu, shells, irregular, spiculated = _lung_kind(kind, rng)
    else:
        hu, shells, irregular, spiculated = _liver_kind(kind, scene.anatomy.liver_hu, rng)
    shape = lesion_shape_sample(rng, centre_body_mm=np.zeros(3), hu=hu, irregular=irregular)
    volume = volume_for_diameter_ml(_diameter_mm(organ, rng))
    for _ in range(4):
        reach = shape.bounding_radius_mm(volume)
        for centre in _candidate_centres(scene, organ, placement, reach, rng):
            if _placed_ok(scene, centre, organ, placement, reach, placed):
                shape = LesionShape(vec3(centre), shape.hu, shape.lobe_directions,
                                    shape.lobe_amplitudes, shape.lobe_sharpness)  # fmt: skip
                placed.append((centre, reach))
                return ProfiledLesion(
                    lesion_id, organ, kind, placement, shape, volume, shells,
                    _spicules(shape, volume, rng) if spiculated else (),
                )  # fmt: skip
        volume *= 0.5
    return None


def lesions_draw(scene: TrainingScene, rng: np.random.Generator) -> tuple[ProfiledLesion, ...]:
    """One to four lung nodules and one to three liver lesions (those that find room)."""
    placed: list[tuple[np.ndarray, float]] = []
    lesions = []
    organs = ["lung"] * int(rng.integers(1, 5)) + ["liver"] * int(rng.integers(1, 4))
    for number, organ in enumerate(organs, start=1):
        lesion = lesion_draw(scene, rng, lesion_id=f"V{number:02d}", organ=organ, placed=placed)
        if lesion is not None:
            lesions.append(lesion)
    return tuple(lesions)
