"""Turn the images of one DICOM series into a `Volume` whose geometry is true.

`series_volume` reads the slices (`slices`), orders them along the slice normal and
plans the grid (`slice_geometry`), stacks their modality values and resamples when the
stack is tilted or irregular (`slice_pixels`). Localizers, mixed orientations,
irregular spacing, missing slices and gantry tilt are reported as `SeriesFinding`s; the
series is resampled onto a regular grid when that is safe (within `GeometryLimits`) and
refused with `SeriesGeometryError` otherwise. The volume's k axis runs along the slice
normal, so its direction matrix has columns (row cosine, column cosine, normal) and is
right-handed. `series_summary` gives the series chooser what it needs from headers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from imaging.core.dicom.series_choice import ImagePlane, SeriesSummary, image_plane
from imaging.core.dicom.slice_geometry import (
    DEFAULT_LIMITS,
    GeometryLimits,
    GeometryPlan,
    SeriesFinding,
    geometry_plan,
    orientation_groups,
    slices_check_common,
    slices_ordered,
    slices_without_localizers,
)
from imaging.core.dicom.slice_pixels import (
    slices_read,
    stack_resample_along_normal,
    stack_untilt,
)
from imaging.core.dicom.slices import (
    SeriesGeometryError,
    SeriesVolumeError,
    Slice,
    dataset_read,
    datasets_series_uid,
    float_or_none,
    header_value,
    int_or_none,
    slices_of,
)
from imaging.core.geometry.volume import Volume
from radtrack import provenance


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


@dataclass(frozen=True, eq=False)
class _Geometry:
    """The slices to use in order along the normal, those left out, the grid plan and
    the Frame of Reference UID ("" when none is given)."""

    ordered: list[Slice]
    dropped: list[str]
    plan: GeometryPlan
    frame_of_reference_uid: str


def _slices_once(datasets: Sequence[Dataset], findings: list[SeriesFinding]) -> list[Slice]:
    """Every image's slices, an image given twice (same SOP Instance UID) only once."""
    slices: list[Slice] = []
    seen: dict[str, Slice] = {}
    duplicates: list[str] = []
    for ds in datasets:
        for s in slices_of(ds):
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
    return slices


def _geometry(
    slices: list[Slice], limits: GeometryLimits, findings: list[SeriesFinding]
) -> _Geometry:
    """Localizers dropped, common geometry checked, slices ordered and the grid planned;
    a refusal carries the findings made before it."""
    for s in slices:
        if s.row_cosine is None:
            raise SeriesGeometryError(
                f"{s.where()} lacks Image Orientation (Patient) (0020,0037)",
                code="missing_geometry",
            )
    try:
        slices, dropped = slices_without_localizers(slices=slices, limits=limits, findings=findings)
        slices_check_common(slices)
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
        ordered, normal = slices_ordered(slices=slices, limits=limits)
        plan = geometry_plan(ordered=ordered, normal=normal, limits=limits)
    except SeriesGeometryError as exc:
        # Keep what was found before the refusal in the record of the refusal.
        raise SeriesGeometryError(
            str(exc), code=exc.code, findings=(*findings, *exc.findings)
        ) from None
    return _Geometry(ordered, dropped, plan, next(iter(frames), ""))


def _resampled(
    stack: np.ndarray,
    d: np.ndarray,
    origin: np.ndarray,
    plan: GeometryPlan,
    findings: list[SeriesFinding],
) -> tuple[np.ndarray, np.ndarray]:
    """The stack on a regular orthogonal grid with the usual spacing, and its origin;
    a ``resampled`` finding says why and how."""
    fill = float(stack.min())
    n_acquired = len(stack)
    if not plan.regular:
        stack, targets = stack_resample_along_normal(
            stack=stack, positions_mm=d, spacing_mm=plan.usual_spacing
        )
    else:
        targets = d[0] + plan.usual_spacing * np.arange(len(d))
    if plan.tilted:
        stack, origin = stack_untilt(stack=stack, plan=plan, origin=origin, fill=fill)
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
            f"normal, from {n_acquired} acquired slices{tilt_note}",
            positions_mm=(float(targets[0]), float(targets[-1])),
        )
    )
    return stack, origin


