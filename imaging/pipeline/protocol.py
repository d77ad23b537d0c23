"""Whether a follow-up was made like its baseline: RECIST 1.1 (section 3.2) asks for the
same technique at every time point, since a sharper kernel, thicker slices or another
contrast phase change a lesion's edges, size and conspicuity by themselves. A
difference is a warning on the run, for the person reading the responses; it does not
stop the analysis.

The contrast phase is read from the images, not the headers (Contrast/Bolus Agent is
often left empty or kept from a protocol template): the median HU of the liver the
model labelled, stored with each run's statistics (`imaging.modelhub.drift`). An
unenhanced liver is about 55 HU, a portal venous one 100 HU or more."""

from __future__ import annotations

from typing import Any

from imaging.core.dicom.series_choice import kernel_class
from imaging.modelhub.models import StudyStatistics
from imaging.models import Series

#: Slice thicknesses further apart than this factor are a different technique.
THICKNESS_FACTOR = 2.0
#: Liver medians further apart than this are another contrast phase (or none).
LIVER_PHASE_HU = 30.0
#: Less liver than this in view (a chest CT's dome) says nothing of the phase.
LIVER_MIN_ML = 100.0


def protocol_differences(series: Series, baseline: Series | None) -> list[str]:
    """How ``series`` was reconstructed unlike ``baseline`` (kernel class, slice
    thickness); empty when alike, unknown, or when it is the baseline."""
    if baseline is None or baseline.pk == series.pk:
        return []
    out = []
    here = kernel_class(convolution_kernel=series.kernel, description=series.description)
    there = kernel_class(convolution_kernel=baseline.kernel, description=baseline.description)
    if "unknown" not in (here, there) and here != there:
        out.append(
            f"kernel {here.replace('_', ' ')} ('{series.kernel}') here, "
            f"{there.replace('_', ' ')} ('{baseline.kernel}') at baseline"
        )
    a, b = series.slice_thickness_mm, baseline.slice_thickness_mm
    if a and b and max(a, b) / min(a, b) >= THICKNESS_FACTOR:
        out.append(f"slices of {a:g} mm here, {b:g} mm at baseline")
    return out


def contrast_difference(
    inputs: dict[str, Any], series: Series, baseline: Series | None
) -> str | None:
    """How the contrast phase of ``series`` (its statistics' ``inputs``) differs from
    the baseline's latest run's; None when alike, unknown, or at the baseline."""
    if baseline is None or baseline.pk == series.pk:
        return None
    stored = StudyStatistics.objects.filter(series=baseline).order_by("-created_at").first()
    if stored is None:
        return None
    here, there = _liver_median(inputs), _liver_median(stored.inputs or {})
    if here is None or there is None or abs(here - there) < LIVER_PHASE_HU:
        return None
    return (
        f"liver at {here:.0f} HU here, {there:.0f} HU at baseline: another contrast phase "
        "(lesions' HU and edges differ for that alone)"
    )


def _liver_median(inputs: dict[str, Any]) -> float | None:
    liver = inputs.get("liver_hu") or {}
    if (inputs.get("liver_ml") or 0.0) < LIVER_MIN_ML or liver.get("p50") is None:
        return None
    return float(liver["p50"])
