"""A follow-up reconstructed unlike its baseline is said on its run (RECIST 1.1 section 3.2:
the same technique at every time point)."""

import pytest

from imaging.pipeline.protocol import protocol_differences
from tests.imaging.factories import SeriesFactory

pytestmark = pytest.mark.django_db


def test_a_sharper_kernel_or_much_thicker_slices_than_the_baseline_are_said():
    baseline = SeriesFactory(kernel="B30f", slice_thickness_mm=1.25)
    alike = SeriesFactory(kernel="STANDARD", slice_thickness_mm=2.0)
    unlike = SeriesFactory(kernel="B70f", slice_thickness_mm=5.0)
    assert protocol_differences(alike, baseline) == []
    assert protocol_differences(unlike, baseline) == [
        "kernel sharp ('B70f') here, soft tissue ('B30f') at baseline",
        "slices of 5 mm here, 1.25 mm at baseline",
    ]
    # The baseline itself, no baseline, or a kernel that says nothing: nothing to say.
    assert protocol_differences(baseline, baseline) == []
    assert protocol_differences(unlike, None) == []
    assert (
        protocol_differences(SeriesFactory(kernel="FC13", slice_thickness_mm=1.25), baseline) == []
    )
