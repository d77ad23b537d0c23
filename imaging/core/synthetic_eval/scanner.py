"""The evaluation generator's scanner: patient positions, fields of view, slice profiles,
kernels, noise, streaks, beam hardening and the table.

Geometry follows DICOM: Image Orientation (Patient) for head-first/feet-first, supine/
prone, slices in either order, so the header puts the patient where the anatomy is.
Rendering: voxel centres (on a sub-slice grid of at most 1 mm, so thick slices
integrate their slab) are mapped from LPS through the study's pose and breathing into
the reference frame, each part is painted in its own index box with a one-voxel
anti-aliased edge, then the slice sensitivity profile (a box of the slice thickness,
softened) integrates the slab, the kernel's modulation transfer function is applied in
the Fourier domain (with edge overshoot for sharp kernels), beam hardening darkens the
centre and the bands between dense objects, and noise with a ramp-like power spectrum
(white noise shaped by ``|f| exp(-(f / f_c)^2)``) is added.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from imaging.core.synthetic_eval.fields import Part

AIR = -1000.0

#: Row and column cosines of an axial image per patient position (DICOM PS3.3 C.7.6.2).
ORIENTATION = {
    "HFS": ((1, 0, 0), (0, 1, 0)),
    "FFS": ((-1, 0, 0), (0, 1, 0)),
    "HFP": ((-1, 0, 0), (0, -1, 0)),
    "FFP": ((1, 0, 0), (0, -1, 0)),
}
KERNEL_F50 = {"soft": 0.28, "standard": 0.4, "sharp": 0.6}  # cycles/mm at 50 % MTF


@dataclass(frozen=True)
class Acquisition:
    """One series: position, grid, slice profile, kernel, noise and artefacts."""

    position: str
    matrix: int
    pixel_mm: float
    slice_spacing_mm: float
    slice_thickness_mm: float
    z_start_mm: float
    z_end_mm: float
    centre_xy_mm: tuple[float, float]
    head_first_order: bool
    kernel: str
    noise_hu: float
    beam_hardening_hu: float

    @property
    def n_slices(self) -> int:
        return max(2, int(round((self.z_end_mm - self.z_start_mm) / self.slice_spacing_mm)) + 1)

    def direction(self) -> np.ndarray:
        row, col = (np.asarray(v, float) for v in ORIENTATION[self.position])
        normal = np.cross(row, col)
        # Slices run from the head down when ``head_first_order``.
        slice_dir = normal if (normal[2] < 0) == self.head_first_order else -normal
        return np.stack([row, col, slice_dir], axis=1)

    def grid(
        self,
    ) -> tuple[tuple[int, int, int], tuple[float, float, float], np.ndarray, np.ndarray]:
        """(shape ijk, spacing, origin LPS, direction) of the series."""
        direction = self.direction()
        shape = (self.matrix, self.matrix, self.n_slices)
        spacing = (self.pixel_mm, self.pixel_mm, self.slice_spacing_mm)
        centre = np.array([*self.centre_xy_mm, 0.5 * (self.z_start_mm + self.z_end_mm)])
        half = (np.asarray(shape, float) - 1) / 2 * np.asarray(spacing)
        return shape, spacing, centre - direction @ half, direction


@dataclass(frozen=True, eq=False)
class Mapping:
    """LPS -> reference frame of one study: pose (LPS = R p + t), then breathing pull-back."""

    rotation: np.ndarray
    translation: np.ndarray
    displacement: Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]]
    reach_mm: float

    def to_reference(self, x, y, z):
        # Python floats keep float32 arrays float32 (NumPy float64 scalars would promote).
        r, t = self.rotation.tolist(), self.translation.tolist()
        dx, dy, dz = x - t[0], y - t[1], z - t[2]
        px = r[0][0] * dx + r[1][0] * dy + r[2][0] * dz
        py = r[0][1] * dx + r[1][1] * dy + r[2][1] * dz
        pz = r[0][2] * dx + r[1][2] * dy + r[2][2] * dz
        ux, uy, uz = self.displacement(px, py, pz)
        return px - ux, py - uy, pz - uz

    def to_lps(self, points: np.ndarray) -> np.ndarray:
        """Reference points (N, 3) to LPS (the breathing inverted by fixed-point iteration)."""
        q = np.atleast_2d(np.asarray(points, float))
        p = q.copy()
        for _ in range(30):
            u = np.stack(self.displacement(p[:, 0], p[:, 1], p[:, 2]), axis=1)
            p = q + u
        return p @ self.rotation.T + self.translation


def _index_box(part: Part, mapping: Mapping, inv_affine, offset, shape_kji, pad_mm: float):
    """Index box (k0, k1, j0, j1, i0, i1) of the grid holding ``part``'s box."""
    lo, hi = (np.asarray(b, float) for b in part.box)
    lo, hi = lo - mapping.reach_mm - pad_mm, hi + mapping.reach_mm + pad_mm
    corners = np.array(np.meshgrid(*zip(lo, hi, strict=True), indexing="ij")).reshape(3, -1).T
    corners = np.clip(corners, -5e3, 5e3)
    lps = corners @ mapping.rotation.T + mapping.translation
    idx = (lps - offset) @ inv_affine.T  # (i, j, k)
    i0, j0, k0 = np.maximum(np.floor(idx.min(0)).astype(int), 0)
    i1, j1, k1 = np.minimum(np.ceil(idx.max(0)).astype(int) + 1, shape_kji[::-1])
    return int(k0), int(k1), int(j0), int(j1), int(i0), int(i1)


