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


def _statistics(series, liver_p50, liver_ml=1500.0):
    from imaging.modelhub.models import StudyStatistics
    from tests.imaging.factories import ProcessingRunFactory

    StudyStatistics.objects.create(
        run=ProcessingRunFactory(series=series), series=series, model_label="lesionseg-1.0.0",
        protocol="x", inputs={"liver_hu": {"p50": liver_p50}, "liver_ml": liver_ml}, outputs={},
    )  # fmt: skip
    return {"liver_hu": {"p50": liver_p50}, "liver_ml": liver_ml}


def test_another_contrast_phase_than_the_baseline_is_said_from_the_liver_in_the_images():
    from imaging.pipeline.protocol import contrast_difference

    baseline = SeriesFactory()
    _statistics(baseline, 104.0)  # portal venous
    unenhanced = _statistics(SeriesFactory(), 58.0)
    alike = _statistics(SeriesFactory(), 95.0)
    chest_only = _statistics(SeriesFactory(), 58.0, liver_ml=40.0)  # the liver dome only

    follow_up = SeriesFactory()
    assert contrast_difference(unenhanced, follow_up, baseline) == (
        "liver at 58 HU here, 104 HU at baseline: another contrast phase (lesions' HU and "
        "edges differ for that alone)"
    )
    assert contrast_difference(alike, follow_up, baseline) is None
    assert contrast_difference(chest_only, follow_up, baseline) is None
    # No baseline, the baseline itself, or a baseline without statistics: nothing to say.
    assert contrast_difference(unenhanced, follow_up, None) is None
    assert contrast_difference(unenhanced, baseline, baseline) is None
    assert contrast_difference(unenhanced, follow_up, SeriesFactory()) is None
