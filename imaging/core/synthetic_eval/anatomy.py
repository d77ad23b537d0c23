"""The evaluation generator's patient: a trunk built from its own anatomical rules.

Reference frame in mm: x towards the patient's left, y posterior, z superior (LPS for
an unrotated patient), z = 0 near the top of the right diaphragmatic dome. The trunk is
a superellipse whose width and depth vary along z; lungs fill the thoracic cavity above
a domed diaphragm (the right dome higher), outside the mediastinum and heart, up to
rounded apices; the liver is the wedge under the right dome above an oblique inferior
edge; then heart, great vessels, trachea and bronchi, spine, ribs, sternum, scapulae,
spleen, stomach with a gravity-dependent air cap, kidneys, gallbladder, bowel loops,
pulmonary and hepatic vessel trees, and optionally the arms. What changes between
studies of one patient (breathing, contrast phase, gravity, arms) is a `StudyState`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from imaging.core.geometry.triples import vec3
from imaging.core.synthetic_eval.fields import (
    Part,
    box_of,
    capsule,
    capsule_box,
    ellipsoid,
    intersect,
    near_only,
    rotation_zyx,
    rounded_box,
    superellipse_2d,
)

AIR = -1000.0
BIG = 1e4


@dataclass(frozen=True)
class Tube:
    """A straight vessel or airway piece (reference frame, mm)."""

    p0: tuple[float, float, float]
    p1: tuple[float, float, float]
    radius: float


@dataclass(frozen=True)
class EvalAnatomy:
    """One patient's trunk (see the module docstring for the frame)."""

    half_width: float
    half_depth_front: float
    half_depth_back: float
    exponent: float
    fat_mm: float
    muscle_mm: float
    dome_right_z: float
    dome_left_z: float
    apex_z: float
    carina_z: float
    liver_height: float
    liver_slope: float
    liver_left_x: float
    liver_hu: float
    heart_yaw: float
    spine_pitch: float
    spine_phase: float
    vessels: tuple[Tube, ...] = field(default_factory=tuple)
    bronchi: tuple[Tube, ...] = field(default_factory=tuple)
    portal: tuple[Tube, ...] = field(default_factory=tuple)
    bowel: tuple[tuple[Tube, bool], ...] = field(default_factory=tuple)
    top_z: float = 200.0
    bottom_z: float = -270.0

    # ----------------------------------------------------------------- outline
    def width(self, z):
        shoulders = 1.0 + 0.07 * np.tanh((z - 110.0) / 50.0)
        waist = 1.0 - 0.06 * np.exp(-(((z + 150.0) / 70.0) ** 2))
        return self.half_width * shoulders * waist

    def trunk(self, inset_mm: float):
        """Signed distance to the trunk outline moved inwards by ``inset_mm``."""

        def f(x, y, z):
            a = self.width(z) - inset_mm
            b = np.where(y < 0, self.half_depth_front, self.half_depth_back) - inset_mm
            return superellipse_2d(x, y, a, b, self.exponent)

        return f

    def cavity(self):
        return self.trunk(self.fat_mm + self.muscle_mm)

    def diaphragm_z(self, x, y):
        """Height of the diaphragm: two domes, lower at the sides and behind (recesses)."""
        a = self.width(0.0)
        right = self.dome_right_z - 40.0 * ((x + 0.42 * a) / (0.6 * a)) ** 2
        left = self.dome_left_z - 40.0 * ((x - 0.45 * a) / (0.6 * a)) ** 2
        back = 35.0 * np.clip(y / self.half_depth_back, 0.0, 1.0) ** 2
        return np.maximum(right, left) - 12.0 * ((y + 10.0) / self.half_depth_front) ** 2 - back

    def below_diaphragm(self, margin: float = 0.0):
        return lambda x, y, z: z - self.diaphragm_z(x, y) + margin

    def spine_y(self, z):
        return 0.55 * self.half_depth_back + 8.0 * np.sin((z + 60.0) / 220.0)


