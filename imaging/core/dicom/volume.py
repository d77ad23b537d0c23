"""Turn the images of one DICOM series into a `Volume` whose geometry is true.

Slices are ordered by their position along the slice normal, never by Instance Number
(0020,0013) or file name; the spacing comes from the positions, never from Slice
Thickness (0018,0050); the direction from Image Orientation (Patient) (0020,0037).
Localizers, mixed orientations, irregular spacing, missing slices and gantry tilt are
detected and reported as `SeriesFinding`s; the series is resampled onto a regular grid
when that is safe (within `GeometryLimits`) and refused with `SeriesGeometryError`
otherwise.

Geometry (PS3.3 C.7.6.2.1.1): the centre of pixel (column i, row j) of a slice is at
``IPP + i * Δi * row_cosine + j * Δj * column_cosine`` in LPS mm, where IPP is Image
Position (Patient) (0020,0032), ``Δi`` the column spacing (second value of Pixel
Spacing (0028,0030)) and ``Δj`` the row spacing (first value). The slice normal is
``row_cosine x column_cosine``; the volume's k axis runs along it, so its direction
matrix has columns (row cosine, column cosine, normal) and is right-handed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut

from imaging.core.dicom.series_choice import SeriesSummary, image_plane
from imaging.core.geometry.volume import Volume
from radtrack import provenance

Severity = Literal["info", "warning"]


@dataclass(frozen=True)
class GeometryLimits:
    """Tolerances and the limits within which a series is resampled rather than refused.

    Lengths in mm, angles in degrees, ``*_px`` in in-plane pixels, fractions of the
    usual (median) spacing between slice positions.
    """

    #: Two orientations are the same when row and column cosines each differ by less.
    orientation_tolerance_deg: float = 0.5
    #: At most this many images in other orientations are dropped as localizers;
    #: more means a mixed-orientation series, which is refused.
    max_localizer_images: int = 3
    #: Two images closer than this along the normal are at the same position (refused).
    duplicate_position_mm: float = 0.01
    #: A gap is regular within max(spacing_tolerance_mm, spacing_tolerance_fraction x usual).
    spacing_tolerance_mm: float = 0.01
    spacing_tolerance_fraction: float = 0.01
    #: A gap within this of a whole multiple n >= 2 of the usual spacing is n - 1
    #: missing slices (as a fraction of the usual spacing).
    missing_ratio_tolerance: float = 0.1
    #: Irregular (not whole-multiple) gaps are resampled when within this fraction of
    #: the usual spacing, refused beyond it.
    max_irregular_deviation_fraction: float = 0.25
    #: Missing slices are interpolated when at most this many are consecutive...
    max_consecutive_missing: int = 2
    #: ...at most this many are missing in all...
    max_total_missing: int = 5
    #: ...and no gap that is interpolated across is wider than this.
    max_interpolated_gap_mm: float = 10.0
    #: Below this in-plane drift of the slice positions over the whole stack the
    #: series is not tilted (resampling would move nothing measurably).
    tilt_tolerance_px: float = 0.1
    #: Tilted series are resampled up to this angle (clinical gantries tilt to 30).
    max_tilt_deg: float = 30.0
    #: Slice positions must lie on one straight line within this (in-plane pixels).
    line_tolerance_px: float = 0.2


DEFAULT_LIMITS = GeometryLimits()


class SeriesVolumeError(ValueError):
    """The series cannot be turned into a volume; the message says what and where."""

    def __init__(self, message: str, *, code: str = "unreadable", findings: Sequence = ()):
        super().__init__(message)
        self.code = code
        self.findings = tuple(findings)


class SeriesGeometryError(SeriesVolumeError):
    """The series' geometry is unsafe to use or to resample."""


