"""Where both registration backends start: coarse copies, body and lung masks, and the
best of several starting poses.

Both backends work on block-averaged copies of about 4 mm (`anatomy.volume_coarse`):
rigid alignment of a trunk is decided by its large structures, and a 512x512x300 pair
reduces to about 90x90x80 voxels. Starting poses are tried before any optimisation,
because gradient descent only finds the optimum it starts near:

- the header's geometry as it is (both studies in DICOM patient coordinates, which
  already account for head-first/feet-first and supine/prone);
- the body's centroid, the lungs' centroid (when both studies show lungs) and the
  body's centroid in the axial plane only (a follow-up covering part of the baseline's
  range has its body centroid elsewhere along the patient), each
- rotated about the long axis by the difference of the axial sections' principal axes
  (moments) and 8 degrees either side; the three best then also shifted along the
  patient by up to 45 mm.

Each is scored on 8 mm copies by the correlation of HU over the fixed body where the
moving study has data, weighted down when the two overlap little; the best pose is
handed to the rigid stage, and with it the best distinct one when that scored within
10 % of it (the rigid stage keeps the better result). Metric
sampling is confined to the fixed body (dilated by two voxels so its outline counts)
where the moving study, placed by the start, has data: a follow-up covering only part
of the baseline then registers on what both show.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from imaging.core.geometry.volume import Volume
from imaging.core.registration.anatomy import body_lung_arrays, volume_coarse

#: HU window of the start's correlation (air to dense bone).
_HU = (-1000.0, 1000.0)


@dataclass(frozen=True, eq=False)
class RegistrationStart:
    """Coarse copies, the fixed masks, the starting pose and where the metric samples.

    The pose is a rotation by ``axial_angle_rad`` about the fixed study's long axis
    through ``centre_fixed``, then a shift by ``centre_moving - centre_fixed``.
    ``candidates`` lists the best poses tried with their scores (best first), ``tried``
    how many were; ``alternative`` is the best pose distinct from the chosen one when it
    scored within 10 % of it, else None.
    """

    fixed: Volume
    moving: Volume
    fixed_masks: tuple[np.ndarray, np.ndarray]
    centre_fixed: np.ndarray
    centre_moving: np.ndarray
    axial_angle_rad: float
    sampling: np.ndarray | None = None
    candidates: tuple[dict, ...] = ()
    tried: int = 0
    alternative: RegistrationStart | None = None

    @property
    def matrix(self) -> np.ndarray:
        """The starting pose as a 4x4 fixed -> moving matrix."""
        return _pose_matrix(self.centre_fixed, self.centre_moving - self.centre_fixed,
                            self.axial_angle_rad)  # fmt: skip


def _pose_matrix(centre: np.ndarray, shift: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = centre + shift - rotation @ centre
    return matrix


def body_axes(volume: Volume, body: np.ndarray) -> tuple[np.ndarray, float | None]:
    """Body centroid (LPS mm) and the angle (rad) of the long axis of its axial section.

    The angle is None when the section is nearly round (axes within 10 %). Moments are
    taken in voxel indices and carried to LPS by the grid's linear map (exact).
    """
    kji = np.argwhere(body)
    if len(kji) == 0:
        return volume.index_to_lps((np.asarray(volume.shape_ijk) - 1) / 2.0), None
    ijk = kji[:, ::-1].astype(float)
    mean = ijk.mean(axis=0)
    centre = volume.index_to_lps(mean)
    linear = volume.direction * np.asarray(volume.spacing_mm)[None, :]
    cov = linear @ np.cov((ijk - mean).T) @ linear.T
    values, vectors = np.linalg.eigh(cov[:2, :2])
    if values[1] < 1.21 * values[0]:  # axis ratio below 1.1
        return centre, None
    major = vectors[:, 1]
    return centre, math.atan2(major[1], major[0])


def _centroid(volume: Volume, mask: np.ndarray) -> np.ndarray | None:
    kji = np.argwhere(mask)
    if len(kji) < 10:
        return None
    return volume.index_to_lps(kji[:, ::-1].mean(axis=0))


@dataclass(frozen=True, eq=False)
class _Scorer:
    """Correlation of a candidate pose on 8 mm copies, weighted by how much overlaps."""

    fixed: sitk.Image
    moving: sitk.Image
    fixed_hu: np.ndarray
    body: np.ndarray
    voxel_ml: float
    moving_body_ml: float

    def score(self, matrix: np.ndarray) -> tuple[float, float, float]:
        """(score, correlation, overlap) of the fixed -> moving ``matrix``.

        Overlap: the fixed body where the moving study has data, as a share of the
        smaller of the two bodies (1 for a follow-up that covers part of the baseline's
        range and sits right).
        """
        affine = sitk.AffineTransform(3)
        affine.SetMatrix(tuple(matrix[:3, :3].flatten()))
        affine.SetTranslation(tuple(matrix[:3, 3]))
        warped = sitk.GetArrayViewFromImage(
            sitk.Resample(self.moving, self.fixed, affine, sitk.sitkLinear, -5000.0)
        )
        inside = self.body & (warped > -4000.0)
        n = int(inside.sum())
        if n < 50:
            return 0.0, 0.0, 0.0
        a = self.fixed_hu[inside]
        b = np.clip(warped[inside], *_HU)
        ncc = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else 0.0
        smaller = min(float(self.body.sum()) * self.voxel_ml, self.moving_body_ml)
        overlap = n * self.voxel_ml / max(smaller, 1e-9)
        return ncc * min(1.0, overlap / 0.6), ncc, overlap


def _scorer(fixed_c: Volume, moving_c: Volume, body_m: np.ndarray) -> _Scorer:
    fixed_h = volume_coarse(volume=fixed_c, spacing_mm=2.0 * max(fixed_c.spacing_mm))
    moving_h = volume_coarse(volume=moving_c, spacing_mm=2.0 * max(moving_c.spacing_mm))
    body_h, _ = body_lung_arrays(ndimage.gaussian_filter(fixed_h.array, 0.5),
                                 fixed_h.voxel_volume_ml)  # fmt: skip
    return _Scorer(
        sitk.Cast(fixed_h.to_sitk(), sitk.sitkFloat32),
        sitk.Cast(moving_h.to_sitk(), sitk.sitkFloat32),
        np.clip(fixed_h.array, *_HU),
        body_h,
        fixed_h.voxel_volume_ml,
        float(body_m.sum()) * moving_c.voxel_volume_ml,
    )


def _candidate_shifts(
    fixed_c, moving_c, masks_f, masks_m, centre_f, centre_m
) -> dict[str, np.ndarray]:
    shifts = {"header": np.zeros(3), "body": centre_m - centre_f}
    shifts["body_axial"] = np.array([*(centre_m - centre_f)[:2], 0.0])
    lung_f, lung_m = _centroid(fixed_c, masks_f[1]), _centroid(moving_c, masks_m[1])
    enough = min(
        masks_f[1].sum() * fixed_c.voxel_volume_ml, masks_m[1].sum() * moving_c.voxel_volume_ml
    )
    if lung_f is not None and lung_m is not None and enough >= 200.0:
        shifts["lungs"] = lung_m - lung_f
    return shifts


def _distinct(a: dict, b: dict) -> bool:
    return bool(np.linalg.norm(np.subtract(a["shift_mm"], b["shift_mm"])) > 10.0
                or abs(a["angle_deg"] - b["angle_deg"]) > 5.0)  # fmt: skip


def _axial_angle(angle_f: float | None, angle_m: float | None) -> float:
    """Difference of the axial sections' long axes, folded into (-90, 90] degrees."""
    if angle_f is None or angle_m is None:
        return 0.0
    angle = (angle_m - angle_f + math.pi / 2) % math.pi - math.pi / 2
    return angle if abs(angle) <= math.radians(30.0) else 0.0  # implausible: don't trust it