# --------------------------------------------------------------------------- sampling
def _tree(rng, root, direction, length, radius, depth) -> list[Tube]:
    tubes: list[Tube] = []
    stack = [(np.asarray(root, float), np.asarray(direction, float), length, radius, 0)]
    while stack:
        start, d, ln, r, level = stack.pop()
        end = start + d * ln
        tubes.append(Tube(vec3(start), vec3(end), float(r)))
        if level + 1 >= depth or r < 0.9:
            continue
        n_children = 3 if rng.random() < 0.25 else 2
        for _ in range(n_children):
            other = rng.normal(size=3)
            other -= (other @ d) * d
            other /= np.linalg.norm(other)
            angle = rng.uniform(0.3, 0.9)
            child = np.cos(angle) * d + np.sin(angle) * other
            stack.append((end, child / np.linalg.norm(child), ln * rng.uniform(0.6, 0.95),
                          r * rng.uniform(0.6, 0.78), level + 1))  # fmt: skip
    return tubes


def anatomy_draw(rng: np.random.Generator) -> EvalAnatomy:
    """A trunk with its own proportions, organ heights and vessel trees."""
    half_width = float(rng.uniform(130.0, 185.0))
    front = float(rng.uniform(90.0, 135.0))
    dome_right = float(rng.uniform(-5.0, 15.0))
    apex = float(rng.uniform(150.0, 180.0))
    carina = apex - float(rng.uniform(70.0, 95.0))
    vessels: list[Tube] = []
    bronchi: list[Tube] = []
    for side in (-1.0, 1.0):
        hilum = np.array([side * 42.0, rng.uniform(-8.0, 8.0), carina - rng.uniform(20.0, 35.0)])
        for _ in range(3):
            d = np.array([side * rng.uniform(0.4, 1.0), rng.uniform(-0.6, 0.6), rng.uniform(-1, 1)])
            vessels += _tree(rng, hilum, d / np.linalg.norm(d), rng.uniform(25, 40),
                             rng.uniform(4.5, 7.0), 6)  # fmt: skip
        for _ in range(2):
            d = np.array(
                [side * rng.uniform(0.5, 1.0), rng.uniform(-0.4, 0.6), rng.uniform(-1, 0.7)]
            )
            bronchi += _tree(rng, hilum + [0, 8.0, 4.0], d / np.linalg.norm(d),
                             rng.uniform(22, 35), rng.uniform(4.0, 6.0), 4)  # fmt: skip
    porta = np.array([-0.1 * half_width, 0.1 * front, dome_right - rng.uniform(80.0, 100.0)])
    portal: list[Tube] = []
    for _ in range(3):
        d = np.array([-rng.uniform(0.3, 1.0), rng.uniform(-0.6, 0.6), rng.uniform(-0.2, 0.9)])
        portal += _tree(rng, porta, d / np.linalg.norm(d), rng.uniform(30, 45),
                        rng.uniform(5.0, 7.5), 4)  # fmt: skip
    bowel = []
    for _ in range(int(rng.integers(6, 12))):
        c = np.array([rng.uniform(-0.6, 0.6) * half_width, rng.uniform(-0.6, 0.3) * front,
                      rng.uniform(-255.0, dome_right - 140.0)])  # fmt: skip
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        ln = rng.uniform(20.0, 60.0)
        bowel.append((Tube(vec3(c - d * ln / 2), vec3(c + d * ln / 2),
                           float(rng.uniform(9.0, 17.0))), bool(rng.random() < 0.45)))  # fmt: skip
    return EvalAnatomy(
        half_width=half_width,
        half_depth_front=front,
        half_depth_back=front * float(rng.uniform(0.85, 1.0)),
        exponent=float(rng.uniform(2.0, 2.5)),
        fat_mm=float(rng.uniform(6.0, 35.0)),
        muscle_mm=float(rng.uniform(10.0, 20.0)),
        dome_right_z=dome_right,
        dome_left_z=dome_right - float(rng.uniform(10.0, 25.0)),
        apex_z=apex,
        carina_z=carina,
        liver_height=float(rng.uniform(140.0, 190.0)),
        liver_slope=float(rng.uniform(0.45, 0.9)),
        liver_left_x=float(rng.uniform(-0.1, 0.25)) * half_width,
        liver_hu=float(rng.uniform(50.0, 70.0)),
        heart_yaw=float(rng.uniform(0.45, 0.8)),
        spine_pitch=float(rng.uniform(27.0, 32.0)),
        spine_phase=float(rng.uniform(0.0, 30.0)),
        vessels=tuple(vessels),
        bronchi=tuple(bronchi),
        portal=tuple(portal),
        bowel=tuple(bowel),
    )