@dataclass(frozen=True)
class SeriesFinding:
    """Something noticed about the series, for the run record.

    ``positions_mm`` are positions along the slice normal (IPP · normal, mm) where it
    was seen; ``sop_instance_uids`` the images concerned.
    """

    code: str
    severity: Severity
    message: str
    positions_mm: tuple[float, ...] = ()
    sop_instance_uids: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SeriesVolumeResult:
    """The volume (float32 in modality units, HU for CT) and what was found and done.

    ``slice_sop_instance_uids`` and ``slice_positions_mm`` describe the acquired slices
    that were used, in order along the normal (for multi-frame images the UID is
    followed by ``#frame``). When ``resampled`` is true the volume's slices are
    interpolated from them and the findings say why.
    """

    volume: Volume
    series_instance_uid: str
    modality: str
    findings: tuple[SeriesFinding, ...]
    resampled: bool
    slice_sop_instance_uids: tuple[str, ...]
    slice_positions_mm: tuple[float, ...]
    dropped_sop_instance_uids: tuple[str, ...]
    gantry_tilt_deg: float
    limits: GeometryLimits = DEFAULT_LIMITS

    @property
    def warnings(self) -> tuple[SeriesFinding, ...]:
        return tuple(f for f in self.findings if f.severity == "warning")

    def as_record(self) -> dict[str, Any]:
        """A JSON-ready description for the processing run record."""
        v = self.volume
        return {
            "series_instance_uid": self.series_instance_uid,
            "modality": self.modality,
            "shape_ijk": list(v.shape_ijk),
            "spacing_mm": list(v.spacing_mm),
            "origin_mm": list(v.origin_mm),
            "direction": v.direction.tolist(),
            "frame_of_reference_uid": v.frame_of_reference_uid,
            "resampled": self.resampled,
            "gantry_tilt_deg": self.gantry_tilt_deg,
            "n_slices_used": len(self.slice_sop_instance_uids),
            "dropped_sop_instance_uids": list(self.dropped_sop_instance_uids),
            "findings": [f.as_dict() for f in self.findings],
            "limits": asdict(self.limits),
            "versions": library_versions(),
        }


def library_versions() -> dict[str, str]:
    return provenance.library_versions("pydicom", "SimpleITK", "numpy")


# --------------------------------------------------------------------------- headers
@dataclass
class _Slice:
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


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _group(ds: Dataset, frame_item: Dataset | None, sequence: str) -> Dataset | None:
    """A functional group macro for one frame: per-frame first, then shared (PS3.3 C.7.6.16)."""
    for holder in (frame_item, _first(ds.get("SharedFunctionalGroupsSequence"))):
        if holder is not None and sequence in holder:
            item = _first(holder.get(sequence))
            if item is not None:
                return item
    return None


def _first(sequence: Any) -> Dataset | None:
    return sequence[0] if sequence else None