def _candidates(fixed_c, moving_c, masks_f, masks_m, axes_f, axes_m) -> list[dict]:
    """Every starting pose tried, scored, best first: each shift at each angle, then the
    three best shifted along the patient by up to 45 mm."""
    (centre_f, angle_f), (centre_m, angle_m) = axes_f, axes_m
    moments = _axial_angle(angle_f, angle_m)
    scorer = _scorer(fixed_c, moving_c, masks_m[0])
    shifts = _candidate_shifts(fixed_c, moving_c, masks_f, masks_m, centre_f, centre_m)
    angles = sorted({0.0, moments, moments - math.radians(8), moments + math.radians(8)})
    tried = []

    def trial(name: str, shift: np.ndarray, angle: float) -> dict:
        score, ncc, overlap = scorer.score(_pose_matrix(centre_f, shift, angle))
        return {"from": name, "shift_mm": shift.round(2).tolist(),
                "angle_deg": round(math.degrees(angle), 2), "score": round(score, 4),
                "ncc": round(ncc, 4), "overlap": round(overlap, 3)}  # fmt: skip

    for name, shift in shifts.items():
        tried += [trial(name, shift, angle) for angle in angles]
    for first in sorted(tried, key=lambda c: -c["score"])[:3]:
        for dz in (-45.0, -30.0, -15.0, 15.0, 30.0, 45.0):
            shift = np.asarray(first["shift_mm"]) + [0.0, 0.0, dz]
            tried.append(trial(first["from"] + f" {dz:+g} mm S", shift,
                               math.radians(first["angle_deg"])))  # fmt: skip
    return sorted(tried, key=lambda c: -c["score"])


