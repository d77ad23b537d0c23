"""How well a registration aligns two CTs, and when it counts as failed.

What matters for following lesions is that the same anatomy lands in the same place,
so `registration_quality` measures, on copies of about 4 mm, where both studies have
data:

- the overlap of robust HU-threshold masks, each made in its own study (body: above
  -500 HU, largest component, holes filled slice by slice; lungs: air inside the
  body, `anatomy.body_lung_arrays`), the moving ones carried onto the fixed grid by
  the transform: body and lung Dice, and the lungs' mean surface distance (mm);
- agreement of landmarks: the vertebral column (bone near the body's midline, behind
  its centre) found in each study independently; carried by the transform, the moving
  one should lie on the fixed one (mean symmetric distance between the two, mm). The
  spine is rigid, so breathing does not move it;
- that the transform is the best fit near it: moving the follow-up 6 mm along, or
  turning it 4 degrees about, any axis must not raise the correlation by more than
  ``max_optimum_gain`` (a registration stopped short of the right alignment, or
  caught 15 mm away along the spine where nothing else would tell, gains there);
- that it is clearly better than the follow-up shifted along S by half a vertebra to
  two (``LONG_AXIS_PROBES_MM``, either way): the spine repeats every vertebra and the
  spine landmarks are a column the same at every height, so a registration caught a
  vertebra or two off fits locally, the small moves above gain nothing, and, in a
  follow-up of the abdomen alone (no lung apex or base), nothing else tells;
- that it is clearly better than the follow-up mirrored left-right about the patient's
  sagittal plane: body, lungs and spine are nearly symmetric, so a follow-up whose
  header mirrors it overlaps in every mask, and only the organs that are not (heart,
  liver, spleen, stomach) tell. Each rival is scored on the fixed body voxels both it
  and the found transform carry into the follow-up's data, and recorded;
- the correlation of HU (NCC) inside the fixed body, and how much of the smaller of
  the two bodies the other covers (a follow-up covering part of the baseline's range
  registers on what both show and is not failed for the rest).

The limits (`QualityThresholds`) flag gross failures and pass good registrations:
masks made in each study's own space do not break where a warped image is cut by the
other study's field of view, and breathing between studies moves the lung bases by
millimetres, which Dice and surface distance tolerate. A registration beyond a limit is
``failed`` with the reasons, and a caller never uses it silently.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from imaging.core.geometry.triples import vec3
from imaging.core.geometry.volume import Volume
from imaging.core.registration.anatomy import body_lung_arrays, volume_coarse
from imaging.core.registration.start import body_axes
from imaging.core.registration.transforms import SpatialTransform, rotation_matrix

#: HU window for the registration metric: air to dense bone.
METRIC_HU = (-1000.0, 1000.0)
SPINE_BONE_HU = 200.0
SPINE_HALF_WIDTH_MM = 45.0
#: Shifts (mm, each way along S) of the moving study that must fit worse than the found
#: transform: half, one, one and a half and two vertebral heights (a vertebra and its
#: disc: about 25 mm in the chest, 35 mm in the lumbar spine).
LONG_AXIS_PROBES_MM = (15.0, 30.0, 45.0, 60.0)


@dataclass(frozen=True)
class QualityThresholds:
    """Beyond any of these a registration is marked failed.

    Set from `benchmarks/registration.py` (every patient position, 0.6-5 mm slices,
    poses up to 15 degrees and 30 mm, partial coverage, breathing): good registrations
    (TRE under 3 mm) scored spine distance <= 2.5 mm, lung surface distance <= 2.5 mm,
    lung Dice >= 0.9; moved 15 mm or 10 degrees off, every one failed on the spine
    distance (4.4-6.3 mm) or on a small move raising the correlation (by 0.04-0.15).
    Body Dice only flags gross failures: the body outline is not rigid (arms up in one
    study and down in the next, the table behind a supine patient and in front of a
    prone one, both above -500 HU), and good registrations scored 0.85-0.94, no better
    than registrations 15 mm off.

    The rivals' margins (NCC, on the voxels both cover), from the evaluation generator's
    small pairs (5 patients; full, chest-only and abdomen-only follow-ups, breathing):
    the true transforms' closest shift along S scored 0.04-0.19 below them (0.03 for one
    that breathing moved off the best fit, failed by the 6 mm moves anyway), their
    mirror 0.12-0.36 below, and 11 registrations of abdomen-only follow-ups (TRE under 3
    mm) passed; the true transforms one or two vertebrae off, abdomen only (passed by
    every other check), had a shift scoring 0.06-0.39 above them, and registrations of
    follow-ups mirrored by their header (passed by every other check) their mirror
    0.14-0.19 above them.
    """

    min_ncc: float = 0.3
    min_body_dice: float = 0.7
    min_lung_dice: float = 0.7
    max_lung_surface_mm: float = 6.0
    max_spine_mm: float = 4.0
    max_optimum_gain: float = 0.02
    min_overlap: float = 0.25
    max_rotation_deg: float = 30.0
    scale_range: tuple[float, float] = (0.8, 1.25)
    #: Lung overlap is only judged when both studies show at least this much lung there.
    min_lung_ml: float = 200.0
    #: The found transform's NCC must beat the moving study shifted along S by each of
    #: `LONG_AXIS_PROBES_MM` by at least this (on the voxels both cover).
    min_long_axis_margin: float = 0.02
    #: ... and beat the moving study mirrored left-right by at least this.
    min_mirror_margin: float = 0.02


@dataclass(frozen=True)
class RegistrationQuality:
    """How well the moving study lands on the fixed one (see the module docstring).

    ``overlap_fraction``: share of the smaller study's body that the other covers;
    ``lung_dice``/``lung_surface_mm`` None when too little lung is seen in both;
    ``spine_mm`` None when no spine was found in both; ``score`` the mean of NCC, body
    Dice and lung Dice (when judged), 0..1.
    """

    ncc: float
    body_dice: float
    lung_dice: float | None
    overlap_fraction: float
    rotation_deg: float
    scales: tuple[float, float, float]
    score: float
    failed: bool
    reasons: tuple[str, ...] = ()
    lung_surface_mm: float | None = None
    spine_mm: float | None = None
    spine_points: int = 0
    optimum_gain: float = 0.0
    optimum_move: str = ""
    long_axis_probes: tuple[tuple[float, float, float], ...] = ()
    mirror_probe: tuple[float, float] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Overlap:
    """What the two studies share on the fixed grid (None: not judged)."""

    ncc: float
    body_dice: float
    lung_dice: float | None
    lung_surface_mm: float | None
    overlap_fraction: float
    spine_mm: float | None
    spine_points: int
    optimum_gain: float
    optimum_move: str
    long_axis_probes: tuple[tuple[float, float, float], ...] = ()
    mirror_probe: tuple[float, float] | None = None


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return float(2.0 * (a & b).sum() / total) if total else 0.0


def _surface_mm(a: np.ndarray, b: np.ndarray, spacing_mm: tuple[float, float, float]) -> float:
    """Mean symmetric distance (mm) between the surfaces of two masks."""
    sampling = spacing_mm[::-1]
    surface_a = a & ~ndimage.binary_erosion(a)
    surface_b = b & ~ndimage.binary_erosion(b)
    if not surface_a.any() or not surface_b.any():
        return float("inf")
    to_b = ndimage.distance_transform_edt(~surface_b, sampling=sampling)
    to_a = ndimage.distance_transform_edt(~surface_a, sampling=sampling)
    return float(0.5 * (to_b[surface_a].mean() + to_a[surface_b].mean()))


def spine_mask(volume: Volume, body: np.ndarray) -> np.ndarray:
    """The vertebral column on an LPS-aligned coarse copy: bone (above 200 HU) inside the
    body, within 45 mm of the body's left-right centre and behind its centre less 10 mm,
    slice by slice (ribs, sternum and arms lie elsewhere)."""
    hu = volume.array
    nz, ny, nx = hu.shape
    x = volume.origin_mm[0] + volume.spacing_mm[0] * np.arange(nx)
    y = volume.origin_mm[1] + volume.spacing_mm[1] * np.arange(ny)
    out = np.zeros(hu.shape, bool)
    for k in range(nz):
        section = body[k]
        if section.sum() < 20:
            continue
        jj, ii = np.nonzero(section)
        near = (np.abs(x - x[ii].mean()) <= SPINE_HALF_WIDTH_MM)[None, :] & (
            y >= y[jj].mean() - 10.0
        )[:, None]
        out[k] = section & near & (hu[k] > SPINE_BONE_HU)
    return out


def _mask_distance_mm(a: np.ndarray, b: np.ndarray, spacing_mm, within: np.ndarray) -> float | None:
    """Mean symmetric distance (mm) from the voxels of each mask to the other mask,
    counted where ``within`` (both studies have data); None when either is nearly empty."""
    a_in, b_in = a & within, b & within
    if a_in.sum() < 10 or b_in.sum() < 10:
        return None
    sampling = tuple(spacing_mm)[::-1]
    to_b = ndimage.distance_transform_edt(~b, sampling=sampling)
    to_a = ndimage.distance_transform_edt(~a, sampling=sampling)
    return float(0.5 * (to_b[a_in].mean() + to_a[b_in].mean()))


@dataclass(frozen=True, eq=False)
class CoarseStudy:
    """A study's coarse copy with its own body, lung and spine masks."""

    volume: Volume
    body: np.ndarray
    lungs: np.ndarray
    spine: np.ndarray


