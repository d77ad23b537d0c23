"""A radiologist files a lesion under another organ: the same identity at every study in
its new organ and label, each segmentation versioned with who changed it, responses and
the review record updated, and the choice kept through a rebuild and a new model run."""

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from analytics.lesions.refresh import patient_update
from analytics.lesions.tracking.track import patient_track
from imaging.models import Lesion, LesionMeasurement, ReviewEvent, Segmentation
from patients.models import AuditEvent
from tests.analytics.correction_patient import correction_patient
from tests.analytics.test_correction_carry_forward import _reprocess
from tests.patients.factories import UserFactory

pytestmark = pytest.mark.django_db


def _client(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def _put(client, lesion, **body):
    return client.put(f"/api/v1/lesions/{lesion.pk}/organ", body, format="json")


def _values(lesion_uid: str) -> dict[int, tuple]:
    rows = LesionMeasurement.objects.filter(lesion__tracking_uid=lesion_uid)
    return {m.study_id: (round(m.volume_ml, 6), round(m.longest_diameter_mm, 6)) for m in rows}


def _nodule(case) -> Lesion:
    """A lung nodule found at both studies."""
    for lesion in Lesion.objects.filter(patient=case.patient, organ="lung"):
        if LesionMeasurement.objects.filter(lesion=lesion, segmentation__isnull=False).count() == 2:
            return lesion
    raise AssertionError("no lung nodule found at both studies")


def test_a_lesion_filed_under_another_organ_keeps_its_identity_at_every_study():
    case = correction_patient(patient_id="ORGAN-1", missed_at=())
    nodule = _nodule(case)
    uid, values = nodule.tracking_uid, _values(nodule.tracking_uid)
    others = {
        lesion.tracking_uid: lesion.label
        for lesion in Lesion.objects.filter(patient=case.patient).exclude(pk=nodule.pk)
    }
    radiologist = UserFactory(groups=["radiologist"], username="dr-organ")

    answer = _put(_client(radiologist), nodule, organ="lymph_node", reason="hilar node")

    assert answer.status_code == 200, answer.json()
    body = answer.json()
    assert body["tracking_uid"] == uid and body["organ"] == "lymph_node"
    assert body["label"].startswith("Lymph node ") and len(body["segmentation_versions"]) == 2
    moved = Lesion.objects.get(tracking_uid=uid)
    assert (moved.organ, moved.label) == ("lymph_node", body["label"])
    # the same sightings with the same numbers; every other lesion as it was
    assert _values(uid) == values
    assert {
        lesion.tracking_uid: lesion.label
        for lesion in Lesion.objects.filter(patient=case.patient).exclude(pk=moved.pk)
    } == others
    # each study's segmentation is a new version saying who refiled which candidates
    for pk in body["segmentation_versions"]:
        version = Segmentation.objects.get(pk=pk)
        assert version.created_by == radiologist and version.parent_id is not None
        assert version.correction["action"] == "organ" and version.correction["from"] == "lung"
        refiled = [c for c in version.lesions if c.get("organ_set")]
        assert refiled and all(c["organ"] == "lymph_node" for c in refiled)
        assert refiled[0]["organ_set"]["user"] == "dr-organ"
    event = ReviewEvent.objects.get(action="organ")
    assert event.user == radiologist and event.reason == "hilar node"
    assert event.before["lesion"] == {"label": nodule.label, "organ": "lung"}
    assert event.after["lesion"] == {"label": body["label"], "organ": "lymph_node"}
    assert "responses" in event.after
    assert AuditEvent.objects.get(action="api.lesion.organ").username == "dr-organ"
    # a rebuild keeps the choice
    patient_track(patient=case.patient)
    again = Lesion.objects.get(tracking_uid=uid)
    assert (again.organ, again.label) == ("lymph_node", body["label"]) and _values(uid) == values


def test_a_new_run_of_the_model_keeps_the_organ_a_radiologist_chose():
    case = correction_patient(patient_id="ORGAN-2", missed_at=())
    nodule = _nodule(case)
    radiologist = UserFactory(groups=["radiologist"])
    label = _put(_client(radiologist), nodule, organ="other").json()["label"]

    rerun = _reprocess(case.studies[0])  # the model's output again, in lung
    result = patient_update(patient=case.patient)

    assert result["corrections_not_carried"] == []
    kept = Lesion.objects.get(tracking_uid=nodule.tracking_uid)
    assert (kept.organ, kept.label) == ("other", label)
    carried = Segmentation.objects.get(parent=rerun)
    assert carried.correction["action"] == "carry_forward" and carried.correction["refiled"]
    assert LesionMeasurement.objects.filter(lesion=kept).count() == 2


def test_refusals_name_the_field_and_change_nothing():
    case = correction_patient(patient_id="ORGAN-3", missed_at=())
    nodule = _nodule(case)
    versions = Segmentation.objects.count()
    radiologist = UserFactory(groups=["radiologist"])

    same = _put(_client(radiologist), nodule, organ="lung")
    unknown = _put(_client(radiologist), nodule, organ="brain")
    clinician = _put(_client(UserFactory(groups=["clinician"])), nodule, organ="liver")

    assert same.status_code == 400 and "organ:" in same.json()["detail"]
    assert "lung already" in same.json()["detail"]
    assert unknown.status_code == 400 and "organ" in unknown.json()
    assert clinician.status_code == 403
    assert Segmentation.objects.count() == versions
    assert Lesion.objects.get(pk=nodule.pk).organ == "lung"
    assert not ReviewEvent.objects.filter(action="organ").exists()


def test_the_viewer_offers_the_change_and_its_form_refiles_the_lesion(client):
    case = correction_patient(patient_id="ORGAN-4", missed_at=())
    nodule = _nodule(case)
    client.force_login(UserFactory(groups=["radiologist"]))
    viewer = reverse("lesions:viewer", args=[case.patient.pk])

    page = client.get(viewer)
    answer = client.post(
        reverse("lesions:lesion-organ", args=[nodule.pk]),
        {"organ": "liver", "reason": "a dome lesion, not lung", "next": viewer},
        follow=True,
    )

    form = reverse("lesions:lesion-organ", args=[nodule.pk])
    assert page.status_code == 200 and f'action="{form}"' in page.content.decode()
    assert "Filed under the new organ at every study" in answer.content.decode()
    assert Lesion.objects.get(pk=nodule.pk).organ == "liver"