def registration_start(
    *, fixed: Volume, moving: Volume, spacing_mm: float, search: bool = True
) -> RegistrationStart:
    """Coarse copies, body and lung masks, the best starting pose and an alternative.

    Without ``search`` the start is the body centroids and the axial sections' principal
    axes alone (a quick look, as the orientation check's comparison of mirror images).
    """
    for volume, name in ((fixed, "fixed"), (moving, "moving")):
        if volume.kind != "scalar":
            raise ValueError(f"{name} must be a scalar (CT, HU) volume")
    fixed_c = volume_coarse(volume=fixed, spacing_mm=spacing_mm)
    moving_c = volume_coarse(volume=moving, spacing_mm=spacing_mm)
    masks, axes = [], []
    for volume in (fixed_c, moving_c):
        body, lungs = body_lung_arrays(
            ndimage.gaussian_filter(volume.array, 0.7), volume.voxel_volume_ml
        )
        masks.append((body, lungs))
        axes.append(body_axes(volume, body))
    centre_f = axes[0][0]
    if not search:
        quick = RegistrationStart(fixed_c, moving_c, masks[0], centre_f, axes[1][0],
                                  _axial_angle(axes[0][1], axes[1][1]))  # fmt: skip
        return replace(quick, sampling=overlap_sampling_mask(quick))
    tried = _candidates(fixed_c, moving_c, masks[0], masks[1], axes[0], axes[1])

    def start_of(candidate: dict) -> RegistrationStart:
        shift = np.asarray(candidate["shift_mm"], dtype=float)
        pose = RegistrationStart(fixed_c, moving_c, masks[0], centre_f, centre_f + shift,
                                 math.radians(candidate["angle_deg"]))  # fmt: skip
        return replace(pose, sampling=overlap_sampling_mask(pose))

    best = start_of(tried[0])
    other = next((c for c in tried[1:] if _distinct(c, tried[0])), None)
    # A second rigid run only when another pose scored nearly as well.
    close = other is not None and other["score"] >= 0.9 * tried[0]["score"]
    alternative = start_of(other) if other is not None and close else None
    return replace(best, candidates=tuple(tried[:12]), tried=len(tried), alternative=alternative)


def sampling_mask(body: np.ndarray) -> np.ndarray:
    """Where the metric samples: the fixed body dilated by two voxels, so its outline counts."""
    return ndimage.binary_dilation(body, iterations=2)


def overlap_sampling_mask(start: RegistrationStart) -> np.ndarray:
    """The sampling mask cut to where the moving study, placed by the start, has data
    (less two voxels of margin), so samples do not fall outside it."""
    mask = sampling_mask(start.fixed_masks[0])
    ones = start.moving.with_array(np.ones(start.moving.array.shape, np.uint8), kind="label")
    affine = sitk.AffineTransform(3)
    matrix = start.matrix
    affine.SetMatrix(tuple(matrix[:3, :3].flatten()))
    affine.SetTranslation(tuple(matrix[:3, 3]))
    inside = sitk.GetArrayFromImage(
        sitk.Resample(ones.to_sitk(), start.fixed.to_sitk(), affine, sitk.sitkNearestNeighbor, 0)
    ).astype(bool)
    inside = ndimage.binary_erosion(inside, iterations=2)
    cut = mask & inside
    return cut if cut.sum() >= 200 else mask