def _slices_of(ds: Dataset) -> list[_Slice]:
    sop_uid = str(ds.get("SOPInstanceUID", ""))
    instance_number = _int_or_none(ds.get("InstanceNumber"))
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame:
        # Enhanced multi-frame (PS3.3 C.7.6.16): geometry per frame in functional groups.
        slices = []
        for f, item in enumerate(per_frame):
            position = _group(ds, item, "PlanePositionSequence")
            orientation = _group(ds, item, "PlaneOrientationSequence")
            measures = _group(ds, item, "PixelMeasuresSequence")
            transform = _group(ds, item, "PixelValueTransformationSequence")
            frame_type = _group(ds, item, "CTImageFrameTypeSequence") or _group(
                ds, item, "MRImageFrameTypeSequence"
            )
            iop = _floats(orientation.get("ImageOrientationPatient") if orientation else None, 6)
            spacing = _floats(measures.get("PixelSpacing") if measures else None, 2)
            slices.append(
                _Slice(
                    dataset=ds,
                    frame=f,
                    sop_instance_uid=sop_uid,
                    instance_number=instance_number,
                    position=_floats(position.get("ImagePositionPatient") if position else None, 3),
                    row_cosine=iop[:3] if iop is not None else None,
                    column_cosine=iop[3:] if iop is not None else None,
                    pixel_spacing=(spacing[0], spacing[1]) if spacing is not None else None,
                    rows=rows,
                    columns=columns,
                    slope=float(transform.get("RescaleSlope", 1) if transform else 1),
                    intercept=float(transform.get("RescaleIntercept", 0) if transform else 0),
                    image_type=_image_type(
                        (frame_type.get("FrameType") if frame_type else None) or ds.get("ImageType")
                    ),
                )
            )
        return slices
    iop = _floats(ds.get("ImageOrientationPatient"), 6)
    spacing = _floats(ds.get("PixelSpacing"), 2)
    n_frames = _int_or_none(ds.get("NumberOfFrames")) or 1
    if n_frames > 1:
        raise SeriesVolumeError(
            f"instance {sop_uid} has {n_frames} frames but no per-frame functional groups"
        )
    return [
        _Slice(
            dataset=ds,
            frame=None,
            sop_instance_uid=sop_uid,
            instance_number=instance_number,
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
    ]


def _dataset(source: Dataset | str | Path, *, stop_before_pixels: bool) -> Dataset:
    if isinstance(source, Dataset):
        return source
    try:
        return pydicom.dcmread(source, stop_before_pixels=stop_before_pixels)
    except Exception as exc:  # pydicom raises several kinds on a damaged file
        raise SeriesVolumeError(f"{source}: not a readable DICOM file ({exc})") from exc


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    cos = float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))


def _orientation_text(s: _Slice) -> str:
    assert s.row_cosine is not None and s.column_cosine is not None
    values = "\\".join(f"{v:g}" for v in (*s.row_cosine, *s.column_cosine))
    return f"{image_plane(row_cosine=s.row_cosine, column_cosine=s.column_cosine)} ({values})"


def _orientation_groups(slices: list[_Slice], tolerance_deg: float) -> list[list[_Slice]]:
    groups: list[list[_Slice]] = []
    for s in slices:
        for group in groups:
            ref = group[0]
            if (
                _angle_deg(s.row_cosine, ref.row_cosine) <= tolerance_deg
                and _angle_deg(s.column_cosine, ref.column_cosine) <= tolerance_deg
            ):
                group.append(s)
                break
        else:
            groups.append([s])
    return sorted(groups, key=len, reverse=True)


def _series_uid(datasets: Sequence[Dataset]) -> str:
    uids = sorted({str(ds.get("SeriesInstanceUID", "")) for ds in datasets} - {""})
    if len(uids) > 1:
        raise SeriesVolumeError(
            f"the images come from {len(uids)} series ({', '.join(uids)}); give one series",
            code="several_series",
        )
    return uids[0] if uids else ""


def _without_localizers(
    slices: list[_Slice], limits: GeometryLimits, findings: list[SeriesFinding]
) -> tuple[list[_Slice], list[str]]:
    """Drop Image Type LOCALIZER images and a few images in a minority orientation."""
    dropped: list[str] = []
    localizers = [s for s in slices if "LOCALIZER" in s.image_type]
    if localizers:
        findings.append(
            SeriesFinding(
                "localizer_dropped",
                "info",
                f"{len(localizers)} localizer image(s) (Image Type LOCALIZER) left out",
                sop_instance_uids=tuple(s.key for s in localizers),
            )
        )
        dropped += [s.key for s in localizers]
    slices = [s for s in slices if "LOCALIZER" not in s.image_type]
    if not slices:
        raise SeriesGeometryError("the series holds only localizer images", code="no_images")

    groups = _orientation_groups(slices, limits.orientation_tolerance_deg)
    if len(groups) > 1:
        main, others = groups[0], [s for g in groups[1:] for s in g]
        if len(others) > limits.max_localizer_images or len(others) >= len(main):
            counts = "; ".join(f"{len(g)} image(s) {_orientation_text(g[0])}" for g in groups)
            raise SeriesGeometryError(
                f"mixed orientations in one series: {counts}; only up to "
                f"{limits.max_localizer_images} images in another orientation are taken "
                "for localizers",
                code="mixed_orientation",
            )
        findings.append(
            SeriesFinding(
                "orientation_outlier_dropped",
                "warning",
                f"{len(others)} image(s) in another orientation than the other "
                f"{len(main)} ({', '.join(_orientation_text(s) for s in others)} against "
                f"{_orientation_text(main[0])}) taken for localizers and left out",
                sop_instance_uids=tuple(s.key for s in others),
            )
        )
        dropped += [s.key for s in others]
        slices = main
    return slices, dropped


