"""Evaluation patients and studies: draw them, render them, and say exactly what they hold.

A patient (`patient_draw`) is an anatomy, lesions and simple cysts, and a series of
studies; each study has its patient position, pose (rotation up to ``max_rotation_deg``
about a mostly craniocaudal axis, shift up to ``max_shift_mm``), breathing, contrast
phase, arms, coverage (whole trunk, chest only, or the lower chest and upper abdomen)
and acquisition. `study_render` returns the series as a `Volume` in its scanner
geometry and the truth: every lesion's exact volume and centroid in that study's LPS
coordinates (integrated on a fine grid through the same mapping the image was rendered
with, breathing included), and anatomical landmarks (carina, vertebral centres, liver
dome, hila) for registration error.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from imaging.core.geometry.triples import vec3
from imaging.core.geometry.volume import Volume
from imaging.core.synthetic_eval.anatomy import (
    EvalAnatomy,
    StudyState,
    anatomy_draw,
    breath_displacement,
    parts_build,
)
from imaging.core.synthetic_eval.lesions import (
    LIVER_KINDS,
    LIVER_PLACES,
    LUNG_KINDS,
    LUNG_PLACES,
    EvalLesion,
    candidate_points,
    cyst_draw,
    lesion_kind_draw,
    place_ok,
)
from imaging.core.synthetic_eval.scanner import (
    Acquisition,
    Mapping,
    PaintGrid,
    parts_paint,
    scanner_effects,
    table_part,
)

POSITIONS = ("HFS", "FFS", "HFP", "FFP")
THICKNESSES_MM = (0.625, 1.0, 1.25, 2.0, 2.5, 3.0, 5.0)


@dataclass(frozen=True, eq=False)
class EvalStudy:
    """One study of a patient: acquisition, state, pose (LPS = R p + t) and its lesions."""

    index: int
    acquisition: Acquisition
    state: StudyState
    rotation: np.ndarray
    translation: np.ndarray
    rotation_deg: float
    shift_mm: float
    coverage: str
    lesions: tuple[EvalLesion, ...]


@dataclass(frozen=True, eq=False)
class EvalPatient:
    patient_id: str
    anatomy: EvalAnatomy
    studies: tuple[EvalStudy, ...]

    def mapping(self, study: EvalStudy) -> Mapping:
        an, state = self.anatomy, study.state
        return Mapping(
            rotation=study.rotation,
            translation=study.translation,
            displacement=lambda x, y, z: breath_displacement(an, state, x, y, z),
            reach_mm=abs(state.breath_mm) + 1.0,
        )


@dataclass(frozen=True)
class LesionTruth:
    """A lesion as rendered in one study: exact volume (ml) and centroid (LPS mm)."""

    lesion_id: str
    organ: str
    side: str
    kind: str
    place: str
    negative: bool
    volume_ml: float
    centre_lps_mm: tuple[float, float, float]

    @property
    def diameter_mm(self) -> float:
        return float(np.cbrt(6.0 * self.volume_ml * 1000.0 / np.pi))


@dataclass(frozen=True, eq=False)
class RenderedEval:
    volume: Volume
    lesions: tuple[LesionTruth, ...]


# --------------------------------------------------------------------------- drawing
def _rotation(axis, angle_rad: float) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle_rad) * k + (1 - np.cos(angle_rad)) * (k @ k)


def _lesions_draw(rng, an: EvalAnatomy, parts, n_lung: int, n_liver: int, n_cysts: int,
                  diameters: tuple[float, float] | None = None,
                  kinds: tuple[str, ...] | None = None):  # fmt: skip
    lesions: list[EvalLesion] = []
    taken: list[tuple[np.ndarray, float]] = []
    wanted = [("lung", "right" if n % 2 == 0 else "left") for n in range(n_lung)]
    wanted += [("liver", "right" if rng.random() < 0.7 else "left") for _ in range(n_liver)]
    wanted += [("cyst", "right") for _ in range(n_cysts)]
    for number, (organ, side) in enumerate(wanted, start=1):
        if organ == "lung":
            choices = [k for k in LUNG_KINDS if kinds is None or k in kinds]
            kind, place = str(rng.choice(choices)), str(rng.choice(LUNG_PLACES))
            diameter = float(np.exp(rng.uniform(*np.log(diameters or (6.0, 30.0)))))
        elif organ == "liver":
            choices = [k for k in LIVER_KINDS if kinds is None or k in kinds]
            kind, place = str(rng.choice(choices)), str(rng.choice(LIVER_PLACES))
            diameter = float(np.exp(rng.uniform(*np.log(diameters or (8.0, 40.0)))))
        else:
            kind, place, diameter = "simple_cyst", "parenchyma", float(rng.uniform(6.0, 18.0))
        organ_of = "liver" if organ == "cyst" else organ
        for _attempt in range(4):
            radius = diameter / 2
            spec = (cyst_draw(rng, radius=radius) if organ == "cyst"
                    else lesion_kind_draw(rng, organ=organ, kind=kind, radius=radius,
                                          liver_hu=an.liver_hu))  # fmt: skip
            probe = EvalLesion(
                f"E{number:02d}", organ_of, side, kind, place, (0.0, 0.0, 0.0), **spec
            )
            reach = probe.reach_mm
            found = None
            for c in candidate_points(rng, an, organ_of, side, place, reach):
                if place_ok(parts, an, c, reach, organ_of, place, taken):
                    found = c
                    break
            if found is not None:
                taken.append((found, reach))
                side_of = "left" if found[0] > 0 else "right"
                lesions.append(replace(probe, centre=vec3(found), side=side_of))
                break
            diameter *= 0.75
    return tuple(lesions)


def _acquisition(rng, an: EvalAnatomy, position: str, coverage: str, matrix: int,
                 pixel_range: tuple[float, float], thickness: float | None) -> Acquisition:  # fmt: skip
    t = float(thickness if thickness is not None else rng.choice(THICKNESSES_MM))
    spacing = t if rng.random() < 0.7 else float(t * rng.uniform(0.5, 0.8))
    spacing = max(spacing, 0.5)
    top, bottom = an.apex_z + 25.0, an.dome_right_z - an.liver_height - 35.0
    if coverage == "chest":
        bottom = an.dome_right_z - 70.0
    elif coverage == "abdomen":
        top = an.carina_z - 10.0
    return Acquisition(
        position=position,
        matrix=matrix,
        pixel_mm=float(rng.uniform(*pixel_range)),
        slice_spacing_mm=round(spacing, 3),
        slice_thickness_mm=t,
        z_start_mm=float(bottom + rng.uniform(-10, 10)),
        z_end_mm=float(top + rng.uniform(-10, 10)),
        centre_xy_mm=(float(rng.normal(0, 8)), float(rng.normal(0, 8))),
        head_first_order=bool(rng.random() < 0.7),
        kernel=str(rng.choice(["soft", "standard", "sharp"], p=[0.3, 0.5, 0.2])),
        noise_hu=float(rng.uniform(6.0, 32.0)),
        beam_hardening_hu=float(rng.uniform(0.0, 15.0)),
    )


def patient_draw(
    *,
    seed: int,
    index: int,
    n_studies: int = 2,
    size: str = "full",
    positions: tuple[str, ...] | None = None,
    thicknesses: tuple[float | None, ...] | None = None,
    coverages: tuple[str, ...] | None = None,
    max_rotation_deg: float = 15.0,
    max_shift_mm: float = 30.0,
    lesion_counts: tuple[int, int, int] | None = None,
    lesion_diameters_mm: tuple[float, float] | None = None,
    lesion_kinds: tuple[str, ...] | None = None,
) -> EvalPatient:
    """One patient with ``n_studies`` studies (per-study position, thickness, coverage optional).

    ``size``: ``full`` (512 matrix, 0.55-1.0 mm pixels), ``medium`` (256 matrix,
    1.2-1.9 mm pixels: registration benchmarks, where 4 mm copies decide) or ``small``
    (128 matrix, 2.6-3.2 mm pixels, for tests). ``lesion_counts`` (lung nodules, liver
    lesions, simple cysts) defaults to 2-4, 1-3 and 0-2 drawn at random; lung nodules
    alternate right and left. ``lesion_diameters_mm`` and ``lesion_kinds`` narrow what
    is drawn (a test that needs nodules of a given size and kind).
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, index, 9173]))
    an = anatomy_draw(rng)
    reference = parts_build(an, StudyState())
    counts = (int(rng.integers(2, 5)), int(rng.integers(1, 4)), int(rng.integers(0, 3)))
    base = _lesions_draw(rng, an, reference, *(lesion_counts or counts),
                         diameters=lesion_diameters_mm, kinds=lesion_kinds)  # fmt: skip
    matrix, pixels = {"full": (512, (0.55, 1.0)), "medium": (256, (1.2, 1.9)),
                      "small": (128, (2.6, 3.2))}[size]  # fmt: skip
    studies = []
    for s in range(n_studies):
        position = positions[s] if positions else str(rng.choice(POSITIONS))
        coverage = coverages[s] if coverages else "full"
        thick = thicknesses[s] if thicknesses else (None if size == "full" else 5.0)
        angle = float(rng.uniform(0.0, max_rotation_deg)) if s else float(rng.uniform(0, 3))
        axis = rng.normal(size=3) * [0.35, 0.35, 1.0]
        direction = rng.normal(size=3)
        shift = float(rng.uniform(0.0, max_shift_mm)) if s else float(rng.uniform(0, 5))
        state = StudyState(
            breath_mm=float(rng.uniform(-10, 10)),
            contrast=0.0 if rng.random() < 0.2 else float(rng.uniform(0.6, 1.0)),
            gravity_y=-1.0 if position.endswith("P") else 1.0,
            arms_down=bool(rng.random() < 0.2),
        )
        lesions = tuple(lesion if s == 0 else lesion.grown(float(np.exp(rng.normal(0, 0.35))))
                        for lesion in base)  # fmt: skip
        studies.append(EvalStudy(
            index=s,
            acquisition=_acquisition(rng, an, position, coverage, matrix, pixels, thick),
            state=state,
            rotation=_rotation(axis, np.deg2rad(angle)),
            translation=direction / np.linalg.norm(direction) * shift,
            rotation_deg=angle,
            shift_mm=shift,
            coverage=coverage,
            lesions=lesions,
        ))  # fmt: skip
    return EvalPatient(f"EVAL-{seed}-{index + 1:03d}", an, tuple(studies))


