"""A lesion measured with its outer layer at one study and without it at another (the
layer's gate passed at one only) is compared like with like: its volumetric response
reads the volumes without the layer, while each study still shows what it measured."""

import math

import pytest
from rest_framework.test import APIClient

from analytics.lesions.refresh import patient_update
from analytics.lesions.selectors import measurements_table
from analytics.models import ResponseAssessment
from imaging.models import LesionMeasurement, Segmentation
from tests.analytics.correction_patient import correction_patient
from tests.analytics.test_lesion_organ import _nodule
from tests.patients.factories import UserFactory

pytestmark = pytest.mark.django_db


def _volumes(patient) -> list[float | None]:
    return list(
        ResponseAssessment.objects.filter(patient=patient)
        .order_by("study__study_date")
        .values_list("total_volume_ml", flat=True)
    )


def test_a_layer_seen_at_one_study_only_is_not_read_as_a_change():
    case = correction_patient(patient_id="LAYER-1", missed_at=())
    nodule = _nodule(case)
    baseline_row = (
        LesionMeasurement.objects.filter(lesion=nodule).order_by("study__study_date").first()
    )
    before = _volumes(case.patient)
    plain_ml = baseline_row.volume_ml
    # The baseline's segmentation measured the nodule with its ground glass: 3 times as much.
    segmentation = Segmentation.objects.get(pk=baseline_row.segmentation_id)
    entries = []
    for entry in segmentation.lesions:
        if entry["component_label"] == baseline_row.component_label:
            entry = entry | {"volume_ml": 3 * plain_ml, "volume_method": "two_level",
                             "volume_layer": "ground_glass", "volume_core_ml": plain_ml}  # fmt: skip
        entries.append(entry)
    segmentation.lesions = entries
    segmentation.save()

    patient_update(patient=case.patient)

    row = LesionMeasurement.objects.get(lesion__tracking_uid=nodule.tracking_uid,
                                        study=baseline_row.study)  # fmt: skip
    assert row.volume_ml == pytest.approx(3 * plain_ml)  # what the study measured, shown
    assert row.volume_core_ml == pytest.approx(plain_ml)
    table = measurements_table(patient_ids=["LAYER-1"])
    at_baseline = table[(table.lesion_uid == nodule.tracking_uid)
                        & (table.study_instance_uid == row.study.study_instance_uid)]  # fmt: skip
    assert at_baseline.volume_core_ml.iloc[0] == pytest.approx(plain_ml)
    others = table[table.lesion_uid != nodule.tracking_uid]
    assert others.volume_core_ml.map(math.isnan).all()
    api = APIClient()
    api.force_authenticate(UserFactory(groups=["clinician"]))
    body = api.get("/api/v1/measurements/", {"study": row.study.pk}).json()
    served = {m["lesion_uid"]: m for m in body["results"]}
    assert served[nodule.tracking_uid]["automated_volume_core_ml"] == pytest.approx(plain_ml)
    assert served[nodule.tracking_uid]["volume_ml"] == pytest.approx(3 * plain_ml)
    # The follow-up measured it without the layer: the burden is read without it throughout.
    assert _volumes(case.patient) == pytest.approx(before)
