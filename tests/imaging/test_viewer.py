"""The viewer page, the image files it streams, and review through the browser's forms."""

import re
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings
from django.template.loader import render_to_string
from django.test import RequestFactory
from django.urls import reverse

from analytics.models import ResponseAssessment
from imaging.core.geometry.nifti import volume_read_nifti, volume_write_nifti
from imaging.core.geometry.volume import Volume
from imaging.models import LesionMeasurement, ProcessingRun, ReviewEvent, Segmentation, Study
from patients.models import AuditEvent
from tests.imaging.test_review import SHIFT, patient_with_studies
from tests.patients.factories import UserFactory

pytestmark = pytest.mark.django_db

SPACING = (4.0, 4.0, 4.0)
SHAPE = (40, 40, 60)  # z, y, x: small, and wide enough to hold every lesion centre


def _grid_origin(index: int) -> tuple[float, float, float]:
    # Baseline grid covers x -150..86, y -60..96, z -240..-84 mm; follow-ups are shifted.
    origin = np.array([-150.0, -60.0, -240.0])
    return tuple(origin + (SHIFT if index else 0.0))


def _images_write(patient) -> None:
    """Give every study a stored volume, a lesion label map and a probability map, each
    with a 3-voxel cube at every lesion candidate (in that study's own coordinates)."""
    studies = Study.objects.filter(patient=patient).order_by("study_date")
    for index, study in enumerate(studies):
        segmentation = Segmentation.objects.get(series=study.chosen_series)
        volume = Volume(
            array=np.full(SHAPE, -50.0, dtype=np.float32),
            spacing_mm=SPACING,
            origin_mm=_grid_origin(index),
        )
        mask = np.zeros(SHAPE, dtype=np.uint8)
        for c in segmentation.lesions:
            i, j, k = np.round(volume.lps_to_index(np.array([c["centroid_lps_mm"]]))[0]).astype(int)
            mask[k - 1 : k + 2, j - 1 : j + 2, i - 1 : i + 2] = c["component_label"]
        volume.array[mask > 0] = 60.0
        root = Path(settings.DATA_DIR)
        volume_write_nifti(volume=volume, path=root / f"volumes/{study.pk}.nii.gz")
        volume_write_nifti(
            volume=volume.with_array(mask, kind="label"), path=root / f"masks/{study.pk}.nii.gz"
        )
        volume_write_nifti(
            volume=volume.with_array((mask > 0).astype(np.float32) * 0.9),
            path=root / f"probability/{study.pk}.nii.gz",
        )
        ProcessingRun.objects.create(
            series=study.chosen_series,
            status=ProcessingRun.Status.SUCCEEDED,
            volume_path=f"volumes/{study.pk}.nii.gz",
        )
        segmentation.mask_path = f"masks/{study.pk}.nii.gz"
        segmentation.probability_path = f"probability/{study.pk}.nii.gz"
        segmentation.save()


@pytest.fixture
def patient():
    patient = patient_with_studies("VIEW-1")
    _images_write(patient)
    return patient


@pytest.fixture
def radiologist_client(client):
    client.force_login(UserFactory(groups=["radiologist"]))
    return client


def _studies(patient):
    return list(Study.objects.filter(patient=patient).order_by("study_date"))


def test_viewer_shows_both_studies_lesions_jumps_and_responses(patient, radiologist_client):
    baseline, _, last = _studies(patient)

    response = radiologist_client.get(reverse("lesions:viewer", args=[patient.pk]))

    assert response.status_code == 200
    page = response.content.decode()
    assert 'id="viewer-baseline"' in page and 'id="viewer-follow-up"' in page
    assert "vendor/niivue/niivue.umd.js" in page and "radtrack/viewer.js" in page
    viewer = response.context["viewer"]
    assert viewer.baseline.study == baseline and viewer.follow_up.study == last
    assert viewer.registered
    files = response.context["files"]
    assert files["follow_up"]["volume"].endswith(f"/studies/{last.pk}/files/volume/?grid=baseline")
    assert "probability" in files["follow_up"] and "mask" in files["baseline"]
    # Jumps are in NiiVue's RAS frame of the baseline: a follow-up centroid comes back
    # through the registration (minus SHIFT), then x and y change sign.
    m = LesionMeasurement.objects.get(study=last, component_label=1)
    expected = np.array([m.centroid_x_mm, m.centroid_y_mm, m.centroid_z_mm]) - SHIFT
    jump = response.context["jumps"][f"follow_up-{m.pk}"]
    assert jump == pytest.approx([-expected[0], -expected[1], expected[2]])
    assert "Liver 1" in page and "RECIST 1.1" in page
    assert f'action="{reverse("lesions:measurement-review", args=[m.pk])}"' in page
    assert AuditEvent.objects.filter(action="viewer.view", patient=patient).count() == 1


