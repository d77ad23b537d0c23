"""A follow-up that cannot be registered loses nothing: end to end through ``process``.

One generated patient (seed 33, small size; never used for training): the baseline is
a chest CT (with the lung nodule), the follow-up an abdominal CT (with the liver
lesions), and the two share no anatomy: a different body region. No registration can
succeed, and the pipeline must still segment and measure the follow-up, propose its
lesions' identities provisionally, call its response NE with the reason, and raise the
flag on the worklist, the patient page, the pipeline page and in export_responses.
"""

from __future__ import annotations

import csv
import io
from dataclasses import replace

import numpy as np
import pytest
from django.core.management import call_command
from django.urls import reverse

from analytics.dashboard.pipeline import pipeline_overview
from analytics.dashboard.worklist import worklist
from analytics.lesions.review.findings import study_links_confirm
from analytics.models import ResponseAssessment
from imaging.core.synthetic import cohort
from imaging.ingest.service import ingest_paths
from imaging.models import LesionMeasurement, ProcessingRun, Registration, Study
from tests.patients.factories import UserFactory

pytestmark = pytest.mark.django_db

SEED = 33
#: Scanned ranges in the body's own head-foot coordinate (mm; the trunk is -170..155):
#: the chest with the lung nodule (at -18), and the abdomen with the liver lesions (at
#: -87 to -114), 15 mm apart.
CHEST_Z_MM = (-30.0, 155.0)
ABDOMEN_Z_MM = (-175.0, -45.0)


def _covering(study, z_mm):
    """``study`` with its scanner moved to cover ``z_mm`` (body coordinates)."""
    scanner = study.scanner
    low, high = z_mm
    pose = study.pose_body_to_lps
    centre = pose[:3, :3] @ np.array([0.0, 0.0, 0.5 * (low + high)]) + pose[:3, 3]
    centre[:2] = scanner.fov_centre_lps_mm[:2]
    return replace(
        study,
        scanner=replace(
            scanner,
            n_slices=int(round((high - low) / scanner.slice_thickness_mm)),
            slice_spacing_mm=scanner.slice_thickness_mm,
            fov_centre_lps_mm=tuple(float(v) for v in centre),
        ),
    )


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """DICOM of a chest baseline and an abdominal follow-up of one generated patient."""
    out = tmp_path_factory.mktemp("unregistrable")
    patient = cohort.patient_simulate(seed=SEED, index=0, n_timepoints=2, size="small")
    made = cohort.Cohort(seed=SEED, size="small", n_timepoints=2, patients=(patient,))
    baseline, follow_up = patient.studies
    for study in (_covering(baseline, CHEST_Z_MM), _covering(follow_up, ABDOMEN_Z_MM)):
        cohort.study_dicom_write(patient, study, cohort.study_render(made, patient, study), out)
    return out, patient


@pytest.mark.slow
def test_a_follow_up_that_cannot_be_registered_is_measured_linked_provisionally_and_flagged(
    generated, client
):
    out, simulated = generated
    ingest_paths(paths=[out], process=False)
    call_command("process", "--all", stdout=io.StringIO(), stderr=io.StringIO())

    baseline, follow_up = Study.objects.order_by("study_date")
    registration = Registration.objects.get(moving_series=follow_up.chosen_series)
    assert registration.failed, "the scenario must be a follow-up that cannot be registered"

    # Segmentation and measurement never waited for the registration.
    run = ProcessingRun.objects.filter(series=follow_up.chosen_series).latest()
    assert run.status == ProcessingRun.Status.SUCCEEDED, run.error
    assert run.flags["registration_failed"] and run.flags["lesion_links_provisional"]
    rows = list(LesionMeasurement.objects.filter(study=follow_up).select_related("lesion"))
    found = [m for m in rows if m.is_found]
    assert found and all(m.volume_ml > 0 and m.longest_diameter_mm > 0 for m in found)
    assert {m.lesion.organ for m in found} == {"liver"}
    # Identities proposed without registration (lesions not imaged at baseline: new):
    # provisional, never silently final, and equivocal until confirmed.
    assert all(m.link_provisional for m in rows)
    assert all(m.status == "new" and m.finding_state == "equivocal" for m in found)
    # The lung lesion is outside the follow-up's field of view: not found, never gone.
    lung = [m for m in rows if m.lesion.organ == "lung"]
    assert lung and all(m.status == "not_found" for m in lung)
    assert all("outside the scanned range" in m.state_reason for m in lung)
    assert not LesionMeasurement.objects.filter(status="resolved").exists()

    # NE with its reason, wherever the response is read.
    response = ResponseAssessment.objects.get(study=follow_up)
    assert response.recist_response == "NE" and response.needs_attention
    assert "registration to the baseline failed" in response.response_note
    assert "provisional until a radiologist confirms them" in response.response_note
    assert response.pending_new_lesions == len(found) and not response.new_lesions
    assert [r.patient_id for r in worklist(flags=["needs_attention"])] == [simulated.patient_id]
    export = io.StringIO()
    call_command(
        "export_responses", "--patient", simulated.patient_id, stdout=export, stderr=io.StringIO()
    )
    exported = {r["study_instance_uid"]: r for r in csv.DictReader(io.StringIO(export.getvalue()))}
    row = exported[follow_up.study_instance_uid]
    assert row["recist_response"] == "NE" and "registration" in row["response_note"]
    labels = {
        s.run_status_label
        for study in pipeline_overview().studies
        for s in study.series
        if study.pk == follow_up.pk
    }
    assert labels == {"Succeeded with warnings"}

    radiologist = UserFactory(groups=["radiologist"])
    client.force_login(radiologist)
    page = client.get(reverse("patients:detail", args=[follow_up.patient_id])).content.decode()
    assert f'data-testid="study-banner-{follow_up.pk}"' in page
    assert "Response not evaluable (NE)" in page and "Confirm the proposed links" in page
    assert "Needs attention" in client.get(reverse("analytics:worklist")).content.decode()

    # A radiologist confirms the proposed links: no longer provisional; the lung target
    # outside the scanned range still leaves the study NE, with that reason only.
    study_links_confirm(user=radiologist, study=follow_up, reason="checked side by side")
    assert not LesionMeasurement.objects.filter(study=follow_up, link_provisional=True).exists()
    response.refresh_from_db()
    assert "provisional" not in response.response_note
    assert (
        response.recist_response == "NE" and "outside the scanned range" in response.response_note
    )
