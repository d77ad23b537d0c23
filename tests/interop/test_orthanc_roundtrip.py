"""The whole round trip with Debian's Orthanc as the PACS, over real sockets.

Studies stored in Orthanc are found (QIDO-RS) and retrieved (WADO-RS) on demand and on
the schedule; Orthanc's C-STORE reaches RadTrack's listener; the SEG and SR go back by
STOW-RS and are read back from Orthanc. The listener's threads use their own database
connections, hence ``transaction=True``.
"""

from __future__ import annotations

import datetime as dt
import time
from io import StringIO

import highdicom as hd
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from django.core.management import call_command
from django.utils import timezone

from imaging.ingest.listener import StorageListener
from imaging.ingest.pacs import (
    ANY_TRANSFER_SYNTAX,
    PacsConfig,
    pacs_study_retrieve,
    wado_ingest_sources,
)
from imaging.ingest.service import IngestRun
from imaging.ingest.tasks import pacs_pull_task
from imaging.models import IngestSession, Instance, PacsTransfer, Study
from tests.imaging.factories import ct_files
from tests.interop.conftest import analysed_study, dciodvfy_errors

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def pacs(orthanc, settings) -> PacsConfig:
    settings.RADTRACK_PACS_DICOMWEB_URL = orthanc.dicomweb_url
    settings.RADTRACK_PACS_RETRY_WAIT_S = 0.0
    return PacsConfig.from_settings()


def _study_in_orthanc(orthanc, tmp_path, key: str, **kw) -> tuple[str, list]:
    files = ct_files(tmp_path / key, key=key, patient_id=f"RT-{key}", slices=4, size=24, **kw)
    orthanc.upload(files)
    return str(pydicom.dcmread(files[0]).StudyInstanceUID), files


def test_pull_on_demand_retrieves_a_study_once(orthanc, pacs, tmp_path):
    uid, files = _study_in_orthanc(orthanc, tmp_path, "rt-demand")
    out = StringIO()
    call_command("pacs_pull", "--study", uid, "--no-process", stdout=out)
    assert "1 retrieved" in out.getvalue()
    study = Study.objects.get(study_instance_uid=uid)
    assert Instance.objects.filter(series__study=study).count() == len(files)
    transfer = PacsTransfer.objects.get(study_instance_uid=uid)
    assert (transfer.status, transfer.instances, transfer.study) == ("done", 4, study)
    assert transfer.ingest_session.source == IngestSession.Source.DICOMWEB
    # Again: nothing missing, nothing fetched.
    again = pacs_study_retrieve(study_instance_uid=uid, config=pacs, process=False)
    assert (again.status, again.instances) == ("done", 0)
    assert Instance.objects.filter(series__study=study).count() == len(files)


def test_scheduled_pull_takes_recent_studies_and_retries_failed_ones(orthanc, pacs, tmp_path):
    today = timezone.localdate()
    recent, _ = _study_in_orthanc(orthanc, tmp_path, "rt-recent", study_date=today)
    old, _ = _study_in_orthanc(orthanc, tmp_path, "rt-old", study_date=dt.date(2020, 5, 1))
    # A retrieve of the old study failed earlier (the PACS was down): retried now.
    PacsTransfer.objects.create(
        direction=PacsTransfer.Direction.RETRIEVE,
        study_instance_uid=old,
        pacs_url=pacs.url,
        status=PacsTransfer.Status.FAILED,
        error="cannot connect to the PACS",
    )
    line = pacs_pull_task.delay().get()
    assert "0 failed" in line
    for uid in (recent, old):
        assert Study.objects.get(study_instance_uid=uid).series.get().slice_count == 4
    assert PacsTransfer.objects.filter(status="done", trigger="schedule").count() == 2
    # The next run finds the recent study complete and makes no transfer for it.
    before = PacsTransfer.objects.count()
    line = pacs_pull_task.delay().get()
    # Both complete: the recent one by date, the old one by its patient's sweep.
    assert "0 retrieved, 2 already complete" in line
    assert PacsTransfer.objects.count() == before


def test_scheduled_pull_fetches_a_late_prior_of_a_recent_patient(orthanc, pacs, tmp_path):
    """A prior loaded into the PACS late keeps its old Study Date: the date search never
    sees it, the patient sweep does. Another patient's old study is left alone."""
    today = timezone.localdate()
    common = {"patient_id": "RT-PRIOR", "slices": 4, "size": 24}
    recent = ct_files(tmp_path / "recent", key="prior-recent", study_date=today, **common)
    prior = ct_files(tmp_path / "prior", key="prior-old", study_date=dt.date(2019, 2, 1), **common)
    stranger, _ = _study_in_orthanc(orthanc, tmp_path, "stranger", study_date=dt.date(2019, 3, 1))
    orthanc.upload(recent + prior)

    line = pacs_pull_task.delay().get()

    # (Orthanc is shared by the module's tests: other recent studies may come too.)
    assert "0 failed" in line
    uids = {str(pydicom.dcmread(f[0]).StudyInstanceUID) for f in (recent, prior)}
    assert uids <= set(Study.objects.values_list("study_instance_uid", flat=True))
    assert not Study.objects.filter(study_instance_uid=stranger).exists()
    # Next time both are complete: no transfer, and the prior counts as up to date.
    before = PacsTransfer.objects.count()
    assert "0 retrieved" in pacs_pull_task.delay().get()
    assert PacsTransfer.objects.count() == before


