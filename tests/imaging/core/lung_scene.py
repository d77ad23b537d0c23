"""Noisy lungs on a 1.5 mm grid with balls and tubes in them, and the candidates the
network would make of them: the scenes of the lung-candidate filters' tests
(`test_blobness`, `test_vessel_split`)."""

from __future__ import annotations

import numpy as np

from imaging.core.geometry.volume import Volume
from imaging.core.segmentation.postprocess import LesionCandidate

SPACING = 1.5
LUNG_HU = -850.0


def grid(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The z, y, x (mm) of the voxel centres of ``shape`` (k, j, i), broadcastable."""
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return k * SPACING, j * SPACING, i * SPACING


def ball(shape: tuple[int, int, int], centre_mm, radius_mm: float) -> np.ndarray:
    z, y, x = grid(shape)
    return (z - centre_mm[0]) ** 2 + (y - centre_mm[1]) ** 2 + (x - centre_mm[2]) ** 2 <= (
        radius_mm**2
    )


def tube_along_x(
    shape: tuple[int, int, int], y_mm: float, z_mm: float, radius_mm: float
) -> np.ndarray:
    z, y, _ = grid(shape)
    return np.broadcast_to((z - z_mm) ** 2 + (y - y_mm) ** 2 <= radius_mm**2, shape)


def lungs(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """Lung parenchyma with 15 HU of white noise."""
    rng = np.random.default_rng(seed)
    return np.full(shape, LUNG_HU, np.float32) + rng.normal(0, 15, shape).astype(np.float32)


def volume(array: np.ndarray) -> Volume:
    return Volume(array=array, spacing_mm=(SPACING,) * 3, origin_mm=(0.0, 0.0, 0.0))


def candidate(labels: np.ndarray, value: int = 1, organ: str = "lung") -> LesionCandidate:
    """The candidate the network would make of the voxels ``labels == value``."""
    where = np.argwhere(labels == value)
    low, high = where.min(axis=0), where.max(axis=0) + 1
    return LesionCandidate(
        label_value=value,
        organ=organ,
        n_voxels=len(where),
        volume_ml=len(where) * SPACING**3 / 1000,
        confidence=1.0,
        mean_probability=0.9,
        bbox_kji=tuple((int(a), int(b)) for a, b in zip(low, high, strict=True)),  # type: ignore[arg-type]
    )