def test_viewer_other_follow_up_and_bad_study(patient, radiologist_client):
    _, middle, _ = _studies(patient)
    url = reverse("lesions:viewer", args=[patient.pk])
    assert (
        radiologist_client.get(url, {"study": middle.pk}).context["viewer"].follow_up.study
        == middle
    )
    other = patient_with_studies("VIEW-OTHER")
    assert radiologist_client.get(url, {"study": _studies(other)[0].pk}).status_code == 404
    assert radiologist_client.get(url, {"study": "x"}).status_code == 404


def test_clinicians_see_no_review_forms_and_strangers_nothing(patient, client):
    url = reverse("lesions:viewer", args=[patient.pk])
    assert client.get(url).status_code == 302  # to the login page
    client.force_login(UserFactory(groups=["clinician"]))
    page = client.get(url).content.decode()
    assert "Liver 1" in page and "Reject (false positive)" not in page
    client.force_login(UserFactory())
    assert client.get(url).status_code == 403


def test_the_follow_up_file_on_the_baseline_grid_has_the_baseline_geometry(
    patient, radiologist_client
):
    baseline, _, last = _studies(patient)
    url = reverse("lesions:viewer-file", args=[last.pk, "mask"])

    response = radiologist_client.get(url, {"grid": "baseline"})

    assert response.status_code == 200
    out = Path(settings.DATA_DIR) / "fetched.nii.gz"
    out.write_bytes(b"".join(response.streaming_content))
    mask = volume_read_nifti(path=out)
    reference = volume_read_nifti(path=Path(settings.DATA_DIR) / f"volumes/{baseline.pk}.nii.gz")
    assert mask.array.shape == reference.array.shape
    assert mask.origin_mm == pytest.approx(reference.origin_mm, abs=1e-3)
    # The follow-up's liver lesion lands where the baseline's is (the registration undone).
    own = volume_read_nifti(path=Path(settings.DATA_DIR) / f"masks/{baseline.pk}.nii.gz")
    assert np.array_equal(np.argwhere(mask.array == 1), np.argwhere(own.array == 1))
    assert AuditEvent.objects.filter(action="images.view", patient=patient).exists()
    assert response["Content-Disposition"] == f'inline; filename="study{last.pk}-mask.nii.gz"'

    own_grid = radiologist_client.get(url)
    raw = (Path(settings.DATA_DIR) / f"masks/{last.pk}.nii.gz").read_bytes()
    assert b"".join(own_grid.streaming_content) == raw


def test_file_endpoint_refuses_unknown_kinds_missing_files_and_escapes(patient, radiologist_client):
    study = _studies(patient)[0]
    assert (
        radiologist_client.get(reverse("lesions:viewer-file", args=[study.pk, "dicom"])).status_code
        == 404
    )
    segmentation = Segmentation.objects.get(series=study.chosen_series)
    segmentation.mask_path = "../../etc/passwd"
    segmentation.save()
    response = radiologist_client.get(reverse("lesions:viewer-file", args=[study.pk, "mask"]))
    assert response.status_code == 404
    segmentation.probability_path = ""
    segmentation.save()
    assert (
        radiologist_client.get(
            reverse("lesions:viewer-file", args=[study.pk, "probability"])
        ).status_code
        == 404
    )