def coarse_study(
    volume: Volume, *, spacing_mm: float = 4.0, coarse: Volume | None = None
) -> CoarseStudy:
    """The coarse copy (or the given one) and its masks."""
    coarse = coarse if coarse is not None else volume_coarse(volume=volume, spacing_mm=spacing_mm)
    body, lungs = body_lung_arrays(
        ndimage.gaussian_filter(coarse.array, 0.7), coarse.voxel_volume_ml
    )
    return CoarseStudy(coarse, body, lungs, spine_mask(coarse, body))


def _fixed_in_moving(fixed: Volume, transform: SpatialTransform) -> np.ndarray:
    """Every fixed voxel's centre carried into the moving study's LPS mm, (k, j, i, 3).

    A B-spline is evaluated once as a displacement field on the fixed grid (one call
    into ITK), so the small moves of `_optimum_gain` cost a matrix product and a
    trilinear lookup each rather than a B-spline resampling.
    """
    k, j, i = np.indices(fixed.array.shape, dtype=np.float32)
    points = fixed.index_to_lps(np.stack([i, j, k], axis=-1))
    if transform.bspline is not None:
        field = sitk.TransformToDisplacementFieldFilter()
        field.SetReferenceImage(fixed.to_sitk())
        field.SetOutputPixelType(sitk.sitkVectorFloat64)
        points = points + sitk.GetArrayFromImage(field.Execute(transform.bspline))
    return points @ transform.matrix[:3, :3].T + transform.matrix[:3, 3]


