"""How much a study's noise is correlated: the variance of a region's mean HU, measured.

CT noise is not white: the reconstruction kernel and the slice sensitivity spread each
photon's error over neighbouring voxels, so the mean of n voxels varies far more than
sigma^2 / n (by a factor of 2 to 20 between kernels and scanners). A contrast test that
assumes independent voxels then reads the darkest noise blobs of a liver as lesions.
`noise_texture` measures the factor on the study's own soft tissue, so that the test
holds on scanners, kernels and resamplings RadTrack was never shown.

Measured from differences of voxels one and two apart in soft tissue (HU within
``tissue_hu``; the robust variance ignores the few pairs across an organ's edge): for noise
of Gaussian texture, var(x - x') = 2 sigma^2 (1 - rho(d)) with rho(d) = a^(d^2), so the
ratio of the two variances gives a, and a sigma; in plane (rows and columns pooled) and
through the slices apart. The inflation of a large region's mean is then the sum of the
correlations over all lags, (sum_d a^(d^2))^2 in plane times sum_d a_z^(d^2) through the
slices: 1 for white noise. A region not much larger than the grain varies less than
that: `NoiseTexture.region_inflation` sums the correlations over its own pairs of voxels.
Noise whose neighbouring voxels move apart (a sharp kernel's, ramp-like) is taken as white:
its region means vary less than independent voxels' would, and the test stays as strict
as it was.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

_MAD_SD = 1.4826
_SLICES = 48


@dataclass(frozen=True)
class NoiseTexture:
    """``sd_hu``: voxel noise SD; ``correlation``: a, the correlation of neighbouring
    voxels in plane, and ``correlation_z`` between neighbouring slices; ``inflation``:
    the variance of a large region's mean over sigma^2 / n (1 for white noise)."""

    sd_hu: float
    correlation: float
    correlation_z: float
    inflation: float
    pairs: int

    def region_inflation(self, region: np.ndarray) -> float:
        """The inflation for the mean over ``region`` (boolean, (k, j, i)): the sum of the
        correlations over every pair of its voxels, over its voxel count. 1 for a single
        voxel; ``inflation`` for a region far larger than the grain."""
        n = int(region.sum())
        if n <= 1:
            return 1.0
        weights = region.astype(np.float64)
        spread = weights
        for axis, a in ((0, self.correlation_z), (1, self.correlation), (2, self.correlation)):
            spread = ndimage.correlate1d(spread, _kernel(a), axis=axis, mode="constant")
        return float(np.clip((weights * spread).sum() / n, 1.0, n))

    def as_dict(self) -> dict[str, Any]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


def _robust_variance(values: np.ndarray) -> float:
    centre = float(np.median(values))
    return float((_MAD_SD * np.median(np.abs(values - centre))) ** 2)


def _lag_variances(
    hu: np.ndarray, tissue: np.ndarray, axes: tuple[int, ...]
) -> tuple[float, float, int]:
    """Robust variance of differences of voxels 1 and 2 apart along ``axes`` (pooled),
    both voxels in ``tissue``; and the number of lag-1 pairs."""
    out = []
    count = 0
    for lag in (1, 2):
        pooled = []
        for axis in axes:
            if hu.shape[axis] <= lag:
                continue
            a = [slice(None)] * 3
            b = [slice(None)] * 3
            a[axis], b[axis] = slice(lag, None), slice(None, -lag)
            both = tissue[tuple(a)] & tissue[tuple(b)]
            pooled.append((hu[tuple(a)] - hu[tuple(b)])[both])
        values = np.concatenate(pooled) if pooled else np.zeros(0)
        if lag == 1:
            count = int(values.size)
        out.append(_robust_variance(values) if values.size else 0.0)
    return out[0], out[1], count


def _neighbour_correlation(v1: float, v2: float) -> float:
    """a from v1 / v2 = (1 - a) / (1 - a^4) = 1 / ((1 + a)(1 + a^2)), 0 <= a < 1."""
    if v1 <= 0 or v2 <= 0 or v1 >= v2:
        return 0.0
    target = v2 / v1  # (1 + a)(1 + a^2), from 1 (white) towards 4
    low, high = 0.0, 0.999
    for _ in range(50):
        mid = 0.5 * (low + high)
        if (1 + mid) * (1 + mid * mid) < target:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


def _kernel(a: float) -> np.ndarray:
    """The correlations a^(d^2) at lags -m..m, m where they fall under 0.001."""
    if a <= 0.0:
        return np.ones(1)
    reach = int(np.ceil(np.sqrt(np.log(1e-3) / np.log(a)))) if a < 1.0 else 40
    lags = np.arange(-reach, reach + 1, dtype=np.float64)
    return np.asarray(a ** (lags**2), dtype=np.float64)


def _correlation_sum(a: float) -> float:
    return float(_kernel(a).sum())


def noise_texture(
    hu: np.ndarray,
    *,
    near: np.ndarray | None = None,
    tissue_hu: tuple[float, float] = (-150.0, 250.0),
    min_pairs: int = 2000,
) -> NoiseTexture | None:
    """The study's noise SD and texture (``hu``: (k, j, i) on the study's own grid),
    measured where ``near`` (boolean, same shape) is set, or everywhere; None where fewer
    than ``min_pairs`` neighbouring voxel pairs lie in soft tissue there."""
    values = np.asarray(hu, dtype=np.float32)
    low, high = tissue_hu

    def tissue(view: tuple[slice, ...]) -> np.ndarray:
        inside = (values[view] > low) & (values[view] < high)
        return inside & near[view] if near is not None else inside

    # In plane from at most ``_SLICES`` slices, through the slices from every other row
    # and column: millions of pairs either way, a fraction of a full study's time.
    sampled = (slice(None, None, max(1, values.shape[0] // _SLICES)),)
    v1, v2, pairs = _lag_variances(values[sampled], tissue(sampled), (1, 2))
    if pairs < min_pairs:
        return None
    a = _neighbour_correlation(v1, v2)
    sd = float(np.sqrt(v1 / (2.0 * (1.0 - a))))
    columns = (slice(None), slice(None, None, 2), slice(None, None, 2))
    z1, z2, z_pairs = _lag_variances(values[columns], tissue(columns), (0,))
    # Through the slices: the same where there are slices enough; else taken as white.
    a_z = _neighbour_correlation(z1, z2) if z_pairs >= min_pairs else 0.0
    inflation = _correlation_sum(a) ** 2 * _correlation_sum(a_z)
    return NoiseTexture(sd_hu=sd, correlation=a, correlation_z=a_z, inflation=inflation,
                        pairs=pairs)  # fmt: skip
