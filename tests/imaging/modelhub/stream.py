"""A generated stream of studies whose scanner noise and reconstruction kernel change
half-way, measured as the pipeline measures every processed study (model grid)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from imaging.core.modelhub.drift import input_statistics, output_statistics

SPACING_MM = (1.5, 1.5, 1.5)


@dataclass(frozen=True)
class Acquisition:
    kernel: str
    noise_hu: float
    blur_voxels: float  # a soft kernel correlates the noise; a sharp one leaves it white


BEFORE = Acquisition(kernel="STANDARD", noise_hu=12.0, blur_voxels=0.8)
AFTER = Acquisition(kernel="SHARP", noise_hu=28.0, blur_voxels=0.0)


def study(index: int, acquisition: Acquisition) -> tuple[np.ndarray, np.ndarray]:
    """HU on the model grid and the organ labels (2 = liver) of one generated study."""
    rng = np.random.default_rng(index)
    shape = (40, 72, 88)
    k, j, i = np.mgrid[0 : shape[0], 0 : shape[1], 0 : shape[2]].astype(np.float32)
    width = 38 + rng.uniform(-3, 3)
    hu = np.full(shape, -1000.0, dtype=np.float32)
    body = ((i - 44) / width) ** 2 + ((j - 36) / 28) ** 2 <= 1
    hu[body] = 45.0 + rng.normal(0, 3)
    organ = np.zeros(shape, dtype=np.uint8)
    for centre in (28.0, 60.0):
        lung = ((i - centre) / 12) ** 2 + ((j - 32) / 16) ** 2 + ((k - 28) / 16) ** 2 <= 1
        hu[lung] = -860.0 + rng.normal(0, 10)
        organ[lung] = 1
    liver = ((i - 30) / 16) ** 2 + ((j - 40) / 14) ** 2 + ((k - 8) / 10) ** 2 <= 1
    hu[liver] = 62.0 + rng.normal(0, 3)
    organ[liver] = 2
    noise = rng.normal(0.0, 1.0, shape).astype(np.float32)
    if acquisition.blur_voxels:
        noise = ndimage.gaussian_filter(
            noise, (0, acquisition.blur_voxels, acquisition.blur_voxels)
        )
        noise /= noise.std()
    return hu + acquisition.noise_hu * noise * body, organ


def statistics(index: int, acquisition: Acquisition) -> tuple[dict, dict]:
    hu, organ = study(index, acquisition)
    inputs = input_statistics(hu=hu, organ=organ, spacing_mm=SPACING_MM)
    outputs = output_statistics(confidences=[0.95, 0.99])
    return inputs, outputs