# --------------------------------------------------------------------------- rendering
def _fine_stack(patient: EvalPatient, study: EvalStudy, parts, chunk: int = 24):
    """Paint sub-slices of at most 1 mm and integrate each slice's slab as they come."""
    acq = study.acquisition
    shape, spacing, origin, direction = acq.grid()
    ni, nj, nk = shape
    # Sub-slices of at most 1.7 mm: a 5 mm slab integrates three of them.
    dz = acq.slice_spacing_mm / max(1, int(np.ceil(acq.slice_spacing_mm / 1.7)))
    dz = min(dz, acq.slice_thickness_mm)
    half = acq.slice_thickness_mm / 2 + dz
    t_fine = np.arange(-half, (nk - 1) * acq.slice_spacing_mm + half + 1e-6, dz)
    out = np.zeros((nk, nj, ni), dtype=np.float32)
    weight = np.zeros(nk, dtype=np.float64)
    mapping = patient.mapping(study)
    identity = Mapping(np.eye(3), np.zeros(3), lambda x, y, z: (0 * x, 0 * y, 0 * z), 0.0)
    table = [table_part(acq.position, patient.anatomy.half_depth_back,
                        patient.anatomy.half_depth_front)]  # fmt: skip
    slices_t = np.arange(nk) * acq.slice_spacing_mm
    grid = PaintGrid((len(t_fine), nj, ni), (spacing[0], spacing[1], dz),
                     origin + direction[:, 2] * t_fine[0], direction)  # fmt: skip
    boxes, table_boxes = grid.boxes(parts, mapping), grid.boxes(table, identity)
    for start in range(0, len(t_fine), chunk):
        k_range = (start, min(start + chunk, len(t_fine)))
        hu = parts_paint(parts, mapping, grid, boxes, k_range)
        table_hu = parts_paint(table, identity, grid, table_boxes, k_range)
        hu = np.where(table_hu > -999.0, np.maximum(hu, table_hu), hu)
        for m, t in enumerate(t_fine[k_range[0] : k_range[1]]):
            w = np.clip((acq.slice_thickness_mm / 2 + dz / 2 - np.abs(slices_t - t)) / dz, 0, 1)
            for n in np.flatnonzero(w):
                out[n] += w[n] * hu[m]
                weight[n] += w[n]
    out /= np.maximum(weight, 1e-9)[:, None, None].astype(np.float32)
    return out, (spacing, origin, direction)


