"""A radiologist's corrections survive a new automated run of the study: the lesion
they added and the mask they edited are carried onto a new version on top of the
model's new output, with the same Tracking UID, and the responses do not move; one
that cannot be carried (the grid changed) is listed and flagged, never dropped."""

import dataclasses
import shutil

import numpy as np
import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from analytics.dashboard.flags import worklist_flags_refresh
from analytics.dashboard.series import run_warnings
from analytics.lesions.refresh import patient_update
from analytics.models import ResponseAssessment, WorklistFlags
from imaging.core.geometry.nifti import volume_read_nifti, volume_write_nifti
from imaging.models import (
    LesionLink,
    LesionMeasurement,
    ProcessingRun,
    ReviewEvent,
    Segmentation,
)
from imaging.store import data_dir
from tests.analytics.correction_patient import correction_patient
from tests.patients.factories import UserFactory

pytestmark = pytest.mark.django_db

RESPONSE_FIELDS = ("recist_response", "sum_diameters_mm", "response_note", "pending_new_lesions")


def _responses(patient) -> list[tuple]:
    rows = patient.response_assessments.order_by("study__study_date")
    return [tuple(getattr(r, f) for f in RESPONSE_FIELDS) for r in rows]


def _tracking(patient) -> dict[tuple[str, int], tuple]:
    rows = LesionMeasurement.objects.filter(lesion__patient=patient).select_related("lesion")
    return {
        (m.lesion.tracking_uid, m.study_id): (
            m.origin,
            m.review_state,
            m.status,
            round(m.effective_volume_ml or 0.0, 6),
            round(m.effective_longest_diameter_mm or 0.0, 6),
            m.is_target,
        )
        for m in rows
    }


