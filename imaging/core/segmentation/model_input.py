"""What the segmenter's network is fed: the body's box of the study, on the model grid,
as windowed channels.

`body_crop` cuts the study to the patient's body on its own grid (so only that box is
reoriented and resampled), `model_grid` reorients it to LPS and resamples it linearly to
the model's spacing, `body_box` finds the body's box again on that grid, and
`model_input_array` turns HU into the network's channels.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from scipy import ndimage

from imaging.core.geometry.preprocess import Reorient, Resample, StepRecord, preprocess_run
from imaging.core.geometry.triples import vec3
from imaging.core.geometry.volume import Volume

BODY_HU = -500.0


class SegmenterSpec(Protocol):
    """What the input needs of a model's spec (`network.SegmenterSpec` has it): the grid's
    spacing and the HU windows of its channels. A protocol, so that this module does not
    import the network module that imports it."""

    @property
    def spacing_mm(self) -> Sequence[float]: ...

    @property
    def windows_hu(self) -> Sequence[Sequence[float]]: ...


def body_crop(*, volume: Volume, margin_mm: float = 12.0) -> tuple[Volume, StepRecord]:
    """The study cut to the patient's body (plus ``margin_mm``), before any resampling.

    The body is the largest connected component above -500 HU on every fourth voxel
    (a table or blanket apart from it drops out); only its box is reoriented, resampled
    and inferred, which on a 512 x 512 study skips half or more of the voxels.
    """
    started = time.perf_counter()
    step = 4
    coarse = volume.array[::step, ::step, ::step] > BODY_HU
    labels, n = ndimage.label(coarse)
    shape = volume.array.shape
    box = tuple(slice(0, size) for size in shape)
    if n:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        found = ndimage.find_objects((labels == int(np.argmax(sizes))).astype(np.uint8))[0]
        spacing_kji = np.asarray(volume.spacing_mm)[::-1]
        margin = np.ceil(margin_mm / spacing_kji).astype(int) + step
        box = tuple(
            slice(max(0, s.start * step - m), min(size, s.stop * step + m))
            for s, m, size in zip(found, margin, shape, strict=True)
        )
    start_ijk = np.array([box[2].start, box[1].start, box[0].start], dtype=float)
    cropped = Volume(
        array=volume.array[box],
        spacing_mm=volume.spacing_mm,
        origin_mm=vec3(volume.index_to_lps(start_ijk)),
        direction=volume.direction,
        frame_of_reference_uid=volume.frame_of_reference_uid,
        kind=volume.kind,
    )
    record = StepRecord(
        name="body_crop",
        parameters={"body_hu": BODY_HU, "margin_mm": margin_mm, "found_on": "every 4th voxel",
                    "component": "largest"},
        versions={"scipy": _scipy_version(), "numpy": np.__version__},
        seconds=time.perf_counter() - started,
        details={"box_kji": [[s.start, s.stop] for s in box], "shape_kji": list(shape)},
    )  # fmt: skip
    return cropped, record


def _scipy_version() -> str:
    import scipy

    return scipy.__version__


def model_grid(*, volume: Volume, spec: SegmenterSpec) -> tuple[Volume, tuple[StepRecord, ...]]:
    """The study in HU on the model grid: reoriented to LPS, resampled linearly (recorded)."""
    result = preprocess_run(
        volume=volume, steps=[Reorient(), Resample(spacing_mm=vec3(spec.spacing_mm))]
    )
    return result.volume, result.records


def model_input_array(hu: np.ndarray, spec: SegmenterSpec) -> np.ndarray:
    """Channels (C, k, j, i) float32: HU clipped to each window of ``spec`` and scaled to [0, 1]."""
    out = np.empty((len(spec.windows_hu), *hu.shape), dtype=np.float32)
    for c, (low, high) in enumerate(spec.windows_hu):
        np.clip(hu, low, high, out=out[c])
        out[c] -= low
        out[c] /= high - low
    return out


def body_box(hu: np.ndarray, *, margin: int = 8) -> tuple[slice, slice, slice]:
    """Bounding box ([k, j, i] slices) of voxels above -500 HU, plus ``margin`` voxels."""
    mask = hu > BODY_HU
    if not mask.any():
        return (slice(0, hu.shape[0]), slice(0, hu.shape[1]), slice(0, hu.shape[2]))

    def around(axis: int) -> slice:
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        return slice(max(0, hit[0] - margin), min(hu.shape[axis], hit[-1] + 1 + margin))

    return (around(0), around(1), around(2))
