"""A radiologist's decision a rebuild cannot carry onto a new segmentation flags the
patient ("needs attention") until a radiologist acts on the patient again."""

from __future__ import annotations

import numpy as np
import pytest

from analytics.dashboard.flags import _decisions_left_behind
from analytics.lesions.review.measurements import measurement_accept, measurement_reject
from analytics.lesions.tracking.track import patient_track
from analytics.models import WorklistFlags
from imaging.models import ReviewEvent, Segmentation, Study
from patients.models import Patient
from tests.imaging.test_review import finding_at, patient_with_studies
from tests.patients.factories import UserFactory

pytestmark = pytest.mark.django_db


def _attention(patient) -> bool:
    """The decisions-left-behind part of "needs attention" (the patient has other
    reasons too, which this test does not move), and the stored flag agreeing."""
    left = (
        Patient.objects.filter(pk=patient.pk)
        .annotate(left=_decisions_left_behind())
        .values_list("left", flat=True)
        .get()
    )
    if left:
        assert WorklistFlags.objects.get(patient=patient).needs_attention
    return left


def test_a_rejection_the_new_model_run_cannot_carry_flags_the_patient_until_reviewed():
    patient = patient_with_studies("LEFT-1")
    radiologist = UserFactory(groups=["radiologist"])
    measurement_reject(user=radiologist, measurement=finding_at(1, 5), reason="a vessel")
    assert not _attention(patient)

    # A new model outlines every candidate again; the rejected one's centre lands 8 mm
    # away, too far for the rejection to follow it.
    study = list(Study.objects.filter(patient=patient).order_by("study_date"))[1]
    old = Segmentation.objects.filter(series=study.chosen_series).order_by("-pk").first()
    lesions = []
    for c in old.lesions:
        c = {**c, "component_label": c["component_label"] + 100}
        if c["component_label"] == 105:
            c["centroid_lps_mm"] = [float(v) for v in np.add(c["centroid_lps_mm"], (8.0, 0, 0))]
        lesions.append(c)
    Segmentation.objects.create(series=study.chosen_series, mask_path="masks/v2.nii.gz",
                                model_name="test", model_version="2", lesions=lesions)  # fmt: skip
    summary = patient_track(patient=patient, trigger="new imaging results were processed")

    assert summary.stale_reviews
    event = ReviewEvent.objects.get(patient=patient, action="carry_over")
    assert event.after["needs_review"] is True
    assert _attention(patient)

    # A radiologist acting on the patient (here: accepting a finding) has looked again.
    measurement_accept(user=radiologist, measurement=finding_at(0, 1), reason="seen")
    assert not _attention(patient)
