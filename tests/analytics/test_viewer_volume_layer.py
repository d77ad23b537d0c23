"""The viewer says when a volume was measured with the lesion's outer layer (the ground
glass of a part-solid nodule, a cystic lesion's wall) and what it is without it."""

import datetime as dt

import pytest

from imaging.models import Segmentation
from tests.analytics.test_viewer_audit_mends import page_of, processed
from tests.imaging.factories import LesionFactory, LesionMeasurementFactory
from tests.patients.factories import PatientFactory, UserFactory

pytestmark = pytest.mark.django_db


def test_a_volume_read_with_its_ground_glass_says_so_and_a_plain_one_does_not(client):
    client.force_login(UserFactory(groups=["clinician"]))
    patient = PatientFactory()
    study = processed(patient, dt.date(2024, 1, 10), candidates=0)
    segmentation = Segmentation.objects.get(series__study=study)
    segmentation.lesions = [
        {"component_label": 1, "volume_ml": 4.61, "volume_method": "two_level",
         "volume_layer": "ground_glass", "volume_core_ml": 1.43},
        {"component_label": 2, "volume_ml": 2.2, "volume_method": "partial_volume",
         "volume_layer": None, "volume_core_ml": None},
        {"component_label": 3, "volume_ml": 7.12, "volume_method": "two_level",
         "volume_layer": "hypodense_wall", "volume_core_ml": 2.65},
    ]  # fmt: skip
    segmentation.save()
    rows = {}
    for label, (name, volume, override) in enumerate(
        [("Lung 1", 4.61, None), ("Lung 2", 2.2, None), ("Liver 1", 7.12, 6.5)], start=1
    ):
        rows[name] = LesionMeasurementFactory(
            lesion=LesionFactory(patient=patient, label=name), study=study, status="new",
            segmentation=segmentation, component_label=label, volume_ml=volume,
            override_volume_ml=override,
        )  # fmt: skip

    page = page_of(client, patient)

    assert page.count('data-testid="volume-note"') == 1
    assert "(with its ground glass; without it 1.43 ml)" in page
    # A radiologist's volume is the one in force: no note on how the automated one was read.
    assert "without it 2.65 ml" not in page and "(automated 7.12)" in page