def _dense_points(patient: EvalPatient, study: EvalStudy, origin, direction, spacing):
    """Index (i, j) of the humeri when the arms are down (beam-hardening bands between)."""
    if not study.state.arms_down:
        return []
    mapping = patient.mapping(study)
    points = []
    for side in (-1.0, 1.0):
        q = np.array([[side * (patient.anatomy.half_width + 45.0), 0.0, 60.0]])
        lps = mapping.to_lps(q)[0]
        idx = np.linalg.solve(direction * np.asarray(spacing)[None, :], lps - origin)
        points.append((float(idx[0]), float(idx[1])))
    return points


def lesion_truth(patient: EvalPatient, study: EvalStudy, lesion: EvalLesion) -> LesionTruth:
    """Exact volume and centroid of a lesion as rendered (fine LPS grid, breathing included)."""
    mapping = patient.mapping(study)
    centre = mapping.to_lps(np.asarray(lesion.centre)[None])[0]
    half = lesion.reach_mm + 3.0
    step = float(np.clip(half / 40.0, 0.12, 0.5))
    axis = np.arange(-half, half + 1e-6, step)
    inside_count, total = 0, np.zeros(3)
    per_block = max(1, 400_000 // axis.size**2)
    gy, gx = np.meshgrid(axis + centre[1], axis + centre[0], indexing="ij")
    for start in range(0, axis.size, per_block):
        zs = centre[2] + axis[start : start + per_block]
        shape = (zs.size, *gx.shape)
        bx, by = np.broadcast_to(gx, shape), np.broadcast_to(gy, shape)
        bz = np.broadcast_to(zs[:, None, None], shape)
        inside = lesion.field(*mapping.to_reference(bx, by, bz)) < 0
        n = int(inside.sum())
        if n:
            inside_count += n
            total += [bx[inside].sum(), by[inside].sum(), bz[inside].sum()]
    volume = inside_count * step**3 / 1000.0
    centroid = total / max(inside_count, 1)
    return LesionTruth(lesion.lesion_id, lesion.organ, lesion.side, lesion.kind, lesion.place,
                       lesion.negative, float(volume), vec3(centroid))  # fmt: skip


def study_render(patient: EvalPatient, study: EvalStudy, *, seed: int = 0) -> RenderedEval:
    """The series (HU, scanner geometry) and the truth of every lesion and cyst in its range."""
    an = patient.anatomy
    parts = parts_build(an, study.state)
    for lesion in study.lesions:
        parts += lesion.parts(study.state, an.liver_hu)
    hu, (spacing, origin, direction) = _fine_stack(patient, study, parts)
    rng = np.random.default_rng(np.random.SeedSequence([seed, study.index, 4711]))
    dense = _dense_points(patient, study, origin, direction, spacing)
    hu = scanner_effects(hu, study.acquisition, rng, dense)
    volume = Volume(array=np.ascontiguousarray(hu, dtype=np.float32), spacing_mm=spacing,
                    origin_mm=vec3(origin), direction=direction)  # fmt: skip
    lo = np.minimum(
        volume.index_to_lps(np.zeros(3)), volume.index_to_lps(np.asarray(volume.shape_ijk) - 1.0)
    )
    hi = np.maximum(
        volume.index_to_lps(np.zeros(3)), volume.index_to_lps(np.asarray(volume.shape_ijk) - 1.0)
    )
    truths = []
    for lesion in study.lesions:
        truth = lesion_truth(patient, study, lesion)
        c = np.asarray(truth.centre_lps_mm)
        if truth.volume_ml > 0 and np.all(c >= lo + 5.0) and np.all(c <= hi - 5.0):
            truths.append(truth)
    return RenderedEval(volume, tuple(truths))


def landmarks_reference(anatomy: EvalAnatomy) -> dict[str, np.ndarray]:
    """Anatomical landmarks in the reference frame (mm): carina, hila, liver dome, vertebrae."""
    marks = {
        "carina": np.array([0.0, 0.0, anatomy.carina_z]),
        "right_hilum": np.array([-45.0, 0.0, anatomy.carina_z - 30.0]),
        "left_hilum": np.array([45.0, 0.0, anatomy.carina_z - 30.0]),
        "liver_dome": np.array(
            [
                -0.42 * anatomy.half_width,
                0.0,
                float(anatomy.diaphragm_z(-0.42 * anatomy.half_width, 0.0)) - 5.0,
            ]
        ),  # fmt: skip
    }
    z = anatomy.bottom_z + anatomy.spine_phase
    n = 0
    while z < anatomy.top_z:
        if anatomy.dome_right_z - 200 < z < anatomy.apex_z:
            marks[f"vertebra_{n}"] = np.array([0.0, float(anatomy.spine_y(z)), z])
            n += 1
        z += anatomy.spine_pitch
    return marks


def landmarks_lps(patient: EvalPatient, study: EvalStudy, names=None) -> dict[str, np.ndarray]:
    """The landmarks (and every lesion centre, ``lesion:<id>``) in a study's LPS."""
    marks = landmarks_reference(patient.anatomy)
    marks |= {f"lesion:{lesion.lesion_id}": np.asarray(lesion.centre) for lesion in study.lesions}
    mapping = patient.mapping(study)
    keys = [k for k in marks if names is None or k in names]
    points = mapping.to_lps(np.array([marks[k] for k in keys]))
    return dict(zip(keys, points, strict=True))