def _lookup(moving: Volume, points_lps: np.ndarray, *, order: int,
            move: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """``moving`` sampled at LPS points (any leading shape), trilinear (``order`` 1) or
    nearest (0), and whether each point lies within its voxels (half a voxel round the
    centres); beyond them the values are those of the nearest edge. ``move`` (4x4, in
    the moving study's LPS mm) moves the points first, in the same matrix product that
    turns them into indices (the probes of `_BodySampler` each sample every body voxel)."""
    move = np.eye(4) if move is None else move
    to_index = moving.direction / np.asarray(moving.spacing_mm)[None, :]
    linear = move[:3, :3].T @ to_index
    offset = (move[:3, 3] - np.asarray(moving.origin_mm)) @ to_index
    ijk = points_lps.reshape(-1, 3) @ linear + offset
    values = ndimage.map_coordinates(moving.array, ijk[:, ::-1].T, order=order, mode="nearest",
                                     prefilter=False)  # fmt: skip
    inside = np.all((ijk >= -0.5) & (ijk <= np.asarray(moving.shape_ijk) - 0.5), axis=1)
    shape = points_lps.shape[:-1]
    return values.reshape(shape), inside.reshape(shape)


def _carried(study: CoarseStudy, points_lps: np.ndarray) -> dict[str, np.ndarray]:
    """The moving study's data extent, masks and HU at the fixed voxels (``points_lps``:
    where each lands in the moving study, `_fixed_in_moving`)."""
    moving = study.volume
    label = np.ones(moving.array.shape, np.uint8)
    label[study.body] = 2
    label[study.lungs] = 3
    label[study.spine] = 4
    warped, inside = _lookup(moving.with_array(label, kind="label"), points_lps, order=0)
    warped[~inside] = 0
    hu, _ = _lookup(moving, points_lps, order=1)
    return {"inside": inside, "body": warped >= 2, "lungs": warped == 3, "spine": warped == 4,
            "hu": np.where(inside, hu, METRIC_HU[0])}  # fmt: skip


def _ncc(fixed: CoarseStudy, hu: np.ndarray, region: np.ndarray) -> float:
    if region.sum() <= 100:
        return 0.0
    a = np.clip(fixed.volume.array[region], *METRIC_HU)
    b = np.clip(hu[region], *METRIC_HU)
    return float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else 0.0


def _moves(centre: np.ndarray, shift_mm: float = 6.0, turn_deg: float = 4.0):
    """Small rigid moves of the moving study: shifts along and turns about each axis."""
    for axis, name in zip(np.eye(3), "LPS", strict=True):
        for sign in (-1.0, 1.0):
            move = np.eye(4)
            move[:3, 3] = sign * shift_mm * axis
            yield f"shift {sign * shift_mm:+g} mm along {name}", move
            turn = np.eye(4)
            turn[:3, :3] = rotation_matrix(axis=axis, angle_deg=sign * turn_deg)
            turn[:3, 3] = centre - turn[:3, :3] @ centre
            yield f"turn {sign * turn_deg:+g} deg about {name}", turn


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else 0.0


@dataclass(frozen=True, eq=False)
class _BodySampler:
    """The fixed body's HU, and the moving study's HU where each fixed body voxel lands
    under the transform followed by a move of the moving study (4x4, moving LPS mm)."""

    moving: Volume
    points_lps: np.ndarray
    hu: np.ndarray

    @classmethod
    def of(cls, fixed: CoarseStudy, moving: CoarseStudy, points_lps: np.ndarray) -> _BodySampler:
        return cls(moving.volume, points_lps[fixed.body],
                   np.clip(fixed.volume.array[fixed.body], *METRIC_HU))  # fmt: skip

    def sample(self, move: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The moved moving study's HU at the fixed body voxels, and where it has data."""
        hu, inside = _lookup(self.moving, self.points_lps, order=1, move=move)
        return np.clip(hu, *METRIC_HU), inside

    @cached_property
    def here(self) -> tuple[np.ndarray, np.ndarray]:
        """`sample` without a move: the transform as found."""
        return self.sample(np.eye(4))

    def ncc(self, move: np.ndarray | None = None) -> float:
        hu, inside = self.here if move is None else self.sample(move)
        return _corr(self.hu[inside], hu[inside]) if inside.sum() > 100 else 0.0

    def rival(self, move: np.ndarray) -> tuple[float, float] | None:
        """NCC of the found transform and of the moved one on the fixed body voxels both
        carry into the moving study's data (the same voxels, so a move that shows less
        of the follow-up is not favoured); None when they share under a quarter of them."""
        hu, inside = self.here
        hu_moved, inside_moved = self.sample(move)
        both = inside & inside_moved
        if both.sum() <= 100 or both.sum() < 0.25 * inside.sum():
            return None
        return _corr(self.hu[both], hu[both]), _corr(self.hu[both], hu_moved[both])


def _optimum_gain(sampler: _BodySampler, centre: np.ndarray) -> tuple[float, str]:
    """The largest rise of NCC a small move of the moving study gives, and which move
    (each NCC over the fixed body where the moved study has data)."""
    best, which = 0.0, ""
    here = sampler.ncc()
    for name, move in _moves(centre):
        gain = sampler.ncc(move) - here
        if gain > best:
            best, which = gain, name
    return best, which


def _long_axis_probes(sampler: _BodySampler) -> tuple[tuple[float, float, float], ...]:
    """(shift mm, NCC found, NCC shifted) for the moving study shifted along S by each of
    ``LONG_AXIS_PROBES_MM`` either way: the spine repeats every vertebra, so a
    registration caught one or two vertebrae off along it fits locally, and only a
    shift of about a vertebra finds the better fit (a follow-up of the abdomen alone has
    no lung apex or base to tell)."""
    probes = []
    for shift_mm in sorted({s * d for d in LONG_AXIS_PROBES_MM for s in (-1.0, 1.0)}):
        move = np.eye(4)
        move[2, 3] = shift_mm
        scores = sampler.rival(move)
        if scores is not None:
            probes.append((shift_mm, *scores))
    return tuple(probes)


def _mirror_probe(sampler: _BodySampler, moving: CoarseStudy) -> tuple[float, float] | None:
    """(NCC found, NCC mirrored) for the moving study mirrored left-right about the
    patient's sagittal plane: through its body's centre, across the long axis of the
    body's axial sections (`start.body_axes`; left-right when they are nearly round).
    Body, lungs and spine are nearly symmetric, so a follow-up whose header mirrors it
    registers to the baseline with every mask overlapping, and only the organs that are
    not symmetric (heart, liver, spleen, stomach, aorta) tell; mirrored back it fits
    better. The plane is the patient's, not the scanner's: a patient lying turned by an
    angle would otherwise be compared at twice that angle."""
    centre, angle = body_axes(moving.volume, moving.body)
    # The long axis folded to within 90 degrees of left-right; one more than 30 degrees
    # off it is no patient's lying turned (as `start` judges it): left-right then.
    angle = (angle + np.pi / 2) % np.pi - np.pi / 2 if angle is not None else 0.0
    angle = angle if abs(angle) <= np.radians(30.0) else 0.0
    normal = np.array([np.cos(angle), np.sin(angle), 0.0])
    mirror = np.eye(4)
    mirror[:3, :3] -= 2.0 * np.outer(normal, normal)
    mirror[:3, 3] = 2.0 * normal * (normal @ centre)
    return sampler.rival(mirror)


def _overlap(fixed: CoarseStudy, moving: CoarseStudy, transform: SpatialTransform,
             thresholds: QualityThresholds) -> _Overlap:  # fmt: skip
    points = _fixed_in_moving(fixed.volume, transform)
    carried = _carried(moving, points)
    inside = carried["inside"]
    region = fixed.body & inside
    ncc = _ncc(fixed, carried["hu"], region)
    gain, move = 0.0, ""
    long_axis: tuple[tuple[float, float, float], ...] = ()
    mirror = None
    kji = np.argwhere(moving.body)
    if len(kji) and fixed.body.any():
        centre = moving.volume.index_to_lps(kji[:, ::-1].mean(axis=0))
        sampler = _BodySampler.of(fixed, moving, points)
        gain, move = _optimum_gain(sampler, centre)
        long_axis = _long_axis_probes(sampler)
        mirror = _mirror_probe(sampler, moving)
    voxel_ml = fixed.volume.voxel_volume_ml
    # The smaller study is the one that should be covered: a follow-up of part of the
    # baseline's range lies wholly inside it, and the baseline's rest is not a failure.
    share_fixed = region.sum() / max(1, fixed.body.sum())
    share_moving = (
        carried["body"].sum()
        * voxel_ml
        / max(moving.body.sum() * moving.volume.voxel_volume_ml, 1e-9)
    )
    lung_f, lung_m = fixed.lungs & inside, carried["lungs"]
    judged = min(lung_f.sum(), lung_m.sum()) * voxel_ml >= thresholds.min_lung_ml
    spine = _mask_distance_mm(fixed.spine, carried["spine"], fixed.volume.spacing_mm, inside)
    n_spine = int((fixed.spine & inside).sum())
    return _Overlap(
        ncc=ncc,
        body_dice=_dice(fixed.body & inside, carried["body"]),
        lung_dice=_dice(lung_f, lung_m) if judged else None,
        lung_surface_mm=_surface_mm(lung_f, lung_m, fixed.volume.spacing_mm) if judged else None,
        overlap_fraction=float(min(1.0, max(share_fixed, share_moving))),
        spine_mm=spine,
        spine_points=n_spine,
        optimum_gain=gain,
        optimum_move=move,
        long_axis_probes=long_axis,
        mirror_probe=mirror,
    )


def _failure_reasons(
    overlap: _Overlap, rotation_deg: float, scales: np.ndarray, thresholds: QualityThresholds
) -> list[str]:
    t = thresholds
    # The shift along S that comes closest to (or beyond) the found transform's fit.
    shift_mm, found, shifted = max(
        overlap.long_axis_probes, key=lambda p: p[2] - p[1], default=(0.0, 1.0, 0.0)
    )
    mirror_found, mirrored = overlap.mirror_probe or (1.0, 0.0)
    checks = [
        (overlap.spine_mm is not None and overlap.spine_mm > t.max_spine_mm,
         f"spine landmarks {overlap.spine_mm or 0:.1f} mm apart > {t.max_spine_mm}"),
        (overlap.optimum_gain > t.max_optimum_gain,
         f"not the best fit: a {overlap.optimum_move} raises NCC by {overlap.optimum_gain:.3f} "
         f"> {t.max_optimum_gain}"),
        (overlap.lung_dice is not None and overlap.lung_dice < t.min_lung_dice,
         f"lung Dice {overlap.lung_dice or 0:.2f} < {t.min_lung_dice}"),
        (overlap.lung_surface_mm is not None and overlap.lung_surface_mm > t.max_lung_surface_mm,
         f"lung surfaces {overlap.lung_surface_mm or 0:.1f} mm apart > {t.max_lung_surface_mm}"),
        (shifted > found - t.min_long_axis_margin,
         f"not clearly the best fit along the spine (a vertebra off?): shifted {shift_mm:+g} mm "
         f"along S the follow-up scores NCC {shifted:.3f}, within {t.min_long_axis_margin} of "
         f"or above the found transform's {found:.3f}"),
        (mirrored > mirror_found - t.min_mirror_margin,
         f"left and right may be swapped: mirrored left-right the follow-up scores NCC "
         f"{mirrored:.3f}, within {t.min_mirror_margin} of or above the found transform's "
         f"{mirror_found:.3f}"),
        (overlap.ncc < t.min_ncc, f"NCC {overlap.ncc:.2f} < {t.min_ncc}"),
        (overlap.body_dice < t.min_body_dice, f"body Dice {overlap.body_dice:.2f} < {t.min_body_dice}"),
        (overlap.overlap_fraction < t.min_overlap,
         f"the other study covers {overlap.overlap_fraction:.0%} of the smaller one's body "
         f"< {t.min_overlap:.0%}"),
        (rotation_deg > t.max_rotation_deg, f"rotation {rotation_deg:.1f} deg > {t.max_rotation_deg}"),
        (scales.min() < t.scale_range[0] or scales.max() > t.scale_range[1],
         f"scales {np.round(scales, 3).tolist()} outside [{t.scale_range[0]}, {t.scale_range[1]}]"),
    ]  # fmt: skip
    return [reason for failed, reason in checks if failed]


def study_registration_quality(
    *,
    fixed: CoarseStudy,
    moving: CoarseStudy,
    transform: SpatialTransform,
    thresholds: QualityThresholds,
) -> RegistrationQuality:
    """Quality of ``transform`` (fixed -> moving) on coarse studies already prepared."""
    overlap = _overlap(fixed, moving, transform, thresholds)
    rotation = transform.rotation_deg
    scales = transform.scales
    reasons = _failure_reasons(overlap, rotation, scales, thresholds)
    terms = [max(overlap.ncc, 0.0), overlap.body_dice]
    terms += [overlap.lung_dice] if overlap.lung_dice is not None else []

    def rounded(value: float | None, digits: int) -> float | None:
        return None if value is None else round(float(value), digits)

    return RegistrationQuality(
        ncc=round(overlap.ncc, 4),
        body_dice=round(overlap.body_dice, 4),
        lung_dice=rounded(overlap.lung_dice, 4),
        overlap_fraction=round(overlap.overlap_fraction, 4),
        rotation_deg=round(rotation, 3),
        scales=vec3(round(float(s), 4) for s in scales),
        score=round(float(np.mean(terms)), 4),
        failed=bool(reasons),
        reasons=tuple(reasons),
        lung_surface_mm=rounded(overlap.lung_surface_mm, 2),
        spine_mm=rounded(overlap.spine_mm, 2),
        spine_points=overlap.spine_points,
        optimum_gain=round(overlap.optimum_gain, 4),
        optimum_move=overlap.optimum_move,
        long_axis_probes=tuple(
            (shift, round(found, 4), round(shifted, 4))
            for shift, found, shifted in overlap.long_axis_probes
        ),
        mirror_probe=(
            None
            if overlap.mirror_probe is None
            else (round(overlap.mirror_probe[0], 4), round(overlap.mirror_probe[1], 4))
        ),
    )


def coarse_registration_quality(
    *,
    fixed_coarse: Volume,
    moving_coarse: Volume,
    transform: SpatialTransform,
    thresholds: QualityThresholds,
    fixed_masks: tuple[np.ndarray, np.ndarray] | None = None,
) -> RegistrationQuality:
    """Quality of ``transform`` on coarse copies already made (``fixed_masks``: the fixed
    body and lung masks when the caller has them)."""
    if fixed_masks is not None:
        fixed = CoarseStudy(fixed_coarse, fixed_masks[0], fixed_masks[1],
                            spine_mask(fixed_coarse, fixed_masks[0]))  # fmt: skip
    else:
        fixed = coarse_study(fixed_coarse, coarse=fixed_coarse)
    moving = coarse_study(moving_coarse, coarse=moving_coarse)
    return study_registration_quality(fixed=fixed, moving=moving, transform=transform,
                                      thresholds=thresholds)  # fmt: skip


def registration_quality(
    *,
    fixed: Volume,
    moving: Volume,
    transform: SpatialTransform,
    thresholds: QualityThresholds | None = None,
    spacing_mm: float = 4.0,
) -> RegistrationQuality:
    """Quality of ``transform`` (fixed -> moving) on coarse copies at ``spacing_mm``."""
    return coarse_registration_quality(
        fixed_coarse=volume_coarse(volume=fixed, spacing_mm=spacing_mm),
        moving_coarse=volume_coarse(volume=moving, spacing_mm=spacing_mm),
        transform=transform,
        thresholds=thresholds or QualityThresholds(),
    )
