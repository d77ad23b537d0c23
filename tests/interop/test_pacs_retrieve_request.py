"""Retrieving one study from the PACS on demand: the API, the pipeline page's form, and
the transfers shown there. The retrieve runs after the request (a task), against a real
Orthanc in the last test."""

from __future__ import annotations

import pydicom
import pytest
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from imaging.models import Instance, PacsTransfer, Study
from patients.models import AuditEvent
from tests.imaging.factories import ct_files
from tests.patients.factories import UserFactory

pytestmark = pytest.mark.django_db

UID = "1.2.826.0.1.3680043.8.498.4242"


@pytest.fixture
def radiologist():
    return UserFactory(groups=["radiologist"])


def _api(user) -> APIClient:
    api = APIClient()
    api.force_authenticate(user)
    return api


@pytest.mark.parametrize(
    ("uid", "configured", "status", "says"),
    [
        ("", True, 400, "study_instance_uid"),
        ("1.2.abc", True, 400, "digits and dots"),
        ("1." + "2" * 70, True, 400, "at most 64"),
        (UID, False, 400, "no PACS is configured"),
        (UID, True, 202, ""),
    ],
)
def test_the_api_checks_the_request_and_queues_one_retrieve(
    uid, configured, status, says, radiologist, settings, django_capture_on_commit_callbacks
):
    settings.RADTRACK_PACS_DICOMWEB_URL = "http://127.0.0.1:9/dicom-web" if configured else ""
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = _api(radiologist).post(
            "/api/v1/pacs/retrieve/", {"study_instance_uid": uid}, format="json"
        )
    assert response.status_code == status, response.content
    if status == 202:
        assert response.json() == {"queued": UID}
        assert len(callbacks) == 1
        assert AuditEvent.objects.filter(action="pacs.retrieve", user=radiologist).count() == 1
    else:
        assert says in response.json()["detail"]
        assert not callbacks and not AuditEvent.objects.filter(action="pacs.retrieve").exists()


def test_a_clinician_may_not_bring_images_in(settings):
    settings.RADTRACK_PACS_DICOMWEB_URL = "http://127.0.0.1:9/dicom-web"
    clinician = UserFactory(groups=["clinician"])
    response = _api(clinician).post(
        "/api/v1/pacs/retrieve/", {"study_instance_uid": UID}, format="json"
    )
    assert response.status_code == 403
    client = Client()
    client.force_login(clinician)
    page = client.post(reverse("imaging:pacs-retrieve"), {"study_instance_uid": UID})
    assert page.status_code == 403


def test_pipeline_page_offers_the_form_and_audits_refreshes_sparingly(
    client, radiologist, settings
):
    settings.RADTRACK_PACS_DICOMWEB_URL = "http://127.0.0.1:9/dicom-web"
    PacsTransfer.objects.create(
        direction=PacsTransfer.Direction.RETRIEVE,
        study_instance_uid=UID,
        pacs_url="http://127.0.0.1:9/dicom-web",
        status=PacsTransfer.Status.FAILED,
        attempts=3,
        error="cannot connect to the PACS",
    )
    client.force_login(radiologist)
    page = client.get(reverse("analytics:pipeline")).content.decode()
    assert 'action="/imaging/pacs/retrieve/"' in page
    assert UID in page and "cannot connect to the PACS" in page
    for _ in range(3):
        fragment = client.get(reverse("analytics:pipeline") + "?fragment=1")
        assert UID in fragment.content.decode()
    assert AuditEvent.objects.filter(action="pipeline.view", user=radiologist).count() == 1


def test_the_form_retrieves_a_study_from_orthanc(
    orthanc, client, radiologist, settings, tmp_path, django_capture_on_commit_callbacks
):
    settings.RADTRACK_PACS_DICOMWEB_URL = orthanc.dicomweb_url
    files = ct_files(tmp_path / "s", key="on-demand-form", slices=4, size=24)
    orthanc.upload(files)
    uid = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    client.force_login(radiologist)

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("imaging:pacs-retrieve"), {"study_instance_uid": uid})

    assert response.status_code == 302 and response["Location"] == reverse("analytics:pipeline")
    study = Study.objects.get(study_instance_uid=uid)
    assert Instance.objects.filter(series__study=study).count() == len(files)
    transfer = PacsTransfer.objects.get(study_instance_uid=uid)
    assert transfer.status == PacsTransfer.Status.DONE
    page = client.get(reverse("analytics:pipeline")).content.decode()
    assert f"Retrieve of study {uid} from the PACS queued." in page
