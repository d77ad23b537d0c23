"""The images of one DICOM series as 2D slices with the header values that place them.

A `Slice` is a classic single-frame instance or one frame of an enhanced multi-frame
instance, whose geometry sits in functional groups (PS3.3 C.7.6.16). Also the errors
raised while turning a series into a volume.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset


class SeriesVolumeError(ValueError):
    """The series cannot be turned into a volume; the message says what and where."""

    def __init__(self, message: str, *, code: str = "unreadable", findings: Sequence = ()):
        super().__init__(message)
        self.code = code
        self.findings = tuple(findings)


class SeriesGeometryError(SeriesVolumeError):
    """The series' geometry is unsafe to use or to resample."""


@dataclass
class Slice:
    """One 2D image: a classic single-frame instance or one frame of a multi-frame one."""

    dataset: Dataset
    frame: int | None
    sop_instance_uid: str
    instance_number: int | None
    position: np.ndarray | None
    row_cosine: np.ndarray | None
    column_cosine: np.ndarray | None
    pixel_spacing: tuple[float, float] | None  # (row spacing Δj, column spacing Δi)
    rows: int
    columns: int
    slope: float
    intercept: float
    image_type: tuple[str, ...]
    normal_position: float = 0.0

    @property
    def key(self) -> str:
        return self.sop_instance_uid + (f"#{self.frame + 1}" if self.frame is not None else "")

    def where(self) -> str:
        number = f"instance {self.instance_number}" if self.instance_number is not None else ""
        frame = f" frame {self.frame + 1}" if self.frame is not None else ""
        return f"{number}{frame} ({self.sop_instance_uid})".strip()

    def orientation(self) -> tuple[np.ndarray, np.ndarray]:
        """(row, column) direction cosines of Image Orientation (Patient) (0020,0037);
        `SeriesGeometryError` when the image has none."""
        if self.row_cosine is None or self.column_cosine is None:
            raise SeriesGeometryError(
                f"{self.where()} lacks Image Orientation (Patient) (0020,0037)",
                code="missing_geometry",
            )
        return self.row_cosine, self.column_cosine

    def position_mm(self) -> np.ndarray:
        """Image Position (Patient) (0020,0032), LPS mm; `SeriesGeometryError` when absent."""
        if self.position is None:
            raise SeriesGeometryError(
                f"{self.where()} lacks Image Position (Patient) (0020,0032)",
                code="missing_geometry",
            )
        return self.position

    def spacing_ji(self) -> tuple[float, float]:
        """Pixel Spacing (0028,0030) as (row spacing Δj, column spacing Δi) in mm;
        `SeriesGeometryError` when the image has none."""
        if self.pixel_spacing is None:
            raise SeriesGeometryError(
                f"{self.where()} lacks Pixel Spacing (0028,0030)", code="missing_geometry"
            )
        return self.pixel_spacing