@dataclass(frozen=True)
class StudyState:
    """What differs between one patient's studies: breathing, contrast, gravity, arms.

    ``breath_mm``: inspiration relative to the reference (positive pushes the diaphragm
    and liver down); ``contrast``: 0 unenhanced .. 1 portal venous; ``gravity_y``: +1
    when the patient lies supine (back down), -1 prone; ``arms_down``: arms in the field.
    """

    breath_mm: float = 0.0
    contrast: float = 1.0
    gravity_y: float = 1.0
    arms_down: bool = False


def breath_displacement(anatomy: EvalAnatomy, state: StudyState, x, y, z):
    """Displacement (mm) of tissue from the reference to this study's breathing state."""
    d = state.breath_mm
    if d == 0.0:
        return 0.0 * x, 0.0 * y, 0.0 * z
    top = anatomy.dome_right_z
    weight = np.where(z < top, np.exp(-(((z - top) / 260.0) ** 2)),
                      np.clip(1.0 - (z - top) / 170.0, 0.0, 1.0))  # fmt: skip
    # The viscera move; the spine and the body wall hardly do (smoothly, not sliding).
    r2 = (x / (0.55 * anatomy.half_width)) ** 2 + ((y + 0.1 * anatomy.half_depth_front)
                                                    / (0.55 * anatomy.half_depth_back)) ** 2  # fmt: skip
    weight = weight * np.exp(-(r2**2))
    front = np.clip(-y / anatomy.half_depth_front, 0.0, 1.0)
    return 0.0 * x, -0.2 * d * front * weight, -d * weight


# --------------------------------------------------------------------------- parts
def _vessel_hu(state: StudyState) -> float:
    return 40.0 + 200.0 * state.contrast


def _lungs(an: EvalAnatomy, state: StudyState) -> list[Part]:
    cavity = an.cavity()
    heart = _heart_field(an, grow=3.0)

    def lung_field(side: float):
        def f(x, y, z):
            a = an.width(z)
            top = (
                an.apex_z
                - 45.0 * ((np.abs(x) - 0.45 * a) / (0.5 * a)) ** 2
                - 25.0 * (y / an.half_depth_front) ** 2
            )
            column = 15.0 + 8.0 * np.clip(-y / 60.0, 0, 1) - np.abs(x - 6.0)
            out = np.maximum(cavity(x, y, z), an.diaphragm_z(x, y) - z + 1.0)
            out = np.maximum(out, z - top)
            out = np.maximum(out, column)
            out = np.maximum(out, -heart(x, y, z))
            return np.maximum(out, -side * x + 2.0)

        return f

    def lung_hu(x, y, z):
        dependent = np.clip(state.gravity_y * y / 80.0, -1.0, 1.0)
        return (-860.0 + 45.0 * dependent).astype(np.float32)

    top = an.apex_z + 5
    parts = []
    for side, name in ((-1.0, "right"), (1.0, "left")):
        lo = (min(0.0, side * an.half_width) - 5, -an.half_depth_front, an.dome_left_z - 120)
        hi = (max(0.0, side * an.half_width) + 5, an.half_depth_back, top)
        parts.append(Part(f"{name}_lung", lung_field(side), lung_hu, (lo, hi), "lung", name))
    return parts


def _heart_field(an: EvalAnatomy, grow: float = 0.0):
    centre = (0.14 * an.half_width, -0.36 * an.half_depth_front, an.dome_left_z + 40.0)
    rot = rotation_zyx(-an.heart_yaw, 0.35)
    return ellipsoid(centre, (52.0 + grow, 40.0 + grow, 45.0 + grow), rot)


