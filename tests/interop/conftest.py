"""Fixtures for interoperability tests: Debian's Orthanc as a real PACS, and dciodvfy.

Orthanc starts as a plain process on free loopback ports with its storage in a
temporary folder and the DICOMweb plugin loaded (config: ``orthanc/orthanc.json``), and
is stopped when the module's tests are done. Where another process takes one of its ports
before Orthanc binds it (parallel test workers), it starts again on other ports.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from imaging.core.dicom.volume import series_volume
from imaging.core.geometry.nifti import volume_write_nifti
from imaging.ingest.service import ingest_paths
from imaging.models import Segmentation, Study
from tests.conftest import REQUIRE_ALL, require_program

CONFIG_TEMPLATE = Path(__file__).parent / "orthanc" / "orthanc.json"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
START_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class OrthancServer:
    http_port: int
    dicom_port: int
    aet: str = "ORTHANC"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def upload(self, paths: list[Path]) -> list[dict]:
        """Store files in Orthanc through its REST API; return its answers."""
        answers = []
        for path in paths:
            response = requests.post(f"{self.url}/instances", data=path.read_bytes(), timeout=10)
            response.raise_for_status()
            answers.append(response.json())
        return answers

    def orthanc_study_id(self, study_instance_uid: str) -> str:
        response = requests.post(f"{self.url}/tools/lookup", data=study_instance_uid, timeout=10)
        response.raise_for_status()
        (match,) = [m for m in response.json() if m["Type"] == "Study"]
        return match["ID"]


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


PORT_ATTEMPTS = 5


def _orthanc_start(binary: str, folder: Path, attempt: int):
    """Orthanc on two free ports, answering, with its log: (server, process, log), or None
    where another process took one of the ports between `free_port` and Orthanc's bind
    (parallel test workers open connections whose local ports come from the same range)."""
    server = OrthancServer(http_port=free_port(), dicom_port=free_port())
    config = (
        CONFIG_TEMPLATE.read_text()
        .replace("@STORAGE@", str(folder / f"storage-{attempt}"))
        .replace("@HTTP_PORT@", str(server.http_port))
        .replace("@DICOM_PORT@", str(server.dicom_port))
    )
    config_path = folder / f"orthanc-{attempt}.json"
    config_path.write_text(config)
    log_path = folder / f"orthanc-{attempt}.log"
    log = open(log_path, "wb")  # noqa: SIM115 (closed by the caller, or here on failure)
    process = subprocess.Popen([binary, str(config_path)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            log.close()
            text = log_path.read_text(errors="replace")
            if "already in use" in text:
                return None
            pytest.fail(
                f"Orthanc exited with status {process.returncode} at start:\n{text[-3000:]}"
            )
        try:
            if requests.get(f"{server.url}/system", timeout=1).ok:
                return server, process, log
        except requests.RequestException:  # not listening yet, or the port's other owner
            pass
        if time.monotonic() > deadline:
            _stop(process)
            log.close()
            pytest.fail(f"Orthanc did not answer on port {server.http_port} within 30 s")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory) -> Iterator[OrthancServer]:
    binary = require_program("Orthanc", why="the PACS for the DICOMweb and C-STORE round trip")
    if not DICOMWEB_PLUGIN.exists():
        message = f"{DICOMWEB_PLUGIN} is absent (apt-get install orthanc-dicomweb)"
        if REQUIRE_ALL:
            pytest.fail(message + " and RADTRACK_REQUIRE_ALL=1", pytrace=False)
        pytest.skip(message)
    folder = tmp_path_factory.mktemp("orthanc")
    for attempt in range(PORT_ATTEMPTS):
        started = _orthanc_start(binary, folder, attempt)
        if started is not None:
            break
    else:
        pytest.fail(f"Orthanc found its ports taken {PORT_ATTEMPTS} times in a row")
    server, process, log = started
    try:
        plugins = requests.get(f"{server.url}/plugins", timeout=5).json()
        assert "dicom-web" in plugins, f"the DICOMweb plugin did not load: {plugins}"
        yield server
    finally:
        _stop(process)
        log.close()


def dciodvfy_errors(path: Path) -> list[str]:
    """The lines dicom3tools' dciodvfy reports as errors for ``path`` (empty: valid)."""
    binary = require_program("dciodvfy", why="validates the SEG and SR against their IODs")
    result = subprocess.run([binary, str(path)], capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    if result.returncode != 0 and not errors:
        errors = [f"dciodvfy exited with {result.returncode}: {' '.join(lines[-5:])}"]
    return errors


@dataclass
class AnalysedStudy:
    """A study ingested from real CT files, with a segmentation and lesion rows."""

    study: object
    files: list[Path]
    lesions: list
    measurements: list


def analysed_study(
    folder: Path,
    *,
    key: str,
    patient_id: str = "RT-INTEROP-1",
    study_date=None,
    patient=None,
    lesions: list | None = None,
) -> AnalysedStudy:
    """Write a CT series, ingest it, and add a segmentation with two lesions on it.

    Liver lesion (label 2) on slices 1-3, lung lesion (label 5) on slice 2.
    """
    import datetime as dt

    import numpy as np
    import pydicom
    from django.conf import settings

    from tests.imaging.factories import LesionFactory, LesionMeasurementFactory, ct_files

    files = ct_files(
        folder / f"ct-{key}",
        patient_id=patient_id,
        key=key,
        slices=5,
        size=24,
        study_date=study_date or dt.date(2024, 3, 1),
    )
    ingest_paths(paths=[folder / f"ct-{key}"], process=False)
    study = Study.objects.get(study_instance_uid=str(pydicom.dcmread(files[0]).StudyInstanceUID))
    series = study.series.get()
    study.chosen_series = series
    study.save(update_fields=["chosen_series"])
    grid = series_volume(sources=files).volume
    labels = np.zeros(grid.array.shape, dtype=np.uint8)
    labels[1:4, 5:10, 5:10] = 2
    labels[2, 15:18, 15:18] = 5
    mask_rel = f"masks/{key}.nii.gz"
    volume_write_nifti(
        volume=grid.with_array(labels, kind="label"), path=Path(settings.DATA_DIR) / mask_rel
    )
    segmentation = Segmentation.objects.create(
        series=series, mask_path=mask_rel, model_name="lesion-unet", model_version="2.1.0"
    )
    if lesions is None:
        lesions = [
            LesionFactory(patient=study.patient, label=f"Liver {key}", organ="liver"),
            LesionFactory(patient=study.patient, label=f"Lung {key}", organ="lung"),
        ]
    measurements = [
        LesionMeasurementFactory(
            lesion=lesion,
            study=study,
            segmentation=segmentation,
            component_label=label,
            volume_ml=volume,
        )
        for lesion, label, volume in zip(lesions, (2, 5), (0.48, 0.0058), strict=True)
    ]
    return AnalysedStudy(study, files, lesions, measurements)
