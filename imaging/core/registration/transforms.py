"""Spatial transforms between a baseline and a follow-up CT, and resampling through them.

A `SpatialTransform` maps *fixed* (baseline) LPS mm points to *moving* (follow-up) LPS
mm points, the ITK convention: the moving image resampled through it lies on the fixed
grid (`volume_warp`), and a baseline point maps to where the same anatomy is in the
follow-up (`point_map`). Affine transforms are stored as JSON, B-splines as SimpleITK
transform files (`transform_write`, `transform_read`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from imaging.core.geometry.volume import Volume, VolumeKind

#: SimpleITK transforms ``p -> A (p - c) + c + t`` with a matrix, centre and translation;
_MATRIX_OFFSET = (
    sitk.AffineTransform,
    sitk.Euler3DTransform,
    sitk.Similarity3DTransform,
    sitk.VersorRigid3DTransform,
    sitk.ScaleVersor3DTransform,
    sitk.ScaleSkewVersor3DTransform,
    sitk.ComposeScaleSkewVersor3DTransform,
)
#: those with a matrix and centre but no ``GetTranslation`` (``t = 0``).
_MATRIX_ABOUT_CENTRE = (sitk.ScaleTransform, sitk.VersorTransform)


@dataclass(frozen=True, eq=False)
class SpatialTransform:
    """Fixed LPS mm -> moving LPS mm: ``p -> matrix @ (bspline(p), 1)``.

    ``matrix`` is the 4x4 homogeneous affine part; ``bspline`` an optional SimpleITK
    ``BSplineTransform`` (a free-form deformation) applied to the fixed point first
    (ITK's composite order: the moving-initial affine after the optimised deformation).
    """

    matrix: np.ndarray
    bspline: sitk.Transform | None = None

    def __post_init__(self) -> None:
        matrix = np.asarray(self.matrix, dtype=float)
        if matrix.shape != (4, 4) or not np.allclose(matrix[3], [0, 0, 0, 1]):
            raise ValueError("matrix must be 4x4 homogeneous with last row (0, 0, 0, 1)")
        object.__setattr__(self, "matrix", matrix)

    @classmethod
    def identity(cls) -> SpatialTransform:
        return cls(np.eye(4))

    @property
    def is_affine(self) -> bool:
        return self.bspline is None

    @property
    def translation_mm(self) -> np.ndarray:
        return self.matrix[:3, 3].copy()

    @property
    def rotation_deg(self) -> float:
        """Angle of the rotation nearest the linear part (polar decomposition), degrees."""
        u, _, vt = np.linalg.svd(self.matrix[:3, :3])
        rotation = u @ vt
        return float(np.degrees(np.arccos(np.clip((np.trace(rotation) - 1) / 2, -1.0, 1.0))))

    @property
    def scales(self) -> np.ndarray:
        """Singular values of the linear part (1, 1, 1 for a rigid transform)."""
        return np.linalg.svd(self.matrix[:3, :3], compute_uv=False)

    def map_points(self, points_lps_mm: np.ndarray) -> np.ndarray:
        """Fixed LPS mm point or (N, 3) points to moving LPS mm."""
        points = np.asarray(points_lps_mm, dtype=float)
        flat = np.atleast_2d(points)
        if self.bspline is not None:
            flat = np.array([self.bspline.TransformPoint(tuple(map(float, p))) for p in flat])
        out = flat @ self.matrix[:3, :3].T + self.matrix[:3, 3]
        return out.reshape(points.shape)

    def map_points_inverse(
        self, points_lps_mm: np.ndarray, *, tolerance_mm: float = 0.01, iterations: int = 50
    ) -> np.ndarray:
        """Moving LPS mm point or (N, 3) points back to fixed LPS mm.

        Exact for an affine transform; with a B-spline, the fixed point ``q`` with
        ``bspline(q) = A^-1 p`` is found by fixed-point iteration ``q <- q - (bspline(q) -
        r)``, which converges for the smooth, small deformations registration keeps
        (displacement gradients well below 1), to ``tolerance_mm``.
        """
        points = np.asarray(points_lps_mm, dtype=float)
        flat = np.atleast_2d(points)
        linear = self.matrix[:3, :3]
        target = (flat - self.matrix[:3, 3]) @ np.linalg.inv(linear).T
        if self.bspline is None:
            return target.reshape(points.shape)
        q = target.copy()
        for _ in range(iterations):
            moved = np.array([self.bspline.TransformPoint(tuple(map(float, p))) for p in q])
            step = moved - target
            q -= step
            if np.abs(step).max() < tolerance_mm:
                break
        return q.reshape(points.shape)

    def affine_sitk(self) -> sitk.AffineTransform:
        affine = sitk.AffineTransform(3)
        affine.SetMatrix(tuple(self.matrix[:3, :3].flatten()))
        affine.SetTranslation(tuple(self.matrix[:3, 3]))
        return affine

    def to_sitk(self) -> sitk.Transform:
        """The whole transform as SimpleITK holds it (affine, or composite affine + B-spline)."""
        if self.bspline is None:
            return self.affine_sitk()
        # A composite applies its last transform first.
        return sitk.CompositeTransform([self.affine_sitk(), self.bspline])

    @classmethod
    def from_sitk(cls, transform: sitk.Transform) -> SpatialTransform:
        """From a SimpleITK matrix-offset transform (Euler, similarity, affine, translation)
        or a composite of one such transform after a B-spline."""
        transform = transform.Downcast()
        if isinstance(transform, sitk.CompositeTransform):
            parts = [
                transform.GetNthTransform(n).Downcast()
                for n in range(transform.GetNumberOfTransforms())
            ]
            bsplines = [p for p in parts if isinstance(p, sitk.BSplineTransform)]
            linear = [p for p in parts if not isinstance(p, sitk.BSplineTransform)]
            if len(bsplines) > 1 or (bsplines and parts[-1] is not bsplines[0]):
                raise ValueError("only an affine after one B-spline (applied first) is supported")
            matrix = np.eye(4)
            for part in linear:  # applied last-first: compose left to right
                matrix = matrix @ cls.from_sitk(part).matrix
            return cls(matrix, bsplines[0] if bsplines else None)
        if isinstance(transform, sitk.BSplineTransform):
            return cls(np.eye(4), transform)
        if isinstance(transform, sitk.TranslationTransform):
            matrix = np.eye(4)
            matrix[:3, 3] = transform.GetOffset()
            return cls(matrix)
        if isinstance(transform, _MATRIX_OFFSET):
            translation = np.asarray(transform.GetTranslation(), dtype=float)
        elif isinstance(transform, _MATRIX_ABOUT_CENTRE):
            translation = np.zeros(3)
        else:
            raise ValueError(f"cannot express a {transform.GetName()} as a matrix")
        if transform.GetDimension() != 3:
            raise ValueError(f"a {transform.GetDimension()}D {transform.GetName()} is not 3D")
        linear_part = np.asarray(transform.GetMatrix(), dtype=float).reshape(3, 3)
        centre = np.asarray(transform.GetCenter(), dtype=float)
        matrix = np.eye(4)
        matrix[:3, :3] = linear_part
        matrix[:3, 3] = translation + centre - linear_part @ centre
        return cls(matrix)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the matrix and the convention (a B-spline needs `transform_write`)."""
        return {
            "convention": "fixed LPS mm -> moving LPS mm, homogeneous 4x4",
            "matrix": [[float(v) for v in row] for row in self.matrix],
            "deformable": self.bspline is not None,
        }


def point_map(
    transform: SpatialTransform, points_lps: np.ndarray, *, inverse: bool = False
) -> np.ndarray:
    """Map fixed (baseline) LPS mm points (3,) or (N, 3) to the moving study's LPS mm, or
    with ``inverse`` the moving (follow-up) study's points back to the baseline's.

    The one way positions cross between studies: affine and deformable (B-spline)
    transforms alike, as `transform_read` returns them from the stored file.
    """
    if inverse:
        return transform.map_points_inverse(points_lps)
    return transform.map_points(points_lps)


def transform_write(*, transform: SpatialTransform, path: str | Path) -> Path:
    """Write a transform: ``.json`` (affine only: the 4x4 matrix) or any SimpleITK transform
    file (``.tfm``/``.txt`` text, ``.h5`` HDF5), which also holds a B-spline."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        if transform.bspline is not None:
            raise ValueError("a deformable transform needs a .tfm or .h5 file, not JSON")
        path.write_text(json.dumps(transform.as_dict(), indent=2))
    else:
        sitk.WriteTransform(transform.to_sitk(), str(path))
    return path


def transform_read(*, path: str | Path) -> SpatialTransform:
    """Read what `transform_write` wrote."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text())
        return SpatialTransform(np.asarray(data["matrix"], dtype=float))
    return SpatialTransform.from_sitk(sitk.ReadTransform(str(path)))


def volume_warp(
    *,
    moving: Volume,
    reference: Volume,
    transform: SpatialTransform,
    kind: VolumeKind | None = None,
    default_value: float | None = None,
) -> Volume:
    """Resample ``moving`` onto ``reference``'s grid through ``transform`` (fixed -> moving).

    Scalar volumes are interpolated linearly (float32 out), label volumes always by
    nearest neighbour, keeping their integer type (``kind="label"`` treats a scalar
    volume as labels). Outside the moving volume scalars take
    ``default_value`` (default: the moving volume's minimum, air for CT) and labels 0.
    """
    kind = kind or moving.kind
    if moving.kind == "label" and kind != "label":
        raise ValueError("a label volume is only ever resampled nearest-neighbour")
    image = moving.to_sitk()
    if kind == "label":
        interpolator, default, pixel = sitk.sitkNearestNeighbor, 0.0, image.GetPixelID()
    else:
        if image.GetPixelID() != sitk.sitkFloat32:
            image = sitk.Cast(image, sitk.sitkFloat32)
        interpolator, pixel = sitk.sitkLinear, sitk.sitkFloat32
        default = float(moving.array.min()) if default_value is None else float(default_value)
    out = sitk.Resample(
        image, reference.to_sitk(), transform.to_sitk(), interpolator, default, pixel
    )
    return Volume.from_sitk(out, kind=kind, frame_of_reference_uid=reference.frame_of_reference_uid)


def volume_onto_grid(
    *, moving: Volume, reference: Volume, default_value: float | None = None
) -> Volume:
    """``moving`` resampled onto ``reference``'s grid in the same patient coordinates
    (no transform): labels nearest neighbour, scalars linearly (see `volume_warp`)."""
    return volume_warp(
        moving=moving,
        reference=reference,
        transform=SpatialTransform.identity(),
        default_value=default_value,
    )


def rotation_matrix(*, axis: np.ndarray, angle_deg: float) -> np.ndarray:
    """3x3 rotation by ``angle_deg`` about ``axis`` (right-handed, Rodrigues)."""
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    angle = math.radians(angle_deg)
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)