# --------------------------------------------------------------------------- geometry
@dataclass
class _Plan:
    """How the ordered slices map onto the output grid."""

    row_cosine: np.ndarray
    column_cosine: np.ndarray
    normal: np.ndarray
    spacing_i: float
    spacing_j: float
    usual_spacing: float
    shear: np.ndarray  # in-plane drift of slice positions per mm along the normal
    tilt_deg: float
    tilted: bool
    regular: bool
    findings: list[SeriesFinding] = field(default_factory=list)


def _check_common(slices: list[_Slice]) -> None:
    for attribute, label in (
        ("position", "Image Position (Patient) (0020,0032)"),
        ("row_cosine", "Image Orientation (Patient) (0020,0037)"),
        ("pixel_spacing", "Pixel Spacing (0028,0030)"),
    ):
        lacking = [s for s in slices if getattr(s, attribute) is None]
        if lacking:
            raise SeriesGeometryError(
                f"{len(lacking)} image(s) lack {label}, e.g. {lacking[0].where()}",
                code="missing_geometry",
            )
    first = slices[0]
    for s in slices[1:]:
        if (s.rows, s.columns) != (first.rows, first.columns):
            raise SeriesGeometryError(
                f"image sizes differ: {first.rows}x{first.columns} at {first.where()} and "
                f"{s.rows}x{s.columns} at {s.where()}",
                code="mixed_size",
            )
        if not np.allclose(s.pixel_spacing, first.pixel_spacing, rtol=1e-4, atol=1e-5):
            raise SeriesGeometryError(
                f"pixel spacing differs: {first.pixel_spacing} mm at {first.where()} and "
                f"{s.pixel_spacing} mm at {s.where()}",
                code="mixed_pixel_spacing",
            )
    if min(first.pixel_spacing) <= 0:
        raise SeriesGeometryError(
            f"non-positive Pixel Spacing {first.pixel_spacing} at {first.where()}",
            code="missing_geometry",
        )


def _ordered(slices: list[_Slice], limits: GeometryLimits) -> tuple[list[_Slice], np.ndarray]:
    """Slices sorted by position along the normal, duplicates refused; and the normal."""
    first = slices[0]
    row = first.row_cosine / np.linalg.norm(first.row_cosine)
    column = first.column_cosine / np.linalg.norm(first.column_cosine)
    if abs(float(np.dot(row, column))) > 1e-3:
        raise SeriesGeometryError(
            f"row and column cosines of Image Orientation (Patient) are not perpendicular "
            f"at {first.where()}",
            code="bad_orientation",
        )
    normal = np.cross(row, column)
    normal /= np.linalg.norm(normal)
    for s in slices:
        s.normal_position = float(np.dot(s.position, normal))
    ordered = sorted(slices, key=lambda s: s.normal_position)
    for a, b in zip(ordered, ordered[1:], strict=False):
        if b.normal_position - a.normal_position < limits.duplicate_position_mm:
            raise SeriesGeometryError(
                f"two images at the same position {a.normal_position:.3f} mm along the "
                f"normal: {a.where()} and {b.where()} (several acquisitions, phases or "
                "echoes in one series?)",
                code="duplicate_position",
            )
    return ordered, normal


