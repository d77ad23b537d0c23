"""A lesion proposed by a second reader (the liver's, the lungs'), not the segmenter, says
so: its measurement's origin, and a badge on the patient page."""

import pytest
from django.urls import reverse

from analytics.lesions.tracking.track import patient_track
from imaging.models import LesionMeasurement, Segmentation
from tests.imaging.test_review import patient_with_studies
from tests.patients.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("reader", ["liver_second_reader", "lung_second_reader"])
def test_a_second_reader_finding_is_stored_and_shown_as_such(client, reader):
    patient = patient_with_studies("READER-1")
    baseline = Segmentation.objects.filter(series__study__patient=patient).order_by(
        "series__study__study_date"
    )[0]
    lesions = baseline.lesions
    lesions[2]["found_by"] = reader  # label 3
    Segmentation.objects.filter(pk=baseline.pk).update(lesions=lesions)

    patient_track(patient=patient)

    rows = LesionMeasurement.objects.filter(segmentation=baseline)
    by_label = {m.component_label: m.origin for m in rows}
    assert by_label[3] == LesionMeasurement.Origin.SECOND_READER
    assert by_label[1] == by_label[2] == LesionMeasurement.Origin.AUTOMATED
    client.force_login(UserFactory(groups=["clinician"]))
    page = client.get(reverse("patients:detail", args=[patient.pk])).content.decode()
    assert page.count(">second reader</span>") == 1