def _client(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def _reprocess(study, *, shifted: bool = False) -> Segmentation:
    """What ``process --force`` stores for the study: a new run and the model's output
    (here the first automated label map again; ``shifted``: on a grid moved by 3 mm)."""
    series = study.chosen_series
    automated = Segmentation.objects.get(series=series, parent__isnull=True)
    old_run = automated.processing_run
    run = ProcessingRun.objects.create(
        series=series, status=ProcessingRun.Status.SUCCEEDED, volume_path=old_run.volume_path
    )
    mask_path = f"masks/rerun-{run.pk}.nii.gz"
    if shifted:
        label_map = volume_read_nifti(path=data_dir() / automated.mask_path, kind="label")
        volume_write_nifti(
            volume=dataclasses.replace(label_map, origin_mm=np.asarray(label_map.origin_mm) + 3.0),
            path=data_dir() / mask_path,
        )
    else:
        shutil.copy(data_dir() / automated.mask_path, data_dir() / mask_path)
    return Segmentation.objects.create(
        series=series,
        processing_run=run,
        mask_path=mask_path,
        model_name=automated.model_name,
        model_version=automated.model_version,
        lesions=automated.lesions,
    )


def _add_and_edit(case, tmp_path):
    """The missed nodule added at baseline and the liver lesion's mask grown there."""
    baseline = case.studies[0]
    radiologist = UserFactory(groups=["radiologist"], username="dr-keep")
    client = _client(radiologist)
    added = client.post(
        f"/api/v1/studies/{baseline.study_instance_uid}/lesions/",
        {"seed_lps_mm": [float(v) for v in case.centres[0]], "reason": "missed"},
        format="json",
    )
    assert added.status_code == 201, added.json()
    liver = LesionMeasurement.objects.get(study=baseline, lesion__organ="liver")
    label_map = volume_read_nifti(path=data_dir() / liver.segmentation.mask_path, kind="label")
    mask = np.isin(label_map.array, liver.component_labels or [liver.component_label])
    grown = mask | np.roll(mask, 1, axis=2)
    path = tmp_path / "edited.nii.gz"
    volume_write_nifti(volume=label_map.with_array(grown.astype(np.uint8), kind="label"), path=path)
    edited = client.put(
        f"/api/v1/measurements/{liver.pk}/mask",
        path.read_bytes(),
        content_type="application/octet-stream",
    )
    assert edited.status_code == 200, edited.json()
    return added.json()["tracking_uid"], edited.json()["lesion_uid"], grown


def test_reprocessing_carries_an_added_lesion_and_an_edited_mask_forward(tmp_path):
    case = correction_patient(patient_id="CARRY-1", missed_at=(0,))
    added_uid, edited_uid, grown = _add_and_edit(case, tmp_path)
    tracking, responses = _tracking(case.patient), _responses(case.patient)
    links = LesionLink.objects.filter(patient=case.patient).count()
    assert {origin for origin, *_ in tracking.values()} >= {"added", "edited"}

    new_automated = [_reprocess(study) for study in case.studies]
    result = patient_update(patient=case.patient)

    assert result["corrections_carried_forward"] == 2
    assert result["corrections_not_carried"] == [] and result["stale_links"] == []
    baseline = case.studies[0]
    carried = Segmentation.objects.filter(series=baseline.chosen_series).latest("created_at")
    assert carried.parent == new_automated[0] and carried.correction["action"] == "carry_forward"
    assert carried.created_by.username == "dr-keep"
    assert {c["source"]["kind"] for c in carried.lesions if "source" in c} == {"added", "edited"}
    # the follow-up had no correction: its newest is the model's new output
    assert (
        Segmentation.objects.filter(series=case.studies[1].chosen_series).latest("created_at")
        == new_automated[1]
    )
    assert _tracking(case.patient) == tracking
    assert _responses(case.patient) == responses
    assert LesionLink.objects.filter(patient=case.patient).count() == links
    for uid, origin in ((added_uid, "added"), (edited_uid, "edited")):
        row = LesionMeasurement.objects.get(lesion__tracking_uid=uid, study=baseline)
        assert row.segmentation_id == carried.pk and row.origin == origin
    edited = LesionMeasurement.objects.get(lesion__tracking_uid=edited_uid, study=baseline)
    label_map = volume_read_nifti(path=data_dir() / carried.mask_path, kind="label")
    assert (np.isin(label_map.array, edited.component_labels) == grown).all()
    # a second rebuild changes nothing more (nothing to carry: the newest is a correction)
    assert patient_update(patient=case.patient)["corrections_carried_forward"] == 0


def test_a_correction_that_cannot_be_carried_is_listed_and_flagged(tmp_path):
    case = correction_patient(patient_id="CARRY-2", missed_at=(0,))
    _add_and_edit(case, tmp_path)
    new_automated = _reprocess(case.studies[0], shifted=True)

    result = patient_update(patient=case.patient)

    assert result["corrections_carried_forward"] == 0
    assert len(result["corrections_not_carried"]) == 2
    message = result["corrections_not_carried"][0]
    assert "grid origin changed by 3 (at most 0.01)" in message and "needs attention" in message
    assert "dr-keep" in message
    newest = Segmentation.objects.filter(series=case.studies[0].chosen_series).latest("created_at")
    assert newest == new_automated
    warnings = run_warnings({"corrections_not_carried": result["corrections_not_carried"]})
    assert warnings and warnings[0].startswith("needs attention")
    # the links of the added lesion are listed as stale, not silently dropped
    correction = Segmentation.objects.filter(
        series=case.studies[0].chosen_series, parent__isnull=False
    ).latest("created_at")
    assert any(
        f"segmentation {correction.pk} was replaced" in entry["message"]
        for entry in result["stale_links"]
    )


def test_corrections_left_behind_put_the_patient_on_the_worklist_until_someone_corrects(
    tmp_path,
):
    case = correction_patient(patient_id="CARRY-3", missed_at=(0,))
    _add_and_edit(case, tmp_path)
    new_automated = _reprocess(case.studies[0], shifted=True)
    result = patient_update(patient=case.patient)
    # the responses flag the patient too (the nodule now looks new at the follow-up), and
    # so do the review decisions the rebuild could not carry (the "carry_over" event):
    # leave both out to see what the run's flag does alone
    ResponseAssessment.objects.filter(patient=case.patient).update(needs_attention=False)
    left = ReviewEvent.objects.filter(patient=case.patient, action="carry_over")
    assert any(e.after.get("needs_review") for e in left)
    for event in left:
        ReviewEvent.objects.filter(pk=event.pk).update(after={**event.after, "needs_review": False})
    worklist_flags_refresh(patient_pks=[case.patient.pk])
    assert not WorklistFlags.objects.get(patient=case.patient).needs_attention

    run = new_automated.processing_run
    run.flags = {"corrections_not_carried": result["corrections_not_carried"]}
    run.finished_at = timezone.now()
    run.save(update_fields=["flags", "finished_at"])
    worklist_flags_refresh(patient_pks=[case.patient.pk])
    assert WorklistFlags.objects.get(patient=case.patient).needs_attention

    # a new run queued (or failed) on the series shows nothing new: the flag stays
    queued = ProcessingRun.objects.create(series=run.series)
    worklist_flags_refresh(patient_pks=[case.patient.pk])
    assert WorklistFlags.objects.get(patient=case.patient).needs_attention
    queued.delete()

    # the radiologist adds the nodule again on the new segmentation: a person has looked
    radiologist = UserFactory(groups=["radiologist"])
    again = _client(radiologist).post(
        f"/api/v1/studies/{case.studies[0].study_instance_uid}/lesions/",
        {"seed_lps_mm": [float(v) for v in case.centres[0]], "reason": "added again"},
        format="json",
    )
    assert again.status_code == 201, again.json()
    assert not ResponseAssessment.objects.filter(patient=case.patient, needs_attention=True)
    assert not WorklistFlags.objects.get(patient=case.patient).needs_attention