@dataclass(frozen=True, eq=False)
class PaintGrid:
    """A grid to paint on ([k, j, i]): shape, spacing, origin and direction (LPS)."""

    shape_kji: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: np.ndarray
    direction: np.ndarray

    @property
    def affine(self) -> np.ndarray:
        return self.direction * np.asarray(self.spacing)[None, :]

    def boxes(self, parts: Sequence[Part], mapping: Mapping) -> list[tuple[int, ...]]:
        """Each part's index box on this grid (computed once, reused chunk by chunk)."""
        inv = np.linalg.inv(self.affine)
        pad = 2.0 * float(min(self.spacing[:2]))
        return [_index_box(p, mapping, inv, self.origin, self.shape_kji, pad) for p in parts]


def parts_paint(
    parts: Sequence[Part],
    mapping: Mapping,
    grid: PaintGrid,
    boxes: Sequence[tuple[int, ...]],
    k_range: tuple[int, int],
) -> np.ndarray:
    """HU (float32, [k, j, i]) of slices ``k_range`` of ``grid``, anti-aliased over a pixel.

    The mapping to the reference frame is evaluated once for the whole chunk; each part
    is evaluated only inside its box.
    """
    ka, kb = k_range
    _, nj, ni = grid.shape_kji
    hu = np.full((kb - ka, nj, ni), AIR, dtype=np.float32)
    affine, origin = grid.affine, grid.origin
    kk, jj, ii = np.meshgrid(np.arange(ka, kb, dtype=np.float32), np.arange(nj, dtype=np.float32),
                             np.arange(ni, dtype=np.float32), indexing="ij")  # fmt: skip
    lps = [origin[r] + affine[r, 0] * ii + affine[r, 1] * jj + affine[r, 2] * kk for r in range(3)]
    del kk, jj, ii
    q = mapping.to_reference(*lps)
    del lps
    width = float(min(grid.spacing[:2]))
    for part, (k0, k1, j0, j1, i0, i1) in zip(parts, boxes, strict=True):
        k0, k1 = max(k0, ka) - ka, min(k1, kb) - ka
        if k1 <= k0 or j1 <= j0 or i1 <= i0:
            continue
        box = (slice(k0, k1), slice(j0, j1), slice(i0, i1))
        qb = (q[0][box], q[1][box], q[2][box])
        fraction = np.clip(0.5 - part.field(*qb) / width, 0.0, 1.0)
        if not fraction.any():
            continue
        target = hu[box]
        target += fraction * (np.asarray(part.hu_at(*qb), dtype=np.float32) - target)
    return hu