def _floats(value: Any, count: int) -> np.ndarray | None:
    if value is None or value == "":
        return None
    try:
        values = np.asarray([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        return None
    return values if values.size == count and np.all(np.isfinite(values)) else None


def _image_type(value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return tuple(v.strip().upper() for v in value.split("\\"))
    return tuple(str(v).strip().upper() for v in value)


def int_or_none(value: Any) -> int | None:
    """A header value as an int; None when absent, empty or not a number."""
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def float_or_none(value: Any) -> float | None:
    """A header value as a float; None when absent, empty or not a number."""
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _first(sequence: Any) -> Dataset | None:
    return sequence[0] if sequence else None


def _group(ds: Dataset, frame_item: Dataset | None, sequence: str) -> Dataset | None:
    """A functional group macro for one frame: per-frame first, then shared (PS3.3 C.7.6.16)."""
    for holder in (frame_item, _first(ds.get("SharedFunctionalGroupsSequence"))):
        if holder is not None and sequence in holder:
            item = _first(holder.get(sequence))
            if item is not None:
                return item
    return None


def header_value(ds: Dataset, keyword: str, sequence: str) -> Any:
    """``keyword`` at the top level of ``ds`` or, in an enhanced multi-frame instance,
    in its first frame's functional group ``sequence`` (per-frame, then shared): Slice
    Thickness lives in Pixel Measures, Convolution Kernel in CT Reconstruction there."""
    value = ds.get(keyword)
    if value not in (None, ""):
        return value
    item = _group(ds, _first(ds.get("PerFrameFunctionalGroupsSequence")), sequence)
    return item.get(keyword) if item is not None else None


def _frame_slice(ds: Dataset, frame: int, item: Dataset) -> Slice:
    """Frame ``frame`` of an enhanced multi-frame instance, from its functional groups."""
    position = _group(ds, item, "PlanePositionSequence")
    orientation = _group(ds, item, "PlaneOrientationSequence")
    measures = _group(ds, item, "PixelMeasuresSequence")
    transform = _group(ds, item, "PixelValueTransformationSequence")
    frame_type = _group(ds, item, "CTImageFrameTypeSequence") or _group(
        ds, item, "MRImageFrameTypeSequence"
    )
    iop = _floats(orientation.get("ImageOrientationPatient") if orientation else None, 6)
    spacing = _floats(measures.get("PixelSpacing") if measures else None, 2)
    return Slice(
        dataset=ds,
        frame=frame,
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        instance_number=int_or_none(ds.get("InstanceNumber")),
        position=_floats(position.get("ImagePositionPatient") if position else None, 3),
        row_cosine=iop[:3] if iop is not None else None,
        column_cosine=iop[3:] if iop is not None else None,
        pixel_spacing=(spacing[0], spacing[1]) if spacing is not None else None,
        rows=int(ds.get("Rows", 0) or 0),
        columns=int(ds.get("Columns", 0) or 0),
        slope=float(transform.get("RescaleSlope", 1) if transform else 1),
        intercept=float(transform.get("RescaleIntercept", 0) if transform else 0),
        image_type=_image_type(
            (frame_type.get("FrameType") if frame_type else None) or ds.get("ImageType")
        ),
    )


def _single_slice(ds: Dataset) -> Slice:
    """A classic single-frame instance (PS3.3 C.7.6.2)."""
    sop_uid = str(ds.get("SOPInstanceUID", ""))
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    iop = _floats(ds.get("ImageOrientationPatient"), 6)
    spacing = _floats(ds.get("PixelSpacing"), 2)
    n_frames = int_or_none(ds.get("NumberOfFrames")) or 1
    if n_frames > 1:
        raise SeriesVolumeError(
            f"instance {sop_uid} has {n_frames} frames but no per-frame functional groups"
        )
    return Slice(
        dataset=ds,
        frame=None,
        sop_instance_uid=sop_uid,
        instance_number=int_or_none(ds.get("InstanceNumber")),
        position=_floats(ds.get("ImagePositionPatient"), 3),
        row_cosine=iop[:3] if iop is not None else None,
        column_cosine=iop[3:] if iop is not None else None,
        pixel_spacing=(spacing[0], spacing[1]) if spacing is not None else None,
        rows=rows,
        columns=columns,
        slope=float(ds.get("RescaleSlope", 1) or 1),
        intercept=float(ds.get("RescaleIntercept", 0) or 0),
        image_type=_image_type(ds.get("ImageType")),
    )


def slices_of(ds: Dataset) -> list[Slice]:
    """The slices of one instance: one per frame of an enhanced multi-frame image."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame:
        return [_frame_slice(ds, f, item) for f, item in enumerate(per_frame)]
    return [_single_slice(ds)]


def dataset_read(source: Dataset | str | Path, *, stop_before_pixels: bool) -> Dataset:
    """``source`` itself when it is a dataset, else the file read; `SeriesVolumeError`
    when it is not readable DICOM."""
    if isinstance(source, Dataset):
        return source
    try:
        return pydicom.dcmread(source, stop_before_pixels=stop_before_pixels)
    except Exception as exc:  # pydicom raises several kinds on a damaged file
        raise SeriesVolumeError(f"{source}: not a readable DICOM file ({exc})") from exc


def datasets_series_uid(datasets: Sequence[Dataset]) -> str:
    """The one Series Instance UID of ``datasets`` ("" when none has one); refuses several."""
    uids = sorted({str(ds.get("SeriesInstanceUID", "")) for ds in datasets} - {""})
    if len(uids) > 1:
        raise SeriesVolumeError(
            f"the images come from {len(uids)} series ({', '.join(uids)}); give one series",
            code="several_series",
        )
    return uids[0] if uids else ""