def _geometry_plan(ordered: list[_Slice], normal: np.ndarray, limits: GeometryLimits) -> _Plan:
    first = ordered[0]
    row = first.row_cosine / np.linalg.norm(first.row_cosine)
    column = first.column_cosine / np.linalg.norm(first.column_cosine)
    spacing_j, spacing_i = first.pixel_spacing
    pixel_mm = min(spacing_i, spacing_j)
    positions = np.array([s.position for s in ordered])
    d = np.array([s.normal_position for s in ordered])
    rel_d = d - d[0]
    offsets = positions - positions[0]
    in_plane = offsets - np.outer(offsets @ normal, normal)
    findings: list[SeriesFinding] = []

    # Gantry tilt: slice positions drift in-plane, linearly with position along the
    # normal (the image plane is tilted, the table moves along the patient axis).
    shear = (rel_d @ in_plane) / float(rel_d @ rel_d)
    residual = np.linalg.norm(in_plane - np.outer(rel_d, shear), axis=1)
    worst = int(np.argmax(residual))
    if residual[worst] > limits.line_tolerance_px * pixel_mm:
        raise SeriesGeometryError(
            f"slice positions do not lie on a straight line: {ordered[worst].where()} at "
            f"{d[worst]:.2f} mm along the normal is {residual[worst]:.2f} mm off it",
            code="positions_off_line",
            findings=findings,
        )
    drift_mm = float(np.linalg.norm(shear) * rel_d[-1])
    tilt_deg = math.degrees(math.atan(float(np.linalg.norm(shear))))
    tilted = drift_mm > limits.tilt_tolerance_px * pixel_mm
    header_tilt = _float_or_none(first.dataset.get("GantryDetectorTilt"))
    if tilted:
        header = f"; Gantry/Detector Tilt (0018,1120) says {header_tilt:g}°" if header_tilt else ""
        findings.append(
            SeriesFinding(
                "gantry_tilt",
                "warning",
                f"gantry tilt of {tilt_deg:.2f}° from the slice positions (they drift "
                f"{drift_mm:.2f} mm in-plane over {rel_d[-1]:.1f} mm along the normal){header}",
                positions_mm=(float(d[0]), float(d[-1])),
            )
        )
        if tilt_deg > limits.max_tilt_deg:
            raise SeriesGeometryError(
                f"gantry tilt of {tilt_deg:.1f}° is beyond the {limits.max_tilt_deg:g}° "
                "that is resampled",
                code="gantry_tilt",
                findings=findings,
            )
    else:
        shear = np.zeros(3)
        if header_tilt:
            findings.append(
                SeriesFinding(
                    "header_gantry_tilt",
                    "info",
                    f"Gantry/Detector Tilt (0018,1120) is {header_tilt:g}° but the slice "
                    "positions run along the normal, so the images need no tilt correction",
                )
            )

    # Spacing along the normal, from the positions.
    gaps = np.diff(d)
    usual = float(np.median(gaps))
    tolerance = max(limits.spacing_tolerance_mm, limits.spacing_tolerance_fraction * usual)
    regular = bool(np.all(np.abs(gaps - usual) <= tolerance))
    if regular:
        usual = float(rel_d[-1] / (len(d) - 1))
    else:
        _classify_gaps(ordered, d, gaps, usual, tolerance, limits, findings)

    thickness = _float_or_none(first.dataset.get("SliceThickness"))
    if thickness and abs(thickness - usual) > tolerance:
        findings.append(
            SeriesFinding(
                "spacing_from_positions",
                "info",
                f"Slice Thickness (0018,0050) is {thickness:g} mm; the spacing between slice "
                f"positions, {usual:.4g} mm, is used",
            )
        )
    return _Plan(
        row_cosine=row,
        column_cosine=column,
        normal=normal,
        spacing_i=spacing_i,
        spacing_j=spacing_j,
        usual_spacing=usual,
        shear=shear,
        tilt_deg=tilt_deg if tilted else 0.0,
        tilted=tilted,
        regular=regular,
        findings=findings,
    )


