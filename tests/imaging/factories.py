"""Factories for imaging rows, and real DICOM CT files written by RadTrack's own writer."""

import datetime as dt
from pathlib import Path

import factory
import numpy as np
from factory.django import DjangoModelFactory

from imaging.core.dicom.write import CTSeriesAttributes, ct_series_write, synthetic_uid
from imaging.core.geometry.volume import Volume
from imaging.models import (
    IngestIssue,
    IngestSession,
    Instance,
    Lesion,
    LesionMeasurement,
    ProcessingRun,
    Series,
    Study,
)
from tests.patients.factories import PatientFactory


class StudyFactory(DjangoModelFactory):
    class Meta:
        model = Study

    study_instance_uid = factory.Sequence(lambda n: synthetic_uid([f"study-{n}"]))
    patient = factory.SubFactory(PatientFactory)
    # Every 90 days from 2024, wrapping after about 50 years so a long test run stays in range:
    # a fixture whose studies must follow one another in time gives their dates itself.
    study_date = factory.Sequence(lambda n: dt.date(2024, 1, 1) + dt.timedelta(days=90 * (n % 200)))
    description = "CT CHEST ABDOMEN"


class SeriesFactory(DjangoModelFactory):
    class Meta:
        model = Series

    series_instance_uid = factory.Sequence(lambda n: synthetic_uid([f"series-{n}"]))
    study = factory.SubFactory(StudyFactory)
    modality = "CT"
    series_number = 1
    description = "AXIAL SOFT TISSUE"
    rows = 16
    columns = 16
    slice_count = 3
    pixel_spacing_row_mm = 0.8
    pixel_spacing_column_mm = 0.8
    slice_thickness_mm = 2.5
    image_orientation = [1, 0, 0, 0, 1, 0]
    state = Series.State.STORED


class IngestSessionFactory(DjangoModelFactory):
    class Meta:
        model = IngestSession

    source = IngestSession.Source.UPLOAD
    status = IngestSession.Status.DONE


class IngestIssueFactory(DjangoModelFactory):
    class Meta:
        model = IngestIssue

    session = factory.SubFactory(IngestSessionFactory)
    kind = IngestIssue.Kind.REJECTED
    file_name = factory.Sequence(lambda n: f"bad{n}.dcm")
    reason = "not a DICOM file (no 'DICM' prefix at byte 128)"


class InstanceFactory(DjangoModelFactory):
    """An index row only (no file in the store): for pages, not for reading pixels."""

    class Meta:
        model = Instance

    sop_instance_uid = factory.Sequence(lambda n: synthetic_uid([f"instance-{n}"]))
    series = factory.SubFactory(SeriesFactory)
    sop_class_uid = "1.2.840.10008.5.1.4.1.1.2"
    transfer_syntax_uid = "1.2.840.10008.1.2.1"
    instance_number = factory.Sequence(lambda n: n + 1)
    stored_path = factory.LazyAttribute(lambda i: f"objects/00/00/{i.sha256}.dcm")
    size_bytes = 1024
    sha256 = factory.Sequence(lambda n: f"{n:064x}")
    ingest_session = factory.SubFactory(IngestSessionFactory)


class ProcessingRunFactory(DjangoModelFactory):
    class Meta:
        model = ProcessingRun

    series = factory.SubFactory(SeriesFactory)
    status = ProcessingRun.Status.SUCCEEDED
    device = "cpu"


# -- real DICOM files ---------------------------------------------------------------
def phantom_volume(*, slices: int = 3, size: int = 16, seed: int = 0) -> Volume:
    """A small CT volume in HU: soft tissue with noise, and a brighter square."""
    rng = np.random.default_rng(seed)
    hu = rng.normal(40.0, 10.0, size=(slices, size, size))
    hu[:, size // 4 : size // 2, size // 4 : size // 2] += 60.0
    return Volume(array=hu, spacing_mm=(0.8, 0.8, 2.5), origin_mm=(-0.4 * size, -0.4 * size, -50.0))


def ct_files(
    out_dir: Path,
    *,
    patient_id: str = "RT-0001",
    patient_name: str = "Doe^Jane",
    key: str = "a",
    slices: int = 3,
    size: int = 16,
    seed: int = 0,
    study_date: dt.date = dt.date(2024, 3, 1),
    study_instance_uid: str | None = None,
) -> list[Path]:
    """Write a CT series with UIDs derived from ``key`` (same key, same UIDs).

    Writing twice with the same key and a different ``seed`` gives files with the same
    SOP Instance UIDs and different pixel data.
    """
    attrs = CTSeriesAttributes(
        patient_id=patient_id,
        patient_name=patient_name,
        patient_birth_date=dt.date(1958, 2, 3),
        patient_sex="F",
        study_instance_uid=study_instance_uid or synthetic_uid([key, "study"]),
        series_instance_uid=synthetic_uid([key, "series"]),
        frame_of_reference_uid=synthetic_uid([key, "for"]),
        study_date=study_date,
    )
    uids = [synthetic_uid([key, "sop", str(k)]) for k in range(slices)]
    return ct_series_write(
        phantom_volume(slices=slices, size=size, seed=seed), out_dir, attrs, sop_instance_uids=uids
    )


class LesionFactory(DjangoModelFactory):
    class Meta:
        model = Lesion

    patient = factory.SubFactory(PatientFactory)
    tracking_uid = factory.Sequence(lambda n: synthetic_uid([f"lesion-{n}"]))
    label = factory.Sequence(lambda n: f"Liver {n + 1}")
    organ = Lesion.Organ.LIVER


class LesionMeasurementFactory(DjangoModelFactory):
    class Meta:
        model = LesionMeasurement

    lesion = factory.SubFactory(LesionFactory)
    study = factory.SubFactory(StudyFactory, patient=factory.SelfAttribute("..lesion.patient"))
    status = LesionMeasurement.Status.TRACKED
    volume_ml = 4.2
    longest_diameter_mm = 21.0
    short_axis_mm = 17.0
    centroid_x_mm = -80.0
    centroid_y_mm = 20.0
    centroid_z_mm = -150.0
    confidence = 0.93
