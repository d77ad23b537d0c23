"""The pixels of one series' ordered slices as a stack of modality values, and the
resampling of an irregular or tilted stack onto a regular orthogonal grid.

Compressed transfer syntaxes decode through pydicom's pixel data handlers (pylibjpeg,
openjpeg, RLE); Rescale Slope and Intercept, or a Modality LUT, give modality values
(HU for CT).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import SimpleITK as sitk
from pydicom.pixels import apply_modality_lut

from imaging.core.dicom.slice_geometry import GeometryPlan
from imaging.core.dicom.slices import SeriesVolumeError, Slice


def slices_pixels(ordered: list[Slice]) -> np.ndarray:
    """Stack of modality values (Rescale Slope/Intercept applied, PS3.3 C.11.1), float32."""
    return slices_read(ordered)[0]


def slices_read(ordered: list[Slice]) -> tuple[np.ndarray, np.ndarray | None]:
    """Stack of modality values (`slices_pixels`) and where it was not imaged: a bool
    stack, True at the pixels Pixel Padding Value marks as outside the reconstructed
    field of view (`_padding`), None when no slice has any. Padded pixels read as air
    (`PADDING_HU`) in the stack, so the segmenter sees air there; the mask keeps them
    apart from real air, so a lesion cut by the field of view can be told from one
    next to air."""
    decoded: dict[int, np.ndarray] = {}
    stack = np.empty((len(ordered), ordered[0].rows, ordered[0].columns), dtype=np.float32)
    padded: np.ndarray | None = None
    for k, s in enumerate(ordered):
        ds = s.dataset
        if "PixelData" not in ds:
            raise SeriesVolumeError(f"{s.where()} has no pixel data", code="no_pixels")
        if id(ds) not in decoded:
            try:
                decoded[id(ds)] = ds.pixel_array
            except Exception as exc:  # a decoder missing or a damaged codestream
                raise SeriesVolumeError(
                    f"pixel data of {s.where()} cannot be decoded "
                    f"(transfer syntax {ds.file_meta.get('TransferSyntaxUID', '?')}): {exc}",
                    code="undecodable",
                ) from exc
        pixels = decoded[id(ds)]
        # A one-frame multi-frame image decodes to 2D: its only frame is the array.
        frame = pixels[s.frame] if s.frame is not None and pixels.ndim == 3 else pixels
        if frame.shape != (s.rows, s.columns):
            raise SeriesVolumeError(
                f"{s.where()} decodes to shape {frame.shape}, not {s.rows}x{s.columns} "
                "(colour or multi-sample images are not volumes)",
                code="bad_pixels",
            )
        if s.frame is None and "ModalityLUTSequence" in ds:
            stack[k] = apply_modality_lut(frame, ds)
        else:
            stack[k] = frame.astype(np.float64) * s.slope + s.intercept
        padding = _padding(frame, ds)
        if padding is not None:
            stack[k][padding] = PADDING_HU
            if padded is None:
                padded = np.zeros(stack.shape, dtype=bool)
            padded[k] = padding
    return stack, padded


#: What a padded pixel (outside the reconstructed field of view) becomes: air. Left as
#: stored (often -2000 or -3024 after rescale), it would read as tissue darker than air
#: wherever the volume is interpolated or a lesion's background ring reaches the edge.
PADDING_HU = -1024.0


def _padding(frame: np.ndarray, ds: Any) -> np.ndarray | None:
    """The pixels Pixel Padding Value (0028,0120), with Pixel Padding Range Limit
    (0028,0121) when given, marks as outside the image (PS3.3 C.7.5.1.1.2); None when
    the image has no padding or is not CT."""
    value = ds.get("PixelPaddingValue")
    if value is None or str(ds.get("Modality", "CT")) != "CT":
        return None
    limit = ds.get("PixelPaddingRangeLimit")
    if limit is None:
        mask = frame == value
    else:
        low, high = sorted((int(value), int(limit)))
        mask = (frame >= low) & (frame <= high)
    return mask if mask.any() else None


def stack_resample_along_normal(
    *, stack: np.ndarray, positions_mm: np.ndarray, spacing_mm: float
) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation between neighbouring slices (at ``positions_mm`` along the
    normal, ascending) onto positions ``positions_mm[0] + m * spacing_mm``; the new
    stack and its positions.

    Along the (possibly tilted) line through the same pixel of every slice, so with
    the in-plane step below it is trilinear interpolation on the acquired lattice.
    """
    d = positions_mm
    count = int(math.floor((d[-1] - d[0]) / spacing_mm + 1e-6)) + 1
    targets = d[0] + spacing_mm * np.arange(count)
    upper = np.clip(np.searchsorted(d, targets, side="right"), 1, len(d) - 1)
    lower = upper - 1
    weight = np.clip((targets - d[lower]) / (d[upper] - d[lower]), 0.0, 1.0).astype(np.float32)
    out = stack[lower] * (1 - weight)[:, None, None] + stack[upper] * weight[:, None, None]
    return out.astype(np.float32), targets


def stack_untilt(
    *, stack: np.ndarray, plan: GeometryPlan, origin: np.ndarray, fill: float
) -> tuple[np.ndarray, np.ndarray]:
    """Resample a sheared stack (uniform along the normal) onto the orthogonal grid.

    Slice m of ``stack`` really lies at ``origin + m * spacing * (normal + shear)``; it is
    handled as if at ``origin + m * spacing * normal`` (the "sheared" frame) and a
    SimpleITK linear resample maps each output point p back by ``p - shear * ((p -
    origin) · normal)``. The output grid keeps size and spacing and is centred on the
    middle slice, so the ends lose (fill) symmetrically.
    """
    direction = np.column_stack([plan.row_cosine, plan.column_cosine, plan.normal])
    spacing = (plan.spacing_i, plan.spacing_j, plan.usual_spacing)
    image = sitk.GetImageFromArray(stack)
    image.SetSpacing(spacing)
    image.SetOrigin(tuple(origin))
    image.SetDirection(tuple(direction.flatten()))

    middle = (stack.shape[0] // 2) * plan.usual_spacing
    out_origin = origin + plan.shear * middle
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(tuple((np.eye(3) - np.outer(plan.shear, plan.normal)).flatten()))
    transform.SetCenter(tuple(origin))
    out = sitk.Resample(
        image,
        image.GetSize(),
        transform,
        sitk.sitkLinear,
        tuple(out_origin),
        spacing,
        tuple(direction.flatten()),
        fill,
        sitk.sitkFloat32,
    )
    return sitk.GetArrayFromImage(out), out_origin
