"""Part of a stored NIfTI volume: the box of voxels around a point, read without
holding the whole volume in memory, with its LPS geometry (`nifti.volume_read_nifti`
reads the whole file the same way)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from imaging.core.geometry.triples import ivec3, vec3
from imaging.core.geometry.volume import Volume, VolumeKind


@dataclass(frozen=True)
class NiftiGrid:
    """A stored volume's grid as its header gives it (LPS mm, (i, j, k) order)."""

    shape_ijk: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]
    direction: np.ndarray

    def lps_to_index(self, lps_mm: np.ndarray) -> np.ndarray:
        rel = np.asarray(lps_mm, dtype=float) - np.asarray(self.origin_mm)
        return (rel @ self.direction) / np.asarray(self.spacing_mm)


def nifti_grid(*, path: Path) -> NiftiGrid:
    """The grid of the NIfTI file at ``path``, from its header alone."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return NiftiGrid(
        shape_ijk=ivec3(reader.GetSize()),
        spacing_mm=vec3(reader.GetSpacing()),
        origin_mm=vec3(reader.GetOrigin()),
        direction=np.asarray(reader.GetDirection(), dtype=float).reshape(3, 3),
    )


def volume_read_nifti_region(
    *,
    path: Path,
    centre_lps_mm: np.ndarray,
    half_size_mm: float | np.ndarray,
    kind: VolumeKind = "scalar",
) -> Volume:
    """The voxels of the NIfTI file at ``path`` within ``half_size_mm`` (per LPS axis, or
    one value) of ``centre_lps_mm``, clipped to the volume, as a `Volume` in LPS mm.
    Raises ValueError when the box misses the volume."""
    grid = nifti_grid(path=path)
    centre = np.asarray(centre_lps_mm, dtype=float)
    half = np.broadcast_to(np.asarray(half_size_mm, dtype=float), (3,))
    signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float)
    ijk = grid.lps_to_index(centre + signs * half)
    lo = np.maximum(np.floor(ijk.min(axis=0)).astype(int), 0)
    hi = np.minimum(np.ceil(ijk.max(axis=0)).astype(int) + 1, np.asarray(grid.shape_ijk))
    if np.any(hi <= lo):
        raise ValueError(
            f"{Path(path).name}: the box around {centre.round(1).tolist()} mm misses the volume"
        )
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetExtractIndex([int(v) for v in lo])
    reader.SetExtractSize([int(v) for v in hi - lo])
    image = reader.Execute()
    if kind == "scalar":
        image = sitk.Cast(image, sitk.sitkFloat32)
    return Volume.from_sitk(image, kind=kind)