def test_reject_in_the_browser_updates_the_categories(patient, radiologist_client):
    last = _studies(patient)[2]
    far = LesionMeasurement.objects.get(study=last, component_label=6)
    here = reverse("lesions:viewer", args=[patient.pk]) + f"?study={last.pk}"
    assert ResponseAssessment.objects.get(study=last).recist_response == "PD"

    response = radiologist_client.post(
        reverse("lesions:measurement-review", args=[far.pk]),
        {"action": "reject", "reason": "vessel", "next": here},
        follow=True,
    )

    assert response.redirect_chain[-1][0] == here
    page = response.content.decode()
    assert "Rejected as a false positive; responses and risk recomputed." in page
    assert LesionMeasurement.objects.get(study=last, component_label=6).review_state == "rejected"
    event = ReviewEvent.objects.get()
    assert event.reason == "vessel" and event.user.groups.filter(name="radiologist").exists()
    assert event.before["responses"] != event.after["responses"]
    assert "Rejected (false positive)" in page  # the new state shows on the reloaded page


def test_review_errors_come_back_as_messages_naming_the_field(patient, radiologist_client):
    m = LesionMeasurement.objects.filter(study=_studies(patient)[0]).first()
    url = reverse("lesions:measurement-review", args=[m.pk])
    response = radiologist_client.post(url, {"action": "reject", "reason": ""}, follow=True)
    assert "Not saved: reason: give a reason to reject" in response.content.decode()
    response = radiologist_client.post(
        url, {"action": "override", "longest_diameter_mm": "x", "reason": "r"}, follow=True
    )
    assert (
        "Not saved: longest_diameter_mm: &#x27;x&#x27; is not a number" in response.content.decode()
    )
    gone = reverse("lesions:measurement-review", args=[999999])
    response = radiologist_client.post(gone, {"action": "accept"}, follow=True)
    assert "rebuilt since the page was loaded" in response.content.decode()
    assert not ReviewEvent.objects.exists()


def test_only_reviewers_may_post_and_next_must_be_local(patient, client):
    m = LesionMeasurement.objects.filter(study=_studies(patient)[0]).first()
    url = reverse("lesions:measurement-review", args=[m.pk])
    client.force_login(UserFactory(groups=["clinician"]))
    assert client.post(url, {"action": "accept"}).status_code == 403
    client.force_login(UserFactory(groups=["radiologist"]))
    response = client.post(url, {"action": "accept", "next": "https://evil.example/"})
    assert response.status_code == 302 and response["Location"].startswith("/imaging/patients/")


def test_targets_relink_and_merge_through_their_endpoints(patient, radiologist_client):
    baseline, middle, _ = _studies(patient)
    lung = LesionMeasurement.objects.get(study=baseline, component_label=2).lesion
    radiologist_client.post(
        reverse("lesions:targets", args=[patient.pk]), {"lesion": [lung.pk], "reason": "r"}
    )
    assert ResponseAssessment.objects.get(study=baseline).sum_diameters_mm == pytest.approx(16.0)

    small = LesionMeasurement.objects.get(study=baseline, component_label=3).lesion
    moved = LesionMeasurement.objects.get(study=middle, component_label=5)
    radiologist_client.post(
        reverse("lesions:measurement-review", args=[moved.pk]),
        {"action": "relink", "lesion": small.pk, "reason": "same lesion"},
    )
    assert LesionMeasurement.objects.get(study=middle, component_label=5).lesion == small

    response = radiologist_client.post(
        reverse("lesions:lesion-merge", args=[small.pk]),
        {"into": 999999, "reason": "r"},
        follow=True,
    )
    assert "Not saved: into: choose one of this patient&#x27;s lesions" in response.content.decode()
    assert [e.action for e in ReviewEvent.objects.order_by("at")] == ["targets", "relink"]


def test_the_review_form_partial_renders_for_a_measurement(patient):
    m = LesionMeasurement.objects.filter(study=_studies(patient)[0]).first()
    request = RequestFactory().get("/patients/1/")
    request.user = UserFactory(groups=["radiologist"])
    from django.contrib.auth.context_processors import PermWrapper

    html = render_to_string(
        "imaging/_review_form.html",
        {"measurement": m, "perms": PermWrapper(request.user)},
        request=request,
    )
    assert reverse("lesions:measurement-review", args=[m.pk]) in html
    assert 'name="next" value="/patients/1/"' in html
    assert re.search(r'name="action" value="accept"', html)
