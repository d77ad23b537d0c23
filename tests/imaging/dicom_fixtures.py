"""Small real CT series written with RadTrack's own DICOM writer, for ingest tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from imaging.core.dicom_write import CTSeriesAttributes, ct_series_write, synthetic_uid
from imaging.core.volume import Volume


def small_ct_series(
    folder: Path,
    *,
    patient_id: str = "MRN0001",
    slices: int = 6,
    size: int = 32,
    seed: int = 0,
    study_instance_uid: str | None = None,
) -> list[Path]:
    """Write a ``size`` x ``size`` x ``slices`` CT series of noisy soft tissue into ``folder``."""
    rng = np.random.default_rng(seed)
    hu = rng.normal(40.0, 15.0, size=(slices, size, size)).astype(np.float32)
    volume = Volume(hu, (0.8, 0.8, 2.5), (-12.8, -12.8, -50.0))
    attrs = CTSeriesAttributes(
        patient_id=patient_id,
        patient_name="Test^Patient",
        study_instance_uid=study_instance_uid or synthetic_uid(),
        series_instance_uid=synthetic_uid(),
        frame_of_reference_uid=synthetic_uid(),
    )
    return ct_series_write(volume, folder, attrs)
