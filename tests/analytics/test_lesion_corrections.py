"""A radiologist's corrections end to end: a lesion the segmenter missed added with one
API call and followed to the other study, and a mask edited; each moves the responses,
is recorded with the user, and survives re-tracking."""

import numpy as np
import pytest
from rest_framework.test import APIClient

from analytics.lesions.review.common import ReviewError
from analytics.lesions.review.masks import MaskInput, measurement_mask_replace
from analytics.lesions.tracking.track import patient_track
from analytics.models import ResponseAssessment
from imaging.core.geometry.nifti import volume_read_nifti, volume_write_nifti
from imaging.models import Lesion, LesionLink, LesionMeasurement, ReviewEvent, Segmentation
from imaging.store import data_dir
from patients.models import AuditEvent
from tests.analytics.correction_patient import correction_patient
from tests.patients.factories import UserFactory

pytestmark = pytest.mark.django_db


def _responses(patient):
    return list(ResponseAssessment.objects.filter(patient=patient).order_by("study__study_date"))


def _uids(patient) -> set[str]:
    return set(Lesion.objects.filter(patient=patient).values_list("tracking_uid", flat=True))


def _client(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def _add(client, study, seed, **extra):
    return client.post(
        f"/api/v1/studies/{study.study_instance_uid}/lesions/",
        {"seed_lps_mm": [float(v) for v in seed], **extra},
        format="json",
    )


def test_one_call_adds_the_missed_nodule_links_it_at_follow_up_and_moves_the_response():
    case = correction_patient(missed_at=(0,))
    baseline, follow_up = case.studies
    before = _responses(case.patient)
    found_late = LesionMeasurement.objects.get(study=follow_up, status="new")
    # the nodule looks new at the follow-up: progression pending its confirmation
    assert found_late.finding_state == "equivocal" and before[1].pending_new_lesions == 1
    assert "PD pending confirmation" in before[1].response_note
    radiologist = UserFactory(groups=["radiologist"], username="dr-house")
    uids_before, late_uid = _uids(case.patient), found_late.lesion.tracking_uid

    answer = _add(_client(radiologist), baseline, case.centres[0], reason="missed nodule")

    assert answer.status_code == 201, answer.json()
    body = answer.json()
    by_study = {row["study_instance_uid"]: row for row in body["measurements"]}
    at_baseline, at_follow_up = (
        by_study[baseline.study_instance_uid],
        by_study[follow_up.study_instance_uid],
    )
    assert at_baseline["status"] == "added" and at_baseline["status_text"] == "added by dr-house"
    assert at_baseline["volume_ml"] == pytest.approx(case.volumes_ml[0], rel=0.25)
    assert at_baseline["longest_diameter_mm"] > 10.0 and at_baseline["short_axis_mm"] > 5.0
    assert np.linalg.norm(np.array(at_baseline["centroid_lps_mm"]) - case.centres[0]) < 3.0
    # found by the segmenter at the follow-up: linked to the added lesion's identity
    assert at_follow_up["status"] == "linked"
    rows = LesionMeasurement.objects.filter(lesion__tracking_uid=body["tracking_uid"])
    assert {m.study_id for m in rows} == {baseline.pk, follow_up.pk}
    # every other lesion keeps its identity; the one seen late joins the added one
    assert _uids(case.patient) == (uids_before - {late_uid}) | {body["tracking_uid"]}
    linked = rows.get(study=follow_up)
    assert linked.status == "tracked" and linked.segmentation_id == found_late.segmentation_id
    assert rows.get(study=baseline).origin == "added" and rows.get(study=baseline).is_target
    after = _responses(case.patient)
    assert after[1].pending_new_lesions == 0 and not after[1].new_lesions
    assert "new lesion" not in after[1].response_note
    # the nodule is a target from the baseline on: both sums hold it now
    assert after[0].sum_diameters_mm == pytest.approx(
        before[0].sum_diameters_mm + rows.get(study=baseline).longest_diameter_mm
    )
    assert after[1].sum_diameters_mm > before[1].sum_diameters_mm + 10.0
    event = ReviewEvent.objects.get(action="lesion_add_click")
    assert event.user == radiologist and event.reason == "missed nodule"
    assert "PD pending" in event.before["responses"][1]["response_note"]
    assert event.after["responses"][1]["response_note"] == after[1].response_note
    assert event.after["method"]["parameters"]["seed_lps_mm"] == pytest.approx(
        list(case.centres[0])
    )
    audit = AuditEvent.objects.get(action="api.lesion.add")
    assert audit.username == "dr-house" and audit.patient_id == case.patient.pk
    # the automated segmentation stays; the correction is a new version naming the user
    version = Segmentation.objects.get(series=baseline.chosen_series, parent__isnull=False)
    assert version.created_by == radiologist and version.correction["action"] == "add"
    assert (data_dir() / version.parent.mask_path).is_file()
    patient_track(patient=case.patient)  # a rebuild keeps the lesion, its links and values
    again = LesionMeasurement.objects.filter(lesion__tracking_uid=body["tracking_uid"])
    assert (
        again.count() == 2
        and _responses(case.patient)[1].recist_response == after[1].recist_response
    )


def test_a_nodule_missed_at_both_studies_is_propagated_and_awaits_review():
    case = correction_patient(patient_id="CORR-2", missed_at=(0, 1))
    baseline, follow_up = case.studies
    radiologist = UserFactory(groups=["radiologist"])

    body = _add(_client(radiologist), baseline, case.centres[0]).json()

    at_follow_up = {r["study_instance_uid"]: r for r in body["measurements"]}[
        follow_up.study_instance_uid
    ]
    assert at_follow_up["status"] == "propagated"
    assert at_follow_up["status_text"] == "propagated, awaiting review"
    assert at_follow_up["volume_ml"] == pytest.approx(case.volumes_ml[1], rel=0.3)
    assert np.linalg.norm(np.array(at_follow_up["centroid_lps_mm"]) - case.centres[1]) < 4.0
    row = LesionMeasurement.objects.get(pk=at_follow_up["measurement_id"])
    assert row.origin == "propagated" and row.review_state == "pending" and row.status == "tracked"
    assert (
        LesionLink.objects.filter(patient=case.patient, anchor_segmentation__isnull=False).count()
        == 1
    )
    version = Segmentation.objects.get(series=follow_up.chosen_series, parent__isnull=False)
    entry = [c for c in version.lesions if c.get("source")][0]
    assert (
        entry["source"]["kind"] == "propagated" and entry["source"]["user"] == radiologist.username
    )


def test_where_propagation_finds_nothing_the_study_says_not_found_never_0_mm():
    case = correction_patient(patient_id="CORR-3", missed_at=(0,), gone_at=(1,))
    baseline, follow_up = case.studies

    body = _add(_client(UserFactory(groups=["radiologist"])), baseline, case.centres[0]).json()

    at_follow_up = {r["study_instance_uid"]: r for r in body["measurements"]}[
        follow_up.study_instance_uid
    ]
    assert at_follow_up["status"] == "not_found" and at_follow_up["status_text"] == "not found"
    assert at_follow_up["volume_ml"] is None and at_follow_up["longest_diameter_mm"] is None
    assert at_follow_up["reason"]
    row = LesionMeasurement.objects.get(pk=at_follow_up["measurement_id"])
    assert row.status == "not_found"


def test_refusals_name_the_field_and_store_nothing():
    case = correction_patient(patient_id="CORR-4", missed_at=(0,))
    baseline = case.studies[0]
    client = _client(UserFactory(groups=["radiologist"]))
    versions = Segmentation.objects.count()
    liver = LesionMeasurement.objects.filter(study=baseline, lesion__organ="liver").first()

    on_a_lesion = _add(
        client, baseline, [liver.centroid_x_mm, liver.centroid_y_mm, liver.centroid_z_mm]
    )
    outside = _add(client, baseline, [5000.0, 0.0, 0.0])
    bad = _add(client, baseline, [1.0, 2.0])
    clinician = _add(_client(UserFactory(groups=["clinician"])), baseline, case.centres[0])
    missing = _add(client, type(baseline)(study_instance_uid="1.2.3.4"), case.centres[0])

    assert on_a_lesion.status_code == 400 and "already a lesion" in on_a_lesion.json()["detail"]
    assert outside.status_code == 400 and "seed_lps_mm" in outside.json()["detail"]
    assert bad.status_code == 400 and "seed_lps_mm" in bad.json()
    assert clinician.status_code == 403
    assert missing.status_code == 404
    assert Segmentation.objects.count() == versions and not ReviewEvent.objects.exists()


def _mask_of(m: LesionMeasurement) -> tuple[np.ndarray, object]:
    label_map = volume_read_nifti(path=data_dir() / m.segmentation.mask_path, kind="label")
    return np.isin(label_map.array, m.component_labels or [m.component_label]), label_map


def test_a_mask_edit_remeasures_keeps_every_version_and_moves_the_sum(tmp_path):
    case = correction_patient(patient_id="CORR-5", missed_at=())
    baseline = case.studies[0]
    nodule = LesionMeasurement.objects.get(
        study=baseline, lesion__organ="lung", longest_diameter_mm__gt=10.0
    )
    before_sum = _responses(case.patient)[0].sum_diameters_mm
    mask, label_map = _mask_of(nodule)
    grown = mask | np.roll(mask, 2, axis=2)  # the brush adds two columns of voxels
    path = tmp_path / "edited.nii.gz"
    volume_write_nifti(volume=label_map.with_array(grown.astype(np.uint8), kind="label"), path=path)
    radiologist = UserFactory(groups=["radiologist"], username="dr-brush")
    uids_before = _uids(case.patient)

    answer = _client(radiologist).put(
        f"/api/v1/measurements/{nodule.pk}/mask",
        path.read_bytes(),
        content_type="application/octet-stream",
    )

    assert answer.status_code == 200, answer.json()
    body = answer.json()
    assert body["origin"] == "edited" and body["review_state"] == "edited"
    assert body["lesion_uid"] == nodule.lesion.tracking_uid
    assert body["automated_longest_diameter_mm"] > nodule.longest_diameter_mm
    assert body["volume_ml"] > nodule.volume_ml
    assert [v["action"] for v in body["mask_versions"]] == ["mask_edit", "automated"]
    assert body["mask_versions"][0]["made_by"] == "dr-brush"
    edited = LesionMeasurement.objects.get(pk=body["id"])
    assert (_mask_of(edited)[0] == grown).all()
    assert _responses(case.patient)[0].sum_diameters_mm > before_sum
    assert _uids(case.patient) == uids_before
    event = ReviewEvent.objects.get(action="mask_edit")
    assert event.user == radiologist and event.after["mask"]["voxels_added"] > 0
    patient_track(patient=case.patient)
    kept = LesionMeasurement.objects.get(study=baseline, lesion=nodule.lesion)
    assert kept.review_state == "edited" and kept.origin == "edited"


def test_a_mask_of_the_wrong_shape_or_geometry_is_refused_with_the_reason():
    case = correction_patient(patient_id="CORR-6", missed_at=())
    nodule = LesionMeasurement.objects.filter(study=case.studies[0], lesion__organ="lung").first()
    mask, label_map = _mask_of(nodule)
    radiologist = UserFactory(groups=["radiologist"])
    client = _client(radiologist)
    ni, nj, nk = label_map.shape_ijk

    wrong_shape = client.put(
        f"/api/v1/measurements/{nodule.pk}/mask",
        {"shape_ijk": [ni, nj, nk - 1], "runs": [[0, 5]]},
        format="json",
    )
    moved = label_map.with_array(mask.astype(np.uint8), kind="label")
    moved = type(moved)(array=moved.array, spacing_mm=moved.spacing_mm,
                        origin_mm=tuple(np.add(moved.origin_mm, (0.0, 0.0, 7.5))),
                        direction=moved.direction, kind="label")  # fmt: skip
    with pytest.raises(ReviewError, match="origin differs"):
        measurement_mask_replace(user=radiologist, measurement=nodule, mask=MaskInput(mask, moved))
    empty = client.put(
        f"/api/v1/measurements/{nodule.pk}/mask",
        {"shape_ijk": [ni, nj, nk], "runs": []},
        format="json",
    )
    runs = np.flatnonzero(mask.ravel())
    by_runs = client.put(
        f"/api/v1/measurements/{nodule.pk}/mask",
        {"shape_ijk": [ni, nj, nk], "runs": [[int(i), 1] for i in runs]},
        format="json",
    )

    assert wrong_shape.status_code == 400 and "shape" in wrong_shape.json()["detail"]
    assert empty.status_code == 400 and "no voxel" in empty.json()["detail"]
    assert by_runs.status_code == 200  # the same mask, run-length encoded: accepted
    assert ReviewEvent.objects.filter(action="mask_edit").count() == 1
