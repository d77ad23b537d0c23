"""Registry fixtures: tiny models in each format, and phantom studies processed by the
real pipeline (DICOM written by RadTrack's writer, ingested, processed, tracked)."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from django.utils import timezone

from imaging.core.dicom.write import CTSeriesAttributes, ct_series_write, synthetic_uid
from imaging.ingest.service import ingest_paths
from imaging.modelhub.models import SegmentationModel
from imaging.modelhub.services import model_register, shipped_model_ensure
from imaging.models import LesionMeasurement, Study
from imaging.pipeline.run import study_process
from tests.imaging.modelhub.tiny_models import TINY_LABELS, monai_bundle_build, onnx_build, phantom

ONNX_CONVENTIONS = {"spacing_mm": [2, 2, 2], "windows_hu": [[-1000, 1000]], "divisor": 1}


@pytest.fixture(scope="session")
def tiny_sources(tmp_path_factory):
    """Model folders written once per session: a bundle and two ONNX rules."""
    root = tmp_path_factory.mktemp("tiny")
    bundle = monai_bundle_build(root / "bundle")
    onnx_build(root / "onnx")
    return {"bundle": bundle, "onnx": root / "onnx"}


def tiny_active(sources) -> SegmentationModel:
    """The tiny MONAI bundle registered and made active by hand (arranging the registry's
    state for a test; the shipped model retires)."""
    shipped_model_ensure()
    model = model_register(source=sources["bundle"], fmt="monai-bundle", name="tiny", version="a",
                           username="test")  # fmt: skip
    SegmentationModel.objects.filter(status="active").update(status="retired")
    SegmentationModel.objects.filter(pk=model.pk).update(status="active")
    model.refresh_from_db()
    return model


def processed_phantom_study(tmp_path, *, key: str, patient_id: str = "MH-1", seed: int = 0,
                            kernel: str = "STANDARD") -> Study:  # fmt: skip
    """A phantom study written as DICOM, ingested and processed with the active model."""
    volume, _, _ = phantom(seed=seed)
    attrs = CTSeriesAttributes(
        patient_id=patient_id, patient_name="Phantom^Tiny", study_instance_uid=synthetic_uid([key, "study"]),
        series_instance_uid=synthetic_uid([key, "series"]), frame_of_reference_uid=synthetic_uid([key, "for"]),
        study_date=dt.date(2024, 1, 1) + dt.timedelta(days=30 * seed), convolution_kernel=kernel,
        manufacturer="Acme",
    )  # fmt: skip
    folder = tmp_path / key
    ct_series_write(
        volume,
        folder,
        attrs,
        sop_instance_uids=[synthetic_uid([key, str(k)]) for k in range(volume.array.shape[0])],
    )
    ingest_paths(paths=[folder], process=False)
    study = Study.objects.get(study_instance_uid=attrs.study_instance_uid)
    study_process(study=study, device="cpu")
    study.refresh_from_db()
    return study


def review_all(study: Study, user, state: str = "accepted") -> None:
    LesionMeasurement.objects.filter(study=study, status__in=LesionMeasurement.FOUND).update(
        review_state=state, reviewed_by=user, reviewed_at=timezone.now()
    )


def labels_json() -> str:
    return json.dumps(TINY_LABELS)
