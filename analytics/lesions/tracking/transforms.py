"""How a follow-up's positions and images cross to the baseline's frame and back: a
`Registration`'s full stored transform (its B-spline included when registration kept
one), read once per registration; the 4x4 ``matrix_fixed_to_moving`` alone only when no
transform file is stored, or when the stored one cannot be read (which is said).

Every place that maps a position or an image between studies goes through here (the
viewer, a radiologist's links, a click-added lesion followed to the other studies, the
"outside the scanned range" test), so that they all put a lesion where tracking does.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from analytics.lesions.tracking.chain import StudyInput
from imaging.core.geometry.volume import Volume
from imaging.core.registration.transforms import SpatialTransform, point_map, transform_read
from imaging.models import Registration
from imaging.store import data_dir, derived_local

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class BaselineMapping:
    """A study's LPS mm <-> the baseline's LPS mm.

    ``transform`` maps baseline (fixed) LPS mm to the study's (moving) LPS mm, the ITK
    convention of `SpatialTransform`: resampling the study through it puts it on the
    baseline's grid. ``registration_pk``: the registration it comes from (None for the
    baseline itself or a landmark placement); ``note``: "" when it is all the
    registration stored, else why only its 4x4 matrix is used (one sentence).
    """

    transform: SpatialTransform
    registration_pk: int | None = None
    note: str = ""

    @classmethod
    def from_to_baseline(cls, to_baseline: np.ndarray, *, note: str = "") -> BaselineMapping:
        """From a 4x4 study LPS -> baseline LPS matrix (the baseline's identity, a landmark
        placement, an affine registration)."""
        matrix = np.linalg.inv(np.asarray(to_baseline, dtype=float))
        return cls(SpatialTransform(matrix), note=note)

    @property
    def deformable(self) -> bool:
        return not self.transform.is_affine

    def to_baseline(self, points_lps_mm: np.ndarray) -> np.ndarray:
        """The study's LPS mm point (3,) or points (N, 3) in the baseline's LPS mm."""
        return point_map(self.transform, np.asarray(points_lps_mm, dtype=float), inverse=True)

    def from_baseline(self, points_lps_mm: np.ndarray) -> np.ndarray:
        """Baseline LPS mm point (3,) or points (N, 3) in the study's LPS mm."""
        return point_map(self.transform, np.asarray(points_lps_mm, dtype=float))

    def for_resampling(self, reference: Volume, *, spacing_mm: float = 4.0) -> SpatialTransform:
        """``transform`` to resample the study onto ``reference``'s grid (`volume_warp`):
        a B-spline is sampled once as a displacement field every ``spacing_mm`` over the
        grid and interpolated linearly, which follows registration's smooth B-splines
        (control points 60-90 mm apart) to about 0.01 mm and resamples a 512 x 512 CT
        several times faster than evaluating the B-spline at every voxel."""
        if self.transform.bspline is None:
            return self.transform
        direction = np.asarray(reference.direction, dtype=float)
        extent_mm = np.asarray(reference.shape_ijk, dtype=float) * reference.spacing_mm
        size = [int(np.ceil(e / spacing_mm)) + 3 for e in extent_mm]  # a sample beyond each edge
        origin = np.asarray(reference.origin_mm) - direction @ np.full(3, spacing_mm)
        field = sitk.TransformToDisplacementField(
            self.transform.bspline,
            sitk.sitkVectorFloat64,
            size,
            tuple(float(v) for v in origin),
            (spacing_mm,) * 3,
            tuple(float(v) for v in direction.ravel()),
        )
        return SpatialTransform(self.transform.matrix, sitk.DisplacementFieldTransform(field))


def registration_mapping(registration: Registration) -> BaselineMapping:
    """The follow-up <-> baseline mapping of ``registration`` (moving <-> fixed series):
    its stored transform file, read once per registration and process; its 4x4 matrix
    when it stored no file (``note`` says so), or when the file cannot be read (``note``
    says why, and it is logged)."""
    matrix = np.asarray(registration.matrix_fixed_to_moving, dtype=float)
    if not registration.transform_path:
        return BaselineMapping(
            SpatialTransform(matrix),
            registration.pk,
            note=f"registration {registration.pk} stored no transform file: its 4x4 matrix "
            "(the affine part) is used, without any deformable stage",
        )
    try:
        transform = _transform_loaded(registration.pk, registration.transform_path, str(data_dir()))
    except (OSError, RuntimeError, ValueError) as exc:
        why = "the file is missing" if isinstance(exc, FileNotFoundError) else "it is damaged"
        logger.warning("registration %s: transform unreadable (%s), its matrix used",
                       registration.pk, exc)  # fmt: skip
        return BaselineMapping(
            SpatialTransform(matrix),
            registration.pk,
            note=f"the transform file of registration {registration.pk} could not be read "
            f"({why}): its 4x4 matrix (the affine part) is used, without its deformable stage",
        )
    return BaselineMapping(transform, registration.pk)


@functools.lru_cache(maxsize=32)
def _transform_loaded(pk: int, relative: str, root: str) -> SpatialTransform:
    """The stored transform of registration ``pk`` (files are written once per
    registration, never changed: cached by pk, path and data folder; a failure is not
    cached, so a file published late is read once it arrives)."""
    path = derived_local(relative)
    if not path.is_file():
        raise FileNotFoundError(relative)
    return transform_read(path=path)


def study_mapping(entry: StudyInput) -> BaselineMapping:
    """How tracking placed ``entry`` (a study of the chain, `study_inputs`), both ways.

    Without a deformable stage (``entry.point_map`` is None) that is its matrix: the
    baseline's identity, a landmark placement, an affine registration, or the affine
    part of one whose file could not be read (``entry.provisional`` says so). With one,
    it is the registration's full stored transform: the newest usable registration of
    the study's series whose matrix is the one tracking placed the study with.
    """
    to_baseline = np.asarray(entry.to_baseline, dtype=float)
    if entry.point_map is None:
        return BaselineMapping.from_to_baseline(to_baseline)
    registrations = Registration.objects.filter(
        moving_series_id=entry.segmentation.series_id, failed=False
    ).order_by("-created_at", "-pk")
    for registration in registrations:
        matrix = np.asarray(registration.matrix_fixed_to_moving, dtype=float)
        if np.allclose(np.linalg.inv(matrix), to_baseline, rtol=0.0, atol=1e-9):
            mapping = registration_mapping(registration)
            if mapping.deformable:
                return mapping
            break
    # Tracking read a deformable transform that is no longer there (removed since):
    # its affine part, said.
    logger.warning("study %s: deformable transform not found again, matrix used", entry.study.pk)
    return BaselineMapping.from_to_baseline(
        to_baseline,
        note="the registration's deformable transform could not be found again: its "
        "affine part is used",
    )
