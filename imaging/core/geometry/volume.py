"""A 3D image that always carries its geometry in DICOM patient coordinates (LPS, mm).

Array axes are ``[k, j, i]`` (slice, row, column), the order
``SimpleITK.GetArrayFromImage`` gives. ``spacing_mm``, ``origin_mm`` and the columns
of ``direction`` are in ``(i, j, k)`` order, as ITK holds them:

    lps = origin_mm + direction @ (spacing_mm * (i, j, k))

For a DICOM axial series, column ``i`` follows the row direction cosine of Image
Orientation (Patient) (0020,0037), row ``j`` its column cosine, and slice ``k`` the
slice normal (row x column), ordered by position along it (PS3.3 C.7.6.2.1.1).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import SimpleITK as sitk

VolumeKind = Literal["scalar", "label"]


@dataclass(frozen=True, eq=False)
class Volume:
    """A voxel array with spacing (mm), origin (LPS mm), direction and kind.

    ``padding`` (bool, the array's shape, or None when every voxel was imaged): the
    voxels outside what the scanner reconstructed, which Pixel Padding Value (0028,0120)
    marks or a tilted stack's resampling fills in; they hold air in ``array``. It goes
    with the array through `with_array` and is dropped by any resampling.
    """

    array: np.ndarray
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    frame_of_reference_uid: str = ""
    kind: VolumeKind = "scalar"
    padding: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"a Volume is 3D; got an array of shape {self.array.shape}")
        if self.padding is not None and self.padding.shape != self.array.shape:
            raise ValueError(
                f"padding of shape {self.padding.shape} differs from the array's {self.array.shape}"
            )
        direction = np.asarray(self.direction, dtype=float).reshape(3, 3)
        if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
            raise ValueError("direction must be orthonormal (columns are unit axis cosines)")
        if min(self.spacing_mm) <= 0:
            raise ValueError(f"spacing must be positive; got {self.spacing_mm}")
        if self.kind not in ("scalar", "label"):
            raise ValueError(f"kind must be 'scalar' or 'label'; got {self.kind!r}")
        object.__setattr__(self, "direction", direction)
        object.__setattr__(self, "spacing_mm", tuple(float(s) for s in self.spacing_mm))
        object.__setattr__(self, "origin_mm", tuple(float(o) for o in self.origin_mm))

    # -- geometry -----------------------------------------------------------------
    @property
    def shape_ijk(self) -> tuple[int, int, int]:
        """Size along (i, j, k): columns, rows, slices."""
        k, j, i = self.array.shape
        return (i, j, k)

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres (1 ml = 1000 mm^3)."""
        sx, sy, sz = self.spacing_mm
        return sx * sy * sz / 1000.0

    @property
    def affine_lps(self) -> np.ndarray:
        """4x4 matrix taking homogeneous (i, j, k, 1) to LPS millimetres."""
        affine = np.eye(4)
        affine[:3, :3] = self.direction * np.asarray(self.spacing_mm)[None, :]
        affine[:3, 3] = self.origin_mm
        return affine

    def index_to_lps(self, ijk: np.ndarray) -> np.ndarray:
        """Continuous (i, j, k) index or an (N, 3) array of them to LPS mm."""
        ijk = np.asarray(ijk, dtype=float)
        return ijk @ (self.direction * np.asarray(self.spacing_mm)[None, :]).T + np.asarray(
            self.origin_mm
        )

    def lps_to_index(self, lps_mm: np.ndarray) -> np.ndarray:
        """LPS mm point or an (N, 3) array of them to continuous (i, j, k) index."""
        lps_mm = np.asarray(lps_mm, dtype=float)
        rel = lps_mm - np.asarray(self.origin_mm)
        return (rel @ self.direction) / np.asarray(self.spacing_mm)

    def with_array(self, array: np.ndarray, *, kind: VolumeKind | None = None) -> Volume:
        """The same geometry around a new array of the same shape."""
        if array.shape != self.array.shape:
            raise ValueError(f"shape {array.shape} differs from {self.array.shape}")
        return replace(self, array=array, kind=kind or self.kind)

    # -- edges: SimpleITK ---------------------------------------------------------
    def to_sitk(self) -> sitk.Image:
        image = sitk.GetImageFromArray(self.array)
        image.SetSpacing(self.spacing_mm)
        image.SetOrigin(self.origin_mm)
        image.SetDirection(tuple(self.direction.flatten()))
        return image

    @classmethod
    def from_sitk(
        cls, image: sitk.Image, *, kind: VolumeKind = "scalar", frame_of_reference_uid: str = ""
    ) -> Volume:
        if image.GetDimension() != 3:
            raise ValueError(f"a Volume is 3D; got a {image.GetDimension()}D image")
        return cls(
            array=sitk.GetArrayFromImage(image),
            spacing_mm=image.GetSpacing(),
            origin_mm=image.GetOrigin(),
            direction=np.asarray(image.GetDirection()).reshape(3, 3),
            frame_of_reference_uid=frame_of_reference_uid,
            kind=kind,
        )


def volume_as_stored(volume: Volume) -> tuple[np.ndarray, Volume]:
    """``volume`` as a CT file stores it: whole HU in int16 (-1024..3071), and that array
    as a float32 volume on the same grid (no padding: a stored study carries none)."""
    stored = np.clip(np.round(volume.array), -1024, 3071).astype(np.int16)
    return stored, Volume(
        array=stored.astype(np.float32),
        spacing_mm=volume.spacing_mm,
        origin_mm=volume.origin_mm,
        direction=volume.direction,
    )