def _walls(an: EvalAnatomy) -> list[Part]:
    big = ((-BIG, -BIG, an.bottom_z), (BIG, BIG, an.top_z))
    cavity = an.cavity()
    below = an.below_diaphragm()

    def abdomen(x, y, z):
        return np.maximum(cavity(x, y, z), below(x, y, z))

    return [
        Part("fat", an.trunk(0.0), -105.0, big),
        Part("muscle", an.trunk(an.fat_mm), 50.0, big),
        Part("mediastinal_fat", cavity, -70.0, big),
        Part("abdomen", abdomen, 30.0, big),
    ]


def _skeleton(an: EvalAnatomy, state: StudyState) -> list[Part]:
    parts: list[Part] = []
    z = an.bottom_z + an.spine_phase
    while z < an.top_z:
        ys = float(an.spine_y(z))
        h = an.spine_pitch / 2 - 3.0
        parts.append(Part("vertebra", rounded_box((0, ys, z), (20, 16, h), 4.0), 650.0,
                          box_of((0, ys, z), (22, 18, h + 2))))  # fmt: skip
        parts.append(Part("vertebra", rounded_box((0, ys, z), (17.5, 13.5, h - 2), 3.0), 230.0,
                          box_of((0, ys, z), (20, 16, h))))  # fmt: skip
        parts.append(Part("disc", rounded_box((0, ys, z + an.spine_pitch / 2), (18, 14, 3), 2.0),
                          90.0, box_of((0, ys, z + an.spine_pitch / 2), (20, 16, 5))))  # fmt: skip
        arch = capsule((0, ys + 22, z), (0, ys + 48, z - 8), 5.0)
        parts.append(
            Part("vertebra", arch, 500.0, capsule_box((0, ys + 22, z), (0, ys + 48, z - 8), 5))
        )
        if an.dome_right_z - 130 < z < an.apex_z - 10:
            parts += _rib(an, z, ys)
        z += an.spine_pitch
    sternum_y = -an.half_depth_front + an.fat_mm + an.muscle_mm + 6.0
    zc = an.dome_right_z + 80.0
    parts.append(Part("sternum", rounded_box((0, sternum_y, zc), (14, 6, 85), 4.0), 300.0,
                      box_of((0, sternum_y, zc), (16, 8, 88))))  # fmt: skip
    for side in (-1.0, 1.0):
        centre = (side * 0.62 * an.half_width, an.half_depth_back - an.fat_mm - 8.0, 125.0)
        parts.append(Part("scapula", rounded_box(centre, (35, 4, 45), 3.0), 420.0,
                          box_of(centre, (38, 7, 48))))  # fmt: skip
        if state.arms_down:
            c = (side * (an.half_width + 45.0), 0.0, 60.0)
            arm = capsule((c[0], c[1], an.bottom_z + 60), (c[0], c[1], an.top_z), 42.0)
            parts.append(Part("arm", arm, 20.0, capsule_box((c[0], c[1], an.bottom_z + 60),
                                                            (c[0], c[1], an.top_z), 42.0)))  # fmt: skip
            bone = capsule((c[0], c[1], an.bottom_z + 60), (c[0], c[1], an.top_z), 11.0)
            parts.append(Part("humerus", bone, 700.0, capsule_box((c[0], c[1], an.bottom_z + 60),
                                                                  (c[0], c[1], an.top_z), 11.0)))  # fmt: skip
    return parts


def _rib(an: EvalAnatomy, z0: float, ys: float) -> list[Part]:
    """Each side's rib as tubes along the inside of the body wall, descending forwards."""
    parts = []
    inset = an.fat_mm + an.muscle_mm * 0.5
    for side in (-1.0, 1.0):
        angles = np.linspace(0.15 * np.pi, 0.92 * np.pi, 9)
        points = []
        for t in angles:
            zz = z0 - 55.0 * (t - 0.15 * np.pi) / (0.77 * np.pi)
            a = float(an.width(zz)) - inset
            b_back, b_front = an.half_depth_back - inset, an.half_depth_front - inset
            c, s = float(np.cos(t)), float(np.sin(t))
            yy = np.sign(c) * abs(c) ** (2 / an.exponent) * (b_back if c > 0 else b_front)
            points.append((side * a * s ** (2 / an.exponent), float(yy), zz))
        for n, (p0, p1) in enumerate(zip(points[:-1], points[1:], strict=True)):
            cartilage = n >= len(points) - 3
            r = 4.5 if not cartilage else 4.0
            parts.append(Part("costal_cartilage" if cartilage else "rib", capsule(p0, p1, r),
                              130.0 if cartilage else 520.0, capsule_box(p0, p1, r)))  # fmt: skip
    return parts


