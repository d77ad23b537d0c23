"""Whether a follow-up was reconstructed like its baseline: RECIST 1.1 (section 3.2)
asks for the same technique at every time point, since a sharper kernel or thicker
slices change a lesion's edges and size by themselves. A difference is a warning on the
run, for the person reading the responses; it does not stop the analysis."""

from __future__ import annotations

from imaging.core.dicom.series_choice import kernel_class
from imaging.models import Series

#: Slice thicknesses further apart than this factor are a different technique.
THICKNESS_FACTOR = 2.0


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