def test_orthanc_c_store_reaches_the_listener_and_wado_then_finds_duplicates(
    orthanc, pacs, tmp_path
):
    uid, files = _study_in_orthanc(orthanc, tmp_path, "rt-cstore")
    listener = StorageListener(ae_title="RADTRACK", allowed_aes=["ORTHANC"], process=False)
    host, port = listener.start(host="127.0.0.1", port=0)
    try:
        modality = {"AET": "RADTRACK", "Host": host, "Port": port}
        requests.put(
            f"{orthanc.url}/modalities/radtrack", json=modality, timeout=10
        ).raise_for_status()
        answer = requests.post(
            f"{orthanc.url}/modalities/radtrack/store",
            data=orthanc.orthanc_study_id(uid),
            timeout=60,
        )
        answer.raise_for_status()
        deadline = time.monotonic() + 15
        while listener.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        listener.stop(grace_s=5)
    session = IngestSession.objects.get(source=IngestSession.Source.DIMSE)
    assert (session.stored, session.rejected, session.status) == (len(files), 0, "done")
    assert session.origin.startswith("ORTHANC@")
    # The same study by WADO-RS: every instance is already here, so nothing is fetched.
    transfer = pacs_study_retrieve(study_instance_uid=uid, config=pacs, process=False)
    assert (transfer.status, transfer.instances) == ("done", 0)
    # Fed through ingest anyway, the WADO-RS copies are duplicates of what C-STORE
    # brought, not conflicts: both paths keep the data set byte for byte.
    run = IngestRun(source=IngestSession.Source.DICOMWEB, process=False)
    datasets = pacs.client().iter_study(uid, media_types=ANY_TRANSFER_SYNTAX)
    outcomes = run.add(wado_ingest_sources(datasets, [0]))
    run.finish()
    assert [o.status for o in outcomes] == ["duplicate"] * len(files)


def test_seg_and_sr_go_back_by_stow_and_read_back(orthanc, pacs, tmp_path):
    case = analysed_study(tmp_path, key="rt-stow", patient_id="RT-STOW")
    orthanc.upload(case.files)
    out = StringIO()
    call_command("export_dicom", "--patient", "RT-STOW", "--send", stdout=out)
    assert "sent: done" in out.getvalue()
    transfer = PacsTransfer.objects.get(direction=PacsTransfer.Direction.SEND)
    assert (transfer.status, transfer.instances, transfer.study) == ("done", 2, case.study)

    client = DICOMwebClient(url=orthanc.dicomweb_url)
    uid = case.study.study_instance_uid
    found = client.search_for_series(study_instance_uid=uid)
    modalities = sorted(item["00080060"]["Value"][0] for item in found)
    assert modalities == ["CT", "SEG", "SR"]
    series = {item["00080060"]["Value"][0]: item["0020000E"]["Value"][0] for item in found}
    (seg,) = client.retrieve_series(uid, series["SEG"])
    (sr,) = client.retrieve_series(uid, series["SR"])
    assert {s.TrackingUID for s in seg.SegmentSequence} == {
        lesion.tracking_uid for lesion in case.lesions
    }
    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    groups = report.content.get_volumetric_roi_measurement_groups()
    assert {g.tracking_uid for g in groups} == {lesion.tracking_uid for lesion in case.lesions}
    path = tmp_path / "seg-from-orthanc.dcm"
    seg.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    # The SR's voxel-sum volumes, read back from Orthanc, are those of the SEG's segments.
    from tests.interop.dicom_checks import sr_mask_volumes

    for tracking_id, in_sr, from_seg, _ in sr_mask_volumes(
        hd.seg.Segmentation.from_dataset(seg), report
    ):
        assert in_sr == pytest.approx(from_seg, rel=1e-6), tracking_id
    assert "the PACS: SEG stored, SR stored" in out.getvalue()


def test_send_reports_what_the_pacs_did_and_warns_of_other_content_under_our_uid(
    orthanc, pacs, tmp_path, settings
):
    from pathlib import Path

    from imaging.exports.services import study_dicom_export

    case = analysed_study(tmp_path, key="rt-again", patient_id="RT-AGAIN")
    orthanc.upload(case.files)
    first = study_dicom_export(study=case.study, send=True, config=pacs)
    assert first.pacs == {"SEG": "stored", "SR": "stored"} and first.warnings == []
    again = study_dicom_export(study=case.study, send=True, config=pacs)
    assert again.pacs == {"SEG": "already present", "SR": "already present"}
    assert again.warnings == []

    # Another object already holds the UID of the SR the next export will write:
    # Orthanc keeps its copy, and the export says so.
    case.measurements[0].override_longest_diameter_mm = 31.0
    case.measurements[0].save()
    built = study_dicom_export(study=case.study)
    sr_path = Path(settings.DATA_DIR) / built.sr_path
    other = pydicom.dcmread(sr_path)
    other.SeriesDescription = "someone else's object"
    impostor = tmp_path / "impostor.dcm"
    other.save_as(impostor, enforce_file_format=True)
    orthanc.upload([impostor])
    out, err = StringIO(), StringIO()
    # A warning, not a failure: the SEG and the earlier SR are where they should be.
    call_command("export_dicom", "--patient", "RT-AGAIN", "--send", stdout=out, stderr=err)
    assert "SEG already present, SR kept different content" in out.getvalue()
    assert "warning: study" in err.getvalue() and "kept different content" in err.getvalue()