def _mediastinum(an: EvalAnatomy, state: StudyState) -> list[Part]:
    vessel = _vessel_hu(state)
    heart = intersect(_heart_field(an), lambda x, y, z: an.diaphragm_z(x, y) - z + 1.0)
    hc = (0.14 * an.half_width, -0.36 * an.half_depth_front, an.dome_left_z + 40.0)
    parts = [Part("heart", heart, 45.0 + 80.0 * state.contrast, box_of(hc, (65, 65, 65)))]
    ys = float(an.spine_y(0.0))
    path = [(0.05 * an.half_width, -0.2 * an.half_depth_front, an.dome_left_z + 90),
            (0.02 * an.half_width, -0.15 * an.half_depth_front, an.carina_z + 25),
            (0.12 * an.half_width, 0.2 * an.half_depth_back, an.carina_z + 35),
            (0.14 * an.half_width, ys - 28, an.carina_z),
            (0.1 * an.half_width, ys - 26, an.bottom_z)]  # fmt: skip
    for p0, p1 in zip(path[:-1], path[1:], strict=True):
        parts.append(Part("aorta", capsule(p0, p1, 13.0), vessel, capsule_box(p0, p1, 13.0)))
    ivc = ((-0.15 * an.half_width, 0.25 * an.half_depth_back, an.bottom_z),
           (-0.12 * an.half_width, 0.2 * an.half_depth_back, an.dome_right_z + 15))  # fmt: skip
    parts.append(
        Part("ivc", capsule(*ivc, 11.0), 30.0 + 120.0 * state.contrast, capsule_box(*ivc, 11))
    )
    trachea = ((0.0, -0.02 * an.half_depth_front, an.top_z), (0.0, 0.0, an.carina_z))
    parts.append(Part("trachea_wall", capsule(*trachea, 11.0), 60.0, capsule_box(*trachea, 11.0)))
    parts.append(Part("trachea", capsule(*trachea, 9.0), AIR, capsule_box(*trachea, 9.0)))
    for side in (-1.0, 1.0):
        main = ((0.0, 0.0, an.carina_z), (side * 40.0, 6.0, an.carina_z - 22.0))
        parts.append(Part("bronchus_wall", capsule(*main, 8.0), 60.0, capsule_box(*main, 8.0)))
        parts.append(Part("bronchus", capsule(*main, 6.5), AIR, capsule_box(*main, 6.5)))
    return parts


def _trees(an: EvalAnatomy, state: StudyState, lungs: list[Part], liver: Part) -> list[Part]:
    in_lung = lambda x, y, z: np.minimum(lungs[0].field(x, y, z), lungs[1].field(x, y, z))  # noqa: E731
    parts = []
    vessel = _vessel_hu(state)
    for t in an.vessels:
        parts.append(Part("lung_vessel", near_only(capsule(t.p0, t.p1, t.radius), in_lung), vessel,
                          capsule_box(t.p0, t.p1, t.radius), "lung"))  # fmt: skip
    for t in an.bronchi:
        for name, r, hu in (
            ("lung_bronchus_wall", t.radius + 1.3, 40.0),
            ("lung_bronchus", t.radius, AIR),
        ):
            parts.append(Part(name, near_only(capsule(t.p0, t.p1, r), in_lung), hu,
                              capsule_box(t.p0, t.p1, r), "lung"))  # fmt: skip
    portal_hu = an.liver_hu + state.contrast * 70.0 - (1 - state.contrast) * 15.0
    for t in an.portal:
        parts.append(Part("portal_vein", near_only(capsule(t.p0, t.p1, t.radius), liver.field),
                          portal_hu, capsule_box(t.p0, t.p1, t.radius), "liver"))  # fmt: skip
    return parts


