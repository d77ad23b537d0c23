"""The geometry of one series' slices: orientation groups, localizers, order along the
slice normal, gantry tilt and the spacing between slices, with what was found.

Geometry (PS3.3 C.7.6.2.1.1): the centre of pixel (column i, row j) of a slice is at
``IPP + i * Δi * row_cosine + j * Δj * column_cosine`` in LPS mm, where IPP is Image
Position (Patient) (0020,0032), ``Δi`` the column spacing (second value of Pixel
Spacing (0028,0030)) and ``Δj`` the row spacing (first value). The slice normal is
``row_cosine x column_cosine``; slices are ordered by their position along it, never by
Instance Number (0020,0013), and the spacing comes from those positions, never from
Slice Thickness (0018,0050). `geometry_plan` says whether the stack is regular or must
be resampled (within `GeometryLimits`), and raises `SeriesGeometryError` otherwise.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from imaging.core.dicom.series_choice import image_plane
from imaging.core.dicom.slices import SeriesGeometryError, Slice, float_or_none

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


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    cos = float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))


def _orientation_text(s: Slice) -> str:
    row, column = s.orientation()
    values = "\\".join(f"{v:g}" for v in (*row, *column))
    return f"{image_plane(row_cosine=row, column_cosine=column)} ({values})"


def orientation_groups(*, slices: list[Slice], tolerance_deg: float) -> list[list[Slice]]:
    """Slices grouped by orientation (row and column cosines within ``tolerance_deg``),
    the largest group first."""
    groups: list[list[Slice]] = []
    for s in slices:
        row, column = s.orientation()
        for group in groups:
            ref_row, ref_column = group[0].orientation()
            if (
                _angle_deg(row, ref_row) <= tolerance_deg
                and _angle_deg(column, ref_column) <= tolerance_deg
            ):
                group.append(s)
                break
        else:
            groups.append([s])
    return sorted(groups, key=len, reverse=True)


def slices_without_localizers(
    *, slices: list[Slice], limits: GeometryLimits, findings: list[SeriesFinding]
) -> tuple[list[Slice], list[str]]:
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

    groups = orientation_groups(slices=slices, tolerance_deg=limits.orientation_tolerance_deg)
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


@dataclass
class GeometryPlan:
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


def slices_check_common(slices: list[Slice]) -> None:
    """Refuse slices lacking geometry, or differing in size or pixel spacing."""
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
        if not np.allclose(s.spacing_ji(), first.spacing_ji(), rtol=1e-4, atol=1e-5):
            raise SeriesGeometryError(
                f"pixel spacing differs: {first.pixel_spacing} mm at {first.where()} and "
                f"{s.pixel_spacing} mm at {s.where()}",
                code="mixed_pixel_spacing",
            )
    if min(first.spacing_ji()) <= 0:
        raise SeriesGeometryError(
            f"non-positive Pixel Spacing {first.pixel_spacing} at {first.where()}",
            code="missing_geometry",
        )


def slices_ordered(
    *, slices: list[Slice], limits: GeometryLimits
) -> tuple[list[Slice], np.ndarray]:
    """Slices sorted by position along the normal, duplicates refused; and the normal."""
    first = slices[0]
    row, column = first.orientation()
    row = row / np.linalg.norm(row)
    column = column / np.linalg.norm(column)
    if abs(float(np.dot(row, column))) > 1e-3:
        raise SeriesGeometryError(
            f"row and column cosines of Image Orientation (Patient) are not perpendicular "
            f"at {first.where()}",
            code="bad_orientation",
        )
    normal = np.cross(row, column)
    normal /= np.linalg.norm(normal)
    for s in slices:
        s.normal_position = float(np.dot(s.position_mm(), normal))
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


@dataclass(frozen=True)
class _Tilt:
    """In-plane drift of slice positions per mm along the normal, as an angle."""

    shear: np.ndarray
    tilt_deg: float
    tilted: bool


def _tilt(
    ordered: list[Slice],
    normal: np.ndarray,
    pixel_mm: float,
    limits: GeometryLimits,
    findings: list[SeriesFinding],
) -> _Tilt:
    """Gantry tilt: slice positions drift in-plane, linearly with position along the
    normal (the image plane is tilted, the table moves along the patient axis)."""
    positions = np.array([s.position for s in ordered])
    d = np.array([s.normal_position for s in ordered])
    rel_d = d - d[0]
    offsets = positions - positions[0]
    in_plane = offsets - np.outer(offsets @ normal, normal)
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
    header_tilt = float_or_none(ordered[0].dataset.get("GantryDetectorTilt"))
    if not tilted:
        if header_tilt:
            findings.append(
                SeriesFinding(
                    # Two header fields that disagree: a person should see it.
                    "header_gantry_tilt",
                    "warning",
                    f"Gantry/Detector Tilt (0018,1120) is {header_tilt:g}° but the slice "
                    "positions run along the normal, so the images need no tilt correction",
                )
            )
        return _Tilt(np.zeros(3), tilt_deg, tilted)
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
    return _Tilt(shear, tilt_deg, tilted)


def _slice_spacing(
    ordered: list[Slice], limits: GeometryLimits, findings: list[SeriesFinding]
) -> tuple[float, bool]:
    """The usual spacing along the normal, from the positions, and whether every gap is it."""
    d = np.array([s.normal_position for s in ordered])
    gaps = np.diff(d)
    usual = float(np.median(gaps))
    tolerance = max(limits.spacing_tolerance_mm, limits.spacing_tolerance_fraction * usual)
    regular = bool(np.all(np.abs(gaps - usual) <= tolerance))
    if regular:
        usual = float((d[-1] - d[0]) / (len(d) - 1))
    else:
        _classify_gaps(ordered, d, gaps, usual, tolerance, limits, findings)
    thickness = float_or_none(ordered[0].dataset.get("SliceThickness"))
    if thickness and usual - thickness > tolerance:
        # Thin slices far apart: what lies between them was never imaged. A lesion
        # smaller than the gap can fall between two slices.
        findings.append(
            SeriesFinding(
                "gaps_between_slices",
                "warning",
                f"slices of {thickness:g} mm (Slice Thickness, 0018,0050) every {usual:.4g} mm: "
                f"{usual - thickness:.4g} mm between slices was not imaged",
            )
        )
    elif thickness and abs(thickness - usual) > tolerance:
        findings.append(
            SeriesFinding(
                "spacing_from_positions",
                "info",
                f"Slice Thickness (0018,0050) is {thickness:g} mm; the spacing between slice "
                f"positions, {usual:.4g} mm, is used",
            )
        )
    return usual, regular


def geometry_plan(
    *, ordered: list[Slice], normal: np.ndarray, limits: GeometryLimits
) -> GeometryPlan:
    """How the ordered slices map onto a regular grid: tilt, usual spacing, whether they
    need resampling, and what was found; `SeriesGeometryError` beyond ``limits``."""
    row, column = ordered[0].orientation()
    row = row / np.linalg.norm(row)
    column = column / np.linalg.norm(column)
    spacing_j, spacing_i = ordered[0].spacing_ji()
    findings: list[SeriesFinding] = []
    tilt = _tilt(ordered, normal, min(spacing_i, spacing_j), limits, findings)
    usual, regular = _slice_spacing(ordered, limits, findings)
    return GeometryPlan(
        row_cosine=row,
        column_cosine=column,
        normal=normal,
        spacing_i=spacing_i,
        spacing_j=spacing_j,
        usual_spacing=usual,
        shear=tilt.shear,
        tilt_deg=tilt.tilt_deg if tilt.tilted else 0.0,
        tilted=tilt.tilted,
        regular=regular,
        findings=findings,
    )


def _classify_gaps(
    ordered: list[Slice],
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
        gap_at = _Gap(
            gap=float(gap),
            where=(
                f"between {d[index]:.2f} and {d[index + 1]:.2f} mm along the normal "
                f"({a.where()} and {b.where()})"
            ),
            positions_mm=(float(d[index]), float(d[index + 1])),
            sop_instance_uids=(a.key, b.key),
        )
        ratio = gap / usual
        n = round(ratio)
        if n >= 2 and abs(ratio - n) <= limits.missing_ratio_tolerance:
            missing_total += _missing_slices(gap_at, n - 1, usual, tolerance, limits, findings)
        else:
            _irregular_gap(gap_at, usual, tolerance, limits, findings)
    if missing_total > limits.max_total_missing:
        raise SeriesGeometryError(
            f"{missing_total} slices missing in all; at most {limits.max_total_missing} are "
            "interpolated",
            code="missing_slices",
            findings=findings,
        )


@dataclass(frozen=True)
class _Gap:
    """A gap between neighbouring slices that is not the usual spacing."""

    gap: float
    where: str
    positions_mm: tuple[float, float]
    sop_instance_uids: tuple[str, str]


def _missing_slices(
    gap_at: _Gap,
    missing: int,
    usual: float,
    tolerance: float,
    limits: GeometryLimits,
    findings: list[SeriesFinding],
) -> int:
    """Report ``missing`` slices in a gap of a whole multiple of ``usual``; raise when
    more are missing together, or the gap is wider, than is interpolated."""
    gap, where = gap_at.gap, gap_at.where
    findings.append(
        SeriesFinding(
            "missing_slices",
            "warning",
            f"{missing} slice(s) missing {where}: gap {gap:.3f} mm, usual spacing {usual:.3f} mm",
            positions_mm=gap_at.positions_mm,
            sop_instance_uids=gap_at.sop_instance_uids,
        )
    )
    if missing > limits.max_consecutive_missing or gap > limits.max_interpolated_gap_mm + tolerance:
        raise SeriesGeometryError(
            f"{missing} consecutive slice(s) missing {where} (gap {gap:.2f} mm); at "
            f"most {limits.max_consecutive_missing} and "
            f"{limits.max_interpolated_gap_mm:g} mm are interpolated",
            code="missing_slices",
            findings=findings,
        )
    return missing


def _irregular_gap(
    gap_at: _Gap,
    usual: float,
    tolerance: float,
    limits: GeometryLimits,
    findings: list[SeriesFinding],
) -> None:
    """Report a gap that is no whole multiple of ``usual``; raise when it is too far off."""
    gap, where = gap_at.gap, gap_at.where
    deviation = abs(gap - usual) / usual
    findings.append(
        SeriesFinding(
            "irregular_spacing",
            "warning",
            f"irregular slice spacing {where}: gap {gap:.3f} mm, usual spacing "
            f"{usual:.3f} mm ({deviation:.0%} off)",
            positions_mm=gap_at.positions_mm,
            sop_instance_uids=gap_at.sop_instance_uids,
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
