"""Whether a generated lesion could be seen at all in the acquisition it is rendered in.

The variation generator draws lesions down to near-isodense (12 HU under the liver) and
noise up to 45 HU. Painted and labelled regardless, a 4 mm lesion 12 HU under the liver
in 40 HU noise is a lesion label on what is, voxel for voxel, a noise blob: a network
trained on such patches learns to outline the darkest blobs of any noisy liver (the
900-step candidate did, 6-9 per coarse noisy study). So each lesion is measured the way
the post-processing's contrast test measures a candidate (`segmentation.contrast`): its
mean contrast over the voxels it fills, after the scanner's blur, against the standard
deviation that the mean of the acquisition's own correlated noise has over that same
region. A lesion under ``VISIBLE_Z`` is left out of the crop altogether, neither painted
nor labelled: the network is taught neither to find it nor to call its place background.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# Under 3 standard deviations a region's contrast is what the darkest of a liver's many
# noise blobs reaches. Lesions from 3 to the post-processing's own 4
# (`ContrastSettings.min_z`, measured on the candidate as outlined) stay: the cohort's
# coarse noisy studies hold real ones there (a 1.4 ml lesion 35 HU under the liver in 20
# HU of noise at 2.85 mm pixels and 5 mm slices measures 5.0 here, at 25 HU in 25 HU 2.9),
# and the network should propose them for the filter to judge.
VISIBLE_Z = 3.0


@dataclass(frozen=True)
class NoiseModel:
    """The renderer's noise: unit white noise through Gaussians of ``grain_px`` in-plane
    and ``z_px`` between slices, minus ``coarse_weight`` of the same at three times the
    in-plane grain (band-pass), scaled to ``sd_hu``."""

    sd_hu: float
    grain_px: float
    z_px: float
    coarse_weight: float

    def filter(self, field: np.ndarray, mode: str = "constant") -> np.ndarray:
        """The noise filter applied to ``field`` ([k, j, i]; ``mode`` beyond its edges:
        zero outside for a region's weights, reflected for rendered noise)."""
        fine = ndimage.gaussian_filter(field, (self.z_px, self.grain_px, self.grain_px), mode=mode)
        if not self.coarse_weight:
            return fine
        coarse = ndimage.gaussian_filter(field, (self.z_px, 3 * self.grain_px, 3 * self.grain_px),
                                         mode=mode)  # fmt: skip
        return fine - self.coarse_weight * coarse

    def reach_px(self) -> tuple[int, int]:
        """(slices, pixels) that the filter reaches (scipy truncates at 4 sigma)."""
        wide = 3 * self.grain_px if self.coarse_weight else self.grain_px
        return int(math.ceil(4 * self.z_px)) + 1, int(math.ceil(4 * wide)) + 1

    def white_gain(self) -> float:
        """Variance of the filtered unit white noise (what the renderer divides out)."""
        rk, rp = self.reach_px()
        delta = np.zeros((2 * rk + 1, 2 * rp + 1, 2 * rp + 1))
        delta[rk, rp, rp] = 1.0
        return float((self.filter(delta) ** 2).sum())


def mean_noise_sd(mask: np.ndarray, noise: NoiseModel) -> float:
    """Standard deviation (HU) of the rendered noise's mean over ``mask`` ([k, j, i]).

    The mean of the filtered field over a region is a sum of the white samples, each
    weighted by the filter applied to the region's indicator, so its variance is the
    squared norm of that filtered indicator over n squared, in units of the white gain.
    """
    n = float(mask.sum())
    if n <= 0:
        return math.inf
    rk, rp = noise.reach_px()
    padded = np.pad(mask.astype(np.float64), ((rk, rk), (rp, rp), (rp, rp)))
    weights = noise.filter(padded)
    variance = float((weights**2).sum()) / (n * n) / noise.white_gain()
    return noise.sd_hu * math.sqrt(variance)


def lesion_contrast_z(
    added_hu: np.ndarray,
    fraction: np.ndarray,
    *,
    blur_sigma_px: tuple[float, float, float],
    noise: NoiseModel,
) -> float:
    """Contrast-to-noise of a lesion painted into a box of the native grid.

    ``added_hu`` is what painting the lesion added to the noise-free image there and
    ``fraction`` its occupancy; the contrast is the mean absolute change after the
    scanner's blur (slice profile and kernel, ``blur_sigma_px``) over the voxels it
    fills at least half (a rim-enhancing lesion's bright rim counts with its dark core).
    """
    mask = fraction >= 0.5
    if not mask.any():
        return 0.0
    pad = tuple(int(math.ceil(3 * s)) + 1 for s in blur_sigma_px)
    blurred = ndimage.gaussian_filter(np.pad(added_hu.astype(np.float64), [(p, p) for p in pad]),
                                      blur_sigma_px, mode="constant")  # fmt: skip
    inner = tuple(slice(p, p + n) for p, n in zip(pad, added_hu.shape, strict=True))
    contrast = float(np.abs(blurred[inner][mask]).mean())
    return contrast / mean_noise_sd(mask, noise)