def _abdomen(an: EvalAnatomy, state: StudyState) -> tuple[Part, list[Part]]:
    cavity = an.cavity()
    a0 = an.half_width

    def liver_field(x, y, z):
        roof = z - an.diaphragm_z(x, y) + 1.5
        floor = (an.dome_right_z - an.liver_height + an.liver_slope * (x + a0) * 0.9
                 + 0.25 * y) - z  # fmt: skip
        left = x - (an.liver_left_x - 0.25 * np.clip(y, -200, 0))
        return np.maximum(np.maximum(cavity(x, y, z), roof), np.maximum(floor, left))

    liver_hu = an.liver_hu + 45.0 * state.contrast
    liver = Part("liver", liver_field, liver_hu,
                 ((-a0, -an.half_depth_front, an.dome_right_z - an.liver_height - 30),
                  (0.6 * a0, an.half_depth_back, an.dome_right_z + 5)), "liver")  # fmt: skip
    parts = []
    below_left = an.below_diaphragm(2.0)
    sc = (0.55 * a0, 0.45 * an.half_depth_back, an.dome_left_z - 55)
    spleen = intersect(ellipsoid(sc, (28, 55, 55), rotation_zyx(0.6)), below_left)
    parts.append(Part("spleen", spleen, liver_hu + 8.0, box_of(sc, (60, 60, 60))))
    gc = (0.3 * a0, -0.25 * an.half_depth_front, an.dome_left_z - 50)
    stomach = intersect(ellipsoid(gc, (45, 35, 40), rotation_zyx(0.3)), below_left)
    parts.append(Part("stomach_wall", stomach, 45.0, box_of(gc, (48, 48, 48))))
    inner = ellipsoid(gc, (40, 30, 35), rotation_zyx(0.3))
    parts.append(Part("stomach", intersect(inner, below_left), 15.0, box_of(gc, (45, 45, 45))))
    level = gc[1] - 15.0 * state.gravity_y  # air rises away from the table
    air_cap = intersect(inner, lambda x, y, z: (y - level) * state.gravity_y)
    parts.append(Part("stomach_air", air_cap, AIR, box_of(gc, (45, 45, 45))))
    for side in (-1.0, 1.0):
        kc = (side * 0.38 * a0, 0.55 * an.half_depth_back, an.dome_left_z - 115)
        rot = rotation_zyx(side * 0.35, 0.0, 0.15)
        parts.append(Part("kidney", ellipsoid(kc, (28, 22, 50), rot), 60.0 + 130.0 * state.contrast,
                          box_of(kc, (52, 52, 52))))  # fmt: skip
        parts.append(Part("kidney", ellipsoid(kc, (16, 12, 38), rot), 40.0 + 80.0 * state.contrast,
                          box_of(kc, (40, 40, 40))))  # fmt: skip
    for tube, gas in an.bowel:
        parts.append(Part("bowel_wall", intersect(capsule(tube.p0, tube.p1, tube.radius), cavity),
                          40.0, capsule_box(tube.p0, tube.p1, tube.radius)))  # fmt: skip
        parts.append(Part("bowel", intersect(capsule(tube.p0, tube.p1, tube.radius - 2.5), cavity),
                          AIR if gas else 15.0, capsule_box(tube.p0, tube.p1, tube.radius)))  # fmt: skip
    return liver, parts


def _after_liver(an: EvalAnatomy, liver: Part) -> list[Part]:
    """Gallbladder at the liver's lower edge (fluid: not liver)."""
    a0 = an.half_width
    gc = (-0.25 * a0, -0.45 * an.half_depth_front, an.dome_right_z - an.liver_height * 0.55)
    gb = intersect(ellipsoid(gc, (14, 16, 30), rotation_zyx(0.3, 0.4)), an.cavity())
    return [Part("gallbladder", gb, 10.0, box_of(gc, (35, 35, 35)))]


def parts_build(anatomy: EvalAnatomy, state: StudyState) -> list[Part]:
    """Every structure of the patient in this study's state, in paint order."""
    lungs = _lungs(anatomy, state)
    liver, abdomen = _abdomen(anatomy, state)
    return [
        *_walls(anatomy),
        *abdomen,
        liver,
        *_after_liver(anatomy, liver),
        *lungs,
        *_mediastinum(anatomy, state),
        *_trees(anatomy, state, lungs, liver),
        *_skeleton(anatomy, state),
    ]