def _float_or_none(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _classify_gaps(
    ordered: list[_Slice],
    d: np.ndarray,
    gaps: np.ndarray,
    usual: float,
    tolerance: float,
    limits: GeometryLimits,
    findings: list[SeriesFinding],
) -> None:
    """Report missing slices and irregular gaps; raise when they are beyond the limits."""
    missing_total = 0
    for index, gap in enumerate(gaps):
        if abs(gap - usual) <= tolerance:
            continue
        a, b = ordered[index], ordered[index + 1]
        where = (
            f"between {d[index]:.2f} and {d[index + 1]:.2f} mm along the normal "
            f"({a.where()} and {b.where()})"
        )
        ratio = gap / usual
        n = round(ratio)
        if n >= 2 and abs(ratio - n) <= limits.missing_ratio_tolerance:
            missing = n - 1
            missing_total += missing
            findings.append(
                SeriesFinding(
                    "missing_slices",
                    "warning",
                    f"{missing} slice(s) missing {where}: gap {gap:.3f} mm, usual "
                    f"spacing {usual:.3f} mm",
                    positions_mm=(float(d[index]), float(d[index + 1])),
                    sop_instance_uids=(a.key, b.key),
                )
            )
            if (
                missing > limits.max_consecutive_missing
                or gap > limits.max_interpolated_gap_mm + tolerance
            ):
                raise SeriesGeometryError(
                    f"{missing} consecutive slice(s) missing {where} (gap {gap:.2f} mm); at "
                    f"most {limits.max_consecutive_missing} and "
                    f"{limits.max_interpolated_gap_mm:g} mm are interpolated",
                    code="missing_slices",
                    findings=findings,
                )
            continue
        deviation = abs(gap - usual) / usual
        findings.append(
            SeriesFinding(
                "irregular_spacing",
                "warning",
                f"irregular slice spacing {where}: gap {gap:.3f} mm, usual spacing "
                f"{usual:.3f} mm ({deviation:.0%} off)",
                positions_mm=(float(d[index]), float(d[index + 1])),
                sop_instance_uids=(a.key, b.key),
            )
        )
        if deviation > limits.max_irregular_deviation_fraction or (
            gap > limits.max_interpolated_gap_mm + tolerance
        ):
            raise SeriesGeometryError(
                f"irregular slice spacing {where}: gap {gap:.3f} mm against a usual "
                f"{usual:.3f} mm ({deviation:.0%} off; at most "
                f"{limits.max_irregular_deviation_fraction:.0%} is resampled)",
                code="irregular_spacing",
                findings=findings,
            )
    if missing_total > limits.max_total_missing:
        raise SeriesGeometryError(
            f"{missing_total} slices missing in all; at most {limits.max_total_missing} are "
            "interpolated",
            code="missing_slices",
            findings=findings,
        )


# --------------------------------------------------------------------------- pixels
def _pixels(ordered: list[_Slice]) -> np.ndarray:
    """Stack of modality values (Rescale Slope/Intercept applied, PS3.3 C.11.1), float32."""
    decoded: dict[int, np.ndarray] = {}
    stack = np.empty((len(ordered), ordered[0].rows, ordered[0].columns), dtype=np.float32)
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
    return stack


def _resample_along_normal(
    stack: np.ndarray, d: np.ndarray, spacing: float
) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation between neighbouring slices onto positions d0 + m * spacing.

    Along the (possibly tilted) line through the same pixel of every slice, so with
    the in-plane step below it is trilinear interpolation on the acquired lattice.
    """
    count = int(math.floor((d[-1] - d[0]) / spacing + 1e-6)) + 1
    targets = d[0] + spacing * np.arange(count)
    upper = np.clip(np.searchsorted(d, targets, side="right"), 1, len(d) - 1)
    lower = upper - 1
    weight = np.clip((targets - d[lower]) / (d[upper] - d[lower]), 0.0, 1.0).astype(np.float32)
    out = stack[lower] * (1 - weight)[:, None, None] + stack[upper] * weight[:, None, None]
    return out.astype(np.float32), targets


def _untilt(
    stack: np.ndarray, plan: _Plan, origin: np.ndarray, fill: float
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


# --------------------------------------------------------------------------- public
def series_volume(
    *,
    sources: Sequence[Dataset | str | Path],
    allow_resample: bool = True,
    limits: GeometryLimits = DEFAULT_LIMITS,
) -> SeriesVolumeResult:
    """Build a geometry-true volume from the images (datasets or file paths) of one series.

    Returns the volume in LPS mm (float32 modality values: HU for CT after Rescale
    Slope (0028,1053) and Intercept (0028,1052)) with findings for the run record.
    Localizers are dropped; a regular stack is used as acquired; a stack with gantry
    tilt, missing slices or irregular spacing within ``limits`` is resampled (linear)
    onto a regular orthogonal grid with the usual spacing, and a ``resampled`` finding
    says so. Raises `SeriesGeometryError` (with ``code`` and the findings so far) when
    the geometry is unsafe, or is not regular and ``allow_resample`` is false, and
    `SeriesVolumeError` for unreadable input. Compressed transfer syntaxes decode
    through pydicom's pixel data handlers (pylibjpeg, openjpeg, RLE).
    """
    if not sources:
        raise SeriesVolumeError("no images given", code="no_images")
    datasets = [_dataset(s, stop_before_pixels=False) for s in sources]
    series_uid = _series_uid(datasets)
    findings: list[SeriesFinding] = []

    slices: list[_Slice] = []
    seen: dict[str, _Slice] = {}
    duplicates: list[str] = []
    for ds in datasets:
        for s in _slices_of(ds):
            if s.sop_instance_uid and s.key in seen:
                duplicates.append(s.key)
                continue
            seen[s.key] = s
            slices.append(s)
    if duplicates:
        findings.append(
            SeriesFinding(
                "duplicate_instance_dropped",
                "info",
                f"{len(duplicates)} image(s) given twice (same SOP Instance UID) used once",
                sop_instance_uids=tuple(duplicates),
            )
        )

    for s in slices:
        if s.row_cosine is None:
            raise SeriesGeometryError(
                f"{s.where()} lacks Image Orientation (Patient) (0020,0037)",
                code="missing_geometry",
            )
    try:
        slices, dropped = _without_localizers(slices, limits, findings)
        _check_common(slices)
        if len(slices) < 2:
            raise SeriesGeometryError(
                f"{len(slices)} image(s) left after dropping localizers; a volume needs 2",
                code="too_few_slices",
            )
        frames = {str(s.dataset.get("FrameOfReferenceUID", "")) for s in slices} - {""}
        if len(frames) > 1:
            raise SeriesGeometryError(
                f"the images are in {len(frames)} frames of reference: {', '.join(sorted(frames))}",
                code="mixed_frame_of_reference",
            )
        ordered, normal = _ordered(slices, limits)
        plan = _geometry_plan(ordered, normal, limits)
    except SeriesGeometryError as exc:
        # Keep what was found before the refusal in the record of the refusal.
        raise SeriesGeometryError(
            str(exc), code=exc.code, findings=(*findings, *exc.findings)
        ) from None
    findings += plan.findings
    needs_resample = plan.tilted or not plan.regular
    if needs_resample and not allow_resample:
        raise SeriesGeometryError(
            "the series is not on a regular grid and resampling is not allowed: "
            + "; ".join(f.message for f in plan.findings if f.severity == "warning"),
            code="resample_needed",
            findings=findings,
        )

    stack = _pixels(ordered)
    d = np.array([s.normal_position for s in ordered])
    origin = np.asarray(ordered[0].position, dtype=float)
    if needs_resample:
        fill = float(stack.min())
        if not plan.regular:
            stack, targets = _resample_along_normal(stack, d, plan.usual_spacing)
        else:
            targets = d[0] + plan.usual_spacing * np.arange(len(d))
        if plan.tilted:
            stack, origin = _untilt(stack, plan, origin, fill)
        why = [
            text
            for flag, text in (
                (plan.tilted, f"gantry tilt {plan.tilt_deg:.2f}°"),
                (not plan.regular, "non-uniform slice spacing"),
            )
            if flag
        ]
        tilt_note = (
            f"; in-plane shift up to {np.linalg.norm(plan.shear) * (targets[-1] - targets[0]) / 2:.2f}"
            f" mm at the ends, voxels outside the acquired field set to {fill:g}"
            if plan.tilted
            else ""
        )
        findings.append(
            SeriesFinding(
                "resampled",
                "warning",
                f"resampled ({' and '.join(why)}) with linear interpolation onto a regular "
                f"grid of {len(targets)} slices every {plan.usual_spacing:.4g} mm along the "
                f"normal, from {len(ordered)} acquired slices{tilt_note}",
                positions_mm=(float(targets[0]), float(targets[-1])),
            )
        )

    volume = Volume(
        array=stack,
        spacing_mm=(plan.spacing_i, plan.spacing_j, plan.usual_spacing),
        origin_mm=tuple(origin),
        direction=np.column_stack([plan.row_cosine, plan.column_cosine, plan.normal]),
        frame_of_reference_uid=next(iter(frames), ""),
        kind="scalar",
    )
    return SeriesVolumeResult(
        volume=volume,
        series_instance_uid=series_uid,
        modality=str(ordered[0].dataset.get("Modality", "")),
        findings=tuple(findings),
        resampled=needs_resample,
        slice_sop_instance_uids=tuple(s.key for s in ordered),
        slice_positions_mm=tuple(float(v) for v in d),
        dropped_sop_instance_uids=tuple(dropped),
        gantry_tilt_deg=plan.tilt_deg,
        limits=limits,
    )


def series_summary(*, sources: Sequence[Dataset | str | Path]) -> SeriesSummary:
    """What the series chooser needs, from the headers of one series' images.

    Reads files without pixel data. Never raises on odd geometry: the plane is
    'unknown' when orientation is missing, and spacing and coverage (extent of slice
    positions along the normal, mm) come from the largest orientation group of the
    non-localizer images.
    """
    datasets = [_dataset(s, stop_before_pixels=True) for s in sources]
    if not datasets:
        raise SeriesVolumeError("no images given", code="no_images")
    first = datasets[0]
    slices = [s for ds in datasets for s in _slices_of(ds)]
    images = [s for s in slices if "LOCALIZER" not in s.image_type] or slices
    oriented = [s for s in images if s.row_cosine is not None]
    plane = "unknown"
    spacing = coverage = None
    n_slices = len(images)
    if oriented:
        group = _orientation_groups(oriented, DEFAULT_LIMITS.orientation_tolerance_deg)[0]
        ref = group[0]
        plane = image_plane(row_cosine=ref.row_cosine, column_cosine=ref.column_cosine)
        normal = np.cross(ref.row_cosine, ref.column_cosine)
        positions = sorted(
            {round(float(np.dot(s.position, normal)), 3) for s in group if s.position is not None}
        )
        n_slices = len(group)
        if len(positions) >= 2:
            spacing = float(np.median(np.diff(positions)))
            coverage = positions[-1] - positions[0]
    thicknesses = [
        t for t in (_float_or_none(s.dataset.get("SliceThickness")) for s in images) if t
    ]
    kernel = first.get("ConvolutionKernel", "")
    if not isinstance(kernel, str):
        kernel = "\\".join(str(v) for v in kernel)
    return SeriesSummary(
        series_instance_uid=_series_uid(datasets),
        modality=str(first.get("Modality", "")),
        plane=plane,
        convolution_kernel=str(kernel),
        slice_thickness_mm=float(np.median(thicknesses)) if thicknesses else None,
        slice_spacing_mm=spacing,
        coverage_mm=coverage,
        n_slices=n_slices,
        description=str(first.get("SeriesDescription", "")),
        image_type=images[0].image_type,
        series_number=_int_or_none(first.get("SeriesNumber")),
    )