def _padding_resampled(
    padding: np.ndarray | None,
    shape: tuple[int, ...],
    d: np.ndarray,
    origin: np.ndarray,
    plan: GeometryPlan,
) -> np.ndarray | None:
    """The padding mask carried through `_resampled`'s steps: a resampled voxel is
    padding when any padded pixel went into it, and so is one that a tilted stack's
    resampling filled in from outside the acquired slices."""
    if padding is None and not plan.tilted:
        return None
    outside = (
        padding.astype(np.float32) if padding is not None else np.zeros(shape, dtype=np.float32)
    )
    if not plan.regular:
        outside, _ = stack_resample_along_normal(
            stack=outside, positions_mm=d, spacing_mm=plan.usual_spacing
        )
    if plan.tilted:
        outside, _ = stack_untilt(stack=outside, plan=plan, origin=origin, fill=1.0)
    mask = outside > 1e-3  # (interpolation leaves float dust near the edges)
    return mask if mask.any() else None


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
    datasets = [dataset_read(s, stop_before_pixels=False) for s in sources]
    series_uid = datasets_series_uid(datasets)
    findings: list[SeriesFinding] = []
    geometry = _geometry(_slices_once(datasets, findings), limits, findings)
    ordered, plan = geometry.ordered, geometry.plan
    _acquisitions_check(ordered)
    findings += plan.findings
    needs_resample = plan.tilted or not plan.regular
    if needs_resample and not allow_resample:
        raise SeriesGeometryError(
            "the series is not on a regular grid and resampling is not allowed: "
            + "; ".join(f.message for f in plan.findings if f.severity == "warning"),
            code="resample_needed",
            findings=findings,
        )
    stack, padding = slices_read(ordered)
    d = np.array([s.normal_position for s in ordered])
    origin = np.asarray(ordered[0].position, dtype=float)
    if needs_resample:
        padding = _padding_resampled(padding, stack.shape, d, origin, plan)
        stack, origin = _resampled(stack, d, origin, plan, findings)
    volume = Volume(
        array=stack,
        spacing_mm=(plan.spacing_i, plan.spacing_j, plan.usual_spacing),
        origin_mm=tuple(origin),
        direction=np.column_stack([plan.row_cosine, plan.column_cosine, plan.normal]),
        frame_of_reference_uid=geometry.frame_of_reference_uid,
        kind="scalar",
        padding=padding,
    )
    return SeriesVolumeResult(
        volume=volume,
        series_instance_uid=series_uid,
        modality=str(ordered[0].dataset.get("Modality", "")),
        findings=tuple(findings),
        resampled=needs_resample,
        slice_sop_instance_uids=tuple(s.key for s in ordered),
        slice_positions_mm=tuple(float(v) for v in d),
        dropped_sop_instance_uids=tuple(geometry.dropped),
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
    datasets = [dataset_read(s, stop_before_pixels=True) for s in sources]
    if not datasets:
        raise SeriesVolumeError("no images given", code="no_images")
    first = datasets[0]
    slices = [s for ds in datasets for s in slices_of(ds)]
    images = [s for s in slices if "LOCALIZER" not in s.image_type] or slices
    oriented = [s for s in images if s.row_cosine is not None]
    plane: ImagePlane = "unknown"
    spacing = coverage = None
    n_slices = len(images)
    if oriented:
        group = orientation_groups(
            slices=oriented, tolerance_deg=DEFAULT_LIMITS.orientation_tolerance_deg
        )[0]
        row, column = group[0].orientation()
        plane = image_plane(row_cosine=row, column_cosine=column)
        normal = np.cross(row, column)
        positions = sorted(
            {round(float(np.dot(s.position, normal)), 3) for s in group if s.position is not None}
        )
        n_slices = len(group)
        if len(positions) >= 2:
            spacing = float(np.median(np.diff(positions)))
            coverage = positions[-1] - positions[0]
    thicknesses = [
        t
        for t in (
            float_or_none(header_value(s.dataset, "SliceThickness", "PixelMeasuresSequence"))
            for s in images
        )
        if t
    ]
    kernel = header_value(first, "ConvolutionKernel", "CTReconstructionSequence") or ""
    if not isinstance(kernel, str):
        kernel = "\\".join(str(v) for v in kernel)
    return SeriesSummary(
        series_instance_uid=datasets_series_uid(datasets),
        modality=str(first.get("Modality", "")),
        plane=plane,
        convolution_kernel=str(kernel),
        slice_thickness_mm=float(np.median(thicknesses)) if thicknesses else None,
        slice_spacing_mm=spacing,
        coverage_mm=coverage,
        n_slices=n_slices,
        description=str(first.get("SeriesDescription", "")),
        image_type=images[0].image_type,
        series_number=int_or_none(first.get("SeriesNumber")),
    )


def _acquisitions_check(ordered: Sequence[Any]) -> None:
    """Refuse two scans interleaved in one series: along the slice direction, the images
    of one Acquisition Number (0020,0012) must lie together. A step-and-shoot scan gives
    each table position its own number, in blocks; two helical scans of the same range
    (two breath-holds, two phases) stored as one series alternate, and stacked they
    would mix two moments slice by slice."""
    numbers = [s.dataset.get("AcquisitionNumber") for s in ordered]
    if any(n is None or n == "" for n in numbers):
        return
    blocks = [n for i, n in enumerate(numbers) if i == 0 or n != numbers[i - 1]]
    repeated = sorted({str(n) for n in blocks if blocks.count(n) > 1})
    if repeated:
        raise SeriesVolumeError(
            f"images of Acquisition Number {', '.join(repeated)} are interleaved with those "
            "of another acquisition along the slice direction: two scans stored as one "
            "series cannot be stacked into one volume",
            code="interleaved_acquisitions",
        )


#: Air (outside the body, lungs, bowel) reads about -1000 HU on every calibrated CT; a
#: series whose darkest voxels are far from it is not in Hounsfield units (a missing
#: Rescale Intercept, a vendor's raw values) or is not a CT of a body.
AIR_HU_RANGE = (-1150.0, -800.0)


def hu_implausible(array: np.ndarray) -> str:
    """Why the volume's values do not read as Hounsfield units ("" when they do): its
    darkest percent should be air."""
    sample = np.asarray(array[:: max(1, array.shape[0] // 16)], dtype=np.float32).ravel()
    if sample.size == 0:
        return ""
    darkest = float(np.percentile(sample, 1))
    low, high = AIR_HU_RANGE
    if low <= darkest <= high:
        return ""
    return (
        f"the darkest 1% of voxels reads {darkest:.0f} HU where air should read about -1000 "
        "HU: the values may not be Hounsfield units (Rescale Slope/Intercept missing or "
        "wrong); lesion segmentation and measurements rest on HU"
    )
