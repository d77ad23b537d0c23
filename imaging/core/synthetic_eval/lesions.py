"""The evaluation generator's lesions: its own shapes, kinds and placements, and simple cysts.

Shapes are smooth unions of spheres (``-k log sum exp(-(|q - c_i| - r_i) / k)``): one
sphere for a round lesion, several for a lobulated one. Lung nodules: solid, lobulated,
spiculated (thin strands beyond the outline, not part of the truth), part-solid (an
eccentric solid core in ground glass), ground-glass (a soft 2 mm edge), cavitating (an
eccentric air cavity, part of the lesion) and calcified (popcorn calcifications);
liver lesions: hypodense, rim-enhancing and cystic metastases, whose contrast follows
the study's contrast phase. Simple liver cysts are drawn as negatives: water-dense,
round and sharp; a detection on one is a false positive. Placements: lung parenchyma,
subpleural, juxtavascular, perihilar, apex and base; liver parenchyma, dome and edge.
A lesion grows or shrinks between studies by scaling about its centre.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from imaging.core.geometry.triples import vec3
from imaging.core.synthetic_eval.anatomy import EvalAnatomy, StudyState
from imaging.core.synthetic_eval.fields import Part, capsule, capsule_box

LUNG_KINDS = ("solid", "lobulated", "spiculated", "part_solid", "ground_glass", "cavitating",
              "calcified")  # fmt: skip
LIVER_KINDS = ("hypodense", "rim_enhancing", "cystic")
LUNG_PLACES = ("parenchyma", "subpleural", "juxtavascular", "perihilar", "apex", "base")
LIVER_PLACES = ("parenchyma", "dome", "edge")


@dataclass(frozen=True)
class EvalLesion:
    """A lesion (or, with ``negative``, a simple cyst) in the reference frame.

    ``spheres`` are (centre offset from ``centre``, radius) in mm at scale 1;
    ``scale`` multiplies offsets and radii (growth); ``core`` an inner region
    (offset, radius as a fraction of the lesion's size) with ``core_hu``;
    ``spicules`` (direction, length, radius) strands from the surface.
    """

    lesion_id: str
    organ: str
    side: str
    kind: str
    place: str
    centre: tuple[float, float, float]
    spheres: tuple[tuple[tuple[float, float, float], float], ...]
    hu: float
    core: tuple[tuple[float, float, float], float] | None = None
    core_hu: float = 0.0
    edge_mm: float = 0.0
    spicules: tuple[tuple[tuple[float, float, float], float, float], ...] = ()
    popcorn: tuple[tuple[tuple[float, float, float], float], ...] = ()
    scale: float = 1.0
    negative: bool = False
    contrast_hu: float = 0.0

    @property
    def reach_mm(self) -> float:
        return self.scale * max(float(np.linalg.norm(o)) + r for o, r in self.spheres) + 0.5

    def field(self, x, y, z) -> np.ndarray:
        """Signed distance (mm) of the lesion (its truth region), smooth union of spheres."""
        c = self.centre
        k = 0.8 * self.scale
        acc: np.ndarray | None = None
        for offset, radius in self.spheres:
            d = np.sqrt((x - c[0] - self.scale * offset[0]) ** 2
                        + (y - c[1] - self.scale * offset[1]) ** 2
                        + (z - c[2] - self.scale * offset[2]) ** 2) - self.scale * radius  # fmt: skip
            term = np.exp(-d / k)
            acc = term if acc is None else acc + term
        if acc is None:
            raise ValueError(f"lesion {self.lesion_id} has no sphere")
        return -k * np.log(acc)

    def hu_at(self, state: StudyState, liver_hu: float):
        """A function of position: the lesion's CT number in this study (phase-dependent)."""
        # A metastasis enhances less than the liver around it (+45 HU at portal venous).
        base = self.hu + self.contrast_hu * state.contrast

        def hu(x, y, z):
            out = np.full(np.shape(x), base, dtype=np.float32)
            if self.core is not None:
                (ox, oy, oz), frac = self.core
                size = self.scale * max(r for _, r in self.spheres)
                c = self.centre
                d = np.sqrt((x - c[0] - ox * size) ** 2 + (y - c[1] - oy * size) ** 2
                            + (z - c[2] - oz * size) ** 2)  # fmt: skip
                core_hu = self.core_hu + (
                    45.0 * state.contrast if self.kind == "rim_enhancing" else 0.0
                )
                if self.kind == "rim_enhancing":  # the "core" is the enhancing rim here
                    out[self.field(x, y, z) > -frac * size] = core_hu
                else:
                    out[d < frac * size] = core_hu
            for (ox, oy, oz), r in self.popcorn:
                c, s = self.centre, self.scale
                d = np.sqrt(
                    (x - c[0] - s * ox) ** 2 + (y - c[1] - s * oy) ** 2 + (z - c[2] - s * oz) ** 2
                )
                out[d < s * r] = 650.0
            return out

        return hu

    def parts(self, state: StudyState, liver_hu: float) -> list[Part]:
        """What to paint: the lesion (soft edge for ground glass) and its spicules."""
        reach = self.reach_mm + 2.0
        box = (vec3(v - reach for v in self.centre), vec3(v + reach for v in self.centre))
        hu = self.hu_at(state, liver_hu)
        field = (
            self.field
            if not self.edge_mm
            else (lambda x, y, z: self.field(x, y, z) / (1 + self.edge_mm))
        )
        out = [Part(f"lesion:{self.lesion_id}", field, hu, box, self.organ, self.side)]
        for direction, length, radius in self.spicules:
            d = np.asarray(direction)
            start = np.asarray(self.centre) + d * 0.8 * self.reach_mm
            end = start + d * length * self.scale ** (1 / 3)
            out.append(Part("spicule", capsule(start, end, radius), float(self.hu),
                            capsule_box(start, end, radius), self.organ, self.side))  # fmt: skip
        return out

    def grown(self, volume_factor: float) -> EvalLesion:
        return replace(self, scale=self.scale * float(volume_factor) ** (1 / 3))


# --------------------------------------------------------------------------- kinds
def _spheres(rng, radius: float, lobulated: bool):
    if not lobulated:
        return (((0.0, 0.0, 0.0), radius),)
    n = int(rng.integers(3, 7))
    out = [((0.0, 0.0, 0.0), radius * 0.8)]
    for _ in range(n):
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        r = radius * rng.uniform(0.35, 0.6)
        out.append((vec3(d * (radius * 0.8 - 0.4 * r)), float(r)))
    return tuple(out)


def _unit(rng) -> tuple[float, float, float]:
    d = rng.normal(size=3)
    return vec3(d / np.linalg.norm(d))


def lesion_kind_draw(rng, *, organ: str, kind: str, radius: float, liver_hu: float) -> dict:
    """Keyword arguments of `EvalLesion` for a kind (shape, HU, core, spicules...)."""
    solid = float(rng.uniform(15.0, 55.0))
    if organ == "lung":
        spec = {
            "solid": dict(spheres=_spheres(rng, radius, False), hu=solid),
            "lobulated": dict(spheres=_spheres(rng, radius, True), hu=solid),
            "spiculated": dict(spheres=_spheres(rng, radius, rng.random() < 0.5), hu=solid,
                               spicules=tuple((_unit(rng), float(rng.uniform(4, 12)),
                                               float(rng.uniform(0.4, 0.9)))
                                              for _ in range(int(rng.integers(6, 14))))),
            "part_solid": dict(spheres=_spheres(rng, radius, rng.random() < 0.4),
                               hu=float(rng.uniform(-620, -420)),
                               core=(tuple(0.3 * v for v in _unit(rng)), float(rng.uniform(0.3, 0.55))),
                               core_hu=solid),
            "ground_glass": dict(spheres=_spheres(rng, radius, rng.random() < 0.4),
                                 hu=float(rng.uniform(-700, -480)), edge_mm=1.0),
            "cavitating": dict(spheres=_spheres(rng, radius, rng.random() < 0.5), hu=solid,
                               core=(tuple(0.25 * v for v in _unit(rng)), float(rng.uniform(0.3, 0.5))),
                               core_hu=float(rng.uniform(-980, -880))),
            "calcified": dict(spheres=_spheres(rng, radius, False), hu=solid,
                              popcorn=tuple((tuple(0.5 * radius * np.asarray(_unit(rng)) * rng.random()),
                                             float(rng.uniform(0.12, 0.3)) * radius)
                                            for _ in range(int(rng.integers(2, 6))))),
        }  # fmt: skip
    else:
        drop = float(rng.uniform(15.0, 45.0))
        spec = {
            "hypodense": dict(spheres=_spheres(rng, radius, rng.random() < 0.5),
                              hu=liver_hu - drop, contrast_hu=45.0 - 0.6 * drop),
            "rim_enhancing": dict(spheres=_spheres(rng, radius, rng.random() < 0.4),
                                  hu=liver_hu - drop - 10.0, contrast_hu=20.0,
                                  core=((0.0, 0.0, 0.0), float(rng.uniform(0.15, 0.28))),
                                  core_hu=liver_hu + float(rng.uniform(-5.0, 20.0))),
            "cystic": dict(spheres=_spheres(rng, radius, rng.random() < 0.5),
                           hu=liver_hu - drop, contrast_hu=25.0,
                           core=((0.0, 0.0, 0.0), float(rng.uniform(0.45, 0.65))),
                           core_hu=float(rng.uniform(8.0, 22.0))),
        }  # fmt: skip
    return spec[kind]


def cyst_draw(rng, *, radius: float) -> dict:
    """A simple cyst: round, water-dense, sharp (a negative)."""
    return dict(
        spheres=(((0.0, 0.0, 0.0), radius),), hu=float(rng.uniform(0.0, 12.0)), negative=True
    )


# --------------------------------------------------------------------------- placement
def visible_at(parts: list[Part], points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(part name, organ) visible at reference points (N, 3), last painted wins."""
    names = np.full(len(points), "air", dtype=object)
    organs = np.full(len(points), "", dtype=object)
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    for part in parts:
        lo, hi = part.box
        near = np.all((points >= lo) & (points <= hi), axis=1)
        if not near.any():
            continue
        inside = np.zeros(len(points), bool)
        inside[near] = part.field(x[near], y[near], z[near]) < 0
        names[inside] = part.name
        organs[inside] = part.organ
    return names, organs


def _ball(n: int = 150) -> np.ndarray:
    i = np.arange(n) + 0.5
    polar = np.arccos(1 - 2 * i / n)
    azimuth = np.pi * (3 - 5**0.5) * i
    shell = np.stack([np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar),
                      np.cos(polar)], 1)  # fmt: skip
    return np.concatenate([np.zeros((1, 3)), 0.5 * shell[::2], shell])


_BALL = _ball()
_VESSELS = ("lung_vessel", "lung_bronchus", "lung_bronchus_wall", "portal_vein")


def _all_in(parts, centre, radius, organ) -> bool:
    _, organs = visible_at(parts, centre + radius * _BALL)
    return bool(np.all(organs == organ))


def place_ok(parts, an: EvalAnatomy, centre, reach, organ, place, taken) -> bool:
    """Whether a lesion of ``reach`` fits at ``centre`` for its placement."""
    if any(np.linalg.norm(centre - c) < reach + r + 4.0 for c, r in taken):
        return False
    names, organs = visible_at(parts, centre[None])
    if organs[0] != organ or names[0] in _VESSELS:
        return False
    if place in ("subpleural", "dome", "edge"):
        return _all_in(parts, centre, reach + 0.3, organ) and not _all_in(
            parts, centre, reach + 4.5, organ
        )
    if place == "juxtavascular":
        return _all_in(parts, centre, 0.5 * reach, organ)
    return _all_in(parts, centre, reach + 2.0, organ)


def candidate_points(rng, an: EvalAnatomy, organ: str, side: str, place: str, reach: float, n=80):
    """Reference points to try for a placement (checked by `place_ok`)."""
    a = an.half_width
    s = -1.0 if side == "right" else 1.0
    if organ == "lung":
        if place == "juxtavascular" and an.vessels:
            tubes = [t for t in an.vessels if np.sign(t.p1[0]) == s and t.radius > 1.2] or list(
                an.vessels
            )
            pts = []
            for t in (tubes[i] for i in rng.integers(len(tubes), size=n)):
                p0, p1 = np.asarray(t.p0), np.asarray(t.p1)
                axis = (p1 - p0) / max(np.linalg.norm(p1 - p0), 1e-6)
                off = rng.normal(size=3)
                off -= (off @ axis) * axis
                off /= max(np.linalg.norm(off), 1e-6)
                pts.append(p0 + rng.random() * (p1 - p0) + off * (t.radius + 0.8 * reach))
            return np.array(pts)
        if place == "perihilar":
            hilum = np.array([s * 45.0, 0.0, an.carina_z - 30.0])
            d = rng.normal(size=(n, 3))
            d /= np.linalg.norm(d, axis=1, keepdims=True)
            return hilum + d * (reach + rng.uniform(6, 35, (n, 1)))
        z_lo, z_hi = an.dome_left_z - 60.0, an.apex_z
        if place == "apex":
            z_lo = an.apex_z - 60.0
        elif place == "base":
            z_hi = an.dome_right_z + 40.0
        x = s * rng.uniform(0.1, 0.95, n) * a
        return np.stack(
            [x, rng.uniform(-1, 1, n) * an.half_depth_front, rng.uniform(z_lo, z_hi, n)], 1
        )
    x = rng.uniform(-0.95 * a, an.liver_left_x + 40.0, n)
    z_lo = an.dome_right_z - an.liver_height
    z = rng.uniform(z_lo, an.dome_right_z, n)
    if place == "dome":
        z = an.diaphragm_z(x, 0.0) - reach - rng.uniform(0.5, 6.0, n)
    return np.stack([x, rng.uniform(-0.9, 0.9, n) * an.half_depth_front, z], 1)