def table_part(position: str, body_back_mm: float, body_front_mm: float) -> Part:
    """The couch, in LPS (not posed): under the back when supine, under the front when prone."""
    prone = position.endswith("P")
    y0 = -(body_front_mm + 12.0) if prone else body_back_mm + 12.0
    sign = -1.0 if prone else 1.0

    def field(x, y, z):
        curve = y0 + sign * 0.0012 * x**2
        return np.maximum(np.abs(y - (curve + sign * 9.0)) - 9.0, np.abs(x) - 230.0)

    return Part("table", field, -350.0, ((-240, min(y0, y0 + sign * 80) - 5, -1e4),
                                         (240, max(y0, y0 + sign * 80) + 5, 1e4)))  # fmt: skip


def _slice_profile(hu_fine: np.ndarray, fine_z: np.ndarray, slice_z: np.ndarray, thickness: float):
    """Each slice: the mean of the fine slices within its slab (softened box profile)."""
    out = np.empty((len(slice_z), *hu_fine.shape[1:]), dtype=np.float32)
    step = float(abs(fine_z[1] - fine_z[0])) if len(fine_z) > 1 else thickness
    for n, zc in enumerate(slice_z):
        d = np.abs(fine_z - zc)
        w = np.clip((thickness / 2 + step / 2 - d) / step, 0.0, 1.0)
        if w.sum() == 0:
            w = (d == d.min()).astype(float)
        out[n] = np.tensordot(w / w.sum(), hu_fine, axes=(0, 0))
    return out


def _mtf(shape, pixel_mm: float, kernel: str) -> np.ndarray:
    fy = np.fft.fftfreq(shape[0], d=pixel_mm)[:, None]
    fx = np.fft.rfftfreq(shape[1], d=pixel_mm)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    f50 = KERNEL_F50[kernel]
    mtf = np.exp(-np.log(2.0) * (f / f50) ** 2)
    if kernel == "sharp":
        mtf *= 1.0 + 0.6 * (f / f50) ** 2 * np.exp(-((f / f50) ** 2))
    return mtf


def _noise(rng, shape, pixel_mm: float, kernel: str, sigma_hu: float) -> np.ndarray:
    fy = np.fft.fftfreq(shape[1], d=pixel_mm)[:, None]
    fx = np.fft.rfftfreq(shape[2], d=pixel_mm)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    fc = KERNEL_F50[kernel] * 1.3
    nps_amplitude = f * np.exp(-((f / fc) ** 2))
    out = np.empty(shape, dtype=np.float32)
    for k in range(shape[0]):
        white = rng.standard_normal(shape[1:])
        out[k] = np.fft.irfft2(np.fft.rfft2(white) * nps_amplitude, s=shape[1:])
    if shape[0] > 2:  # neighbouring slices share a little of their noise
        out = 0.85 * out + 0.15 * ndimage.uniform_filter1d(out, 3, axis=0)
    out *= sigma_hu / max(float(out.std()), 1e-6)
    return out


def scanner_effects(hu: np.ndarray, acq: Acquisition, rng: np.random.Generator,
                    dense_points: Sequence[tuple[float, float]] = ()) -> np.ndarray:  # fmt: skip
    """Kernel, beam hardening (cupping and dark bands between dense objects) and noise."""
    mtf = _mtf(hu.shape[1:], acq.pixel_mm, acq.kernel)
    for k in range(hu.shape[0]):
        hu[k] = np.fft.irfft2(np.fft.rfft2(hu[k]) * mtf, s=hu.shape[1:])
    n = acq.matrix
    jj, ii = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    body = hu > -400.0
    if acq.beam_hardening_hu:
        r2 = ((ii - n / 2) ** 2 + (jj - n / 2) ** 2) / (n / 2) ** 2
        hu -= (acq.beam_hardening_hu * np.clip(1.0 - r2, 0, 1)).astype(np.float32) * body
        for (i0, j0), (i1, j1) in zip(dense_points[::2], dense_points[1::2], strict=False):
            d = np.abs((i1 - i0) * (j0 - jj) - (i0 - ii) * (j1 - j0)) / max(
                np.hypot(i1 - i0, j1 - j0), 1
            )
            band = np.exp(-0.5 * (d * acq.pixel_mm / 4.0) ** 2).astype(np.float32)
            hu -= 2.5 * acq.beam_hardening_hu * band * body
    hu += _noise(rng, hu.shape, acq.pixel_mm, acq.kernel, acq.noise_hu)
    return hu
