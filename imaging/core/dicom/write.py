"""Write a scalar `Volume` in Hounsfield units as a DICOM CT Image Storage series.

One file per slice, in Part 10 format, with the geometry of the volume: Image Position
(Patient) (0020,0032) of each slice is the LPS position of its first voxel, Image
Orientation (Patient) (0020,0037) the row and column direction cosines, Pixel Spacing
(0028,0030) ``row spacing \\ column spacing`` (PS3.3 C.7.6.2). Pixel values are stored
unsigned with Rescale Intercept -1024 (PS3.3 C.8.2.1), as many scanners write them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

from imaging.core.geometry.volume import Volume

SYNTHETIC_UID_PREFIX = "1.2.826.0.1.3680043.8.498."

RESCALE_INTERCEPT_HU = -1024.0
MAX_STORED = 4095  # 12 bits stored


def synthetic_uid(entropy: Iterable[str] | None = None) -> UID:
    """A UID under pydicom's root; deterministic when ``entropy`` is given."""
    return generate_uid(
        prefix=SYNTHETIC_UID_PREFIX, entropy_srcs=list(entropy) if entropy else None
    )


@dataclass
class CTSeriesAttributes:
    """Patient, study and series attributes written into every slice of a series."""

    patient_id: str
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    patient_name: str = ""
    patient_birth_date: dt.date | None = None
    patient_sex: str = ""
    study_date: dt.date = field(default_factory=dt.date.today)
    study_time: dt.time = dt.time(9, 0, 0)
    accession_number: str = ""
    study_id: str = "1"
    study_description: str = "CT CHEST ABDOMEN"
    series_number: int = 1
    series_description: str = "AXIAL SOFT TISSUE"
    patient_position: str = "HFS"
    manufacturer: str = "RadTrack"
    manufacturer_model_name: str = "Synthetic phantom"
    convolution_kernel: str = "STANDARD"
    body_part_examined: str = "CHEST"
    kvp: float = 120.0
    slice_thickness_mm: float | None = None


def hu_to_stored(hu: np.ndarray) -> np.ndarray:
    """Hounsfield units to stored 12-bit unsigned values (intercept -1024, slope 1)."""
    stored = np.rint(np.asarray(hu, dtype=np.float64) - RESCALE_INTERCEPT_HU)
    return np.clip(stored, 0, MAX_STORED).astype(np.uint16)


def _ds_number(value: float) -> str:
    """A decimal string of at most 16 characters (PS3.5 Table 6.2-1, DS)."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    if text in ("-0", ""):
        text = "0"
    return text[:16]


def _file_meta(sop_instance_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "RADTRACK_0_1"
    return meta


def _patient_study_series(ds: Dataset, attrs: CTSeriesAttributes) -> None:
    """The attributes every slice of the series shares: patient, study, series, equipment."""
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = attrs.study_date.strftime("%Y%m%d")
    ds.SeriesDate = ds.StudyDate
    ds.ContentDate = ds.StudyDate
    ds.AcquisitionDate = ds.StudyDate
    ds.StudyTime = attrs.study_time.strftime("%H%M%S")
    ds.SeriesTime = ds.StudyTime
    ds.ContentTime = ds.StudyTime
    ds.AcquisitionTime = ds.StudyTime
    ds.AccessionNumber = attrs.accession_number
    ds.Modality = "CT"
    ds.Manufacturer = attrs.manufacturer
    ds.InstitutionName = "RadTrack synthetic cohort"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = attrs.study_description
    ds.SeriesDescription = attrs.series_description
    ds.ManufacturerModelName = attrs.manufacturer_model_name
    ds.PatientName = attrs.patient_name
    ds.PatientID = attrs.patient_id
    ds.PatientBirthDate = (
        attrs.patient_birth_date.strftime("%Y%m%d") if attrs.patient_birth_date else ""
    )
    ds.PatientSex = attrs.patient_sex
    ds.BodyPartExamined = attrs.body_part_examined
    ds.KVP = _ds_number(attrs.kvp)
    ds.ConvolutionKernel = attrs.convolution_kernel
    ds.PatientPosition = attrs.patient_position
    ds.StudyInstanceUID = attrs.study_instance_uid
    ds.SeriesInstanceUID = attrs.series_instance_uid
    ds.StudyID = attrs.study_id
    ds.SeriesNumber = attrs.series_number
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = attrs.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    # Laterality (0020,0060) is Type 2C, for paired body parts only: a chest/abdomen
    # series must leave it out (dciodvfy reports an empty one as an error).


def _slice_plane(ds: Dataset, volume: Volume, k: int, attrs: CTSeriesAttributes) -> None:
    """Where slice ``k`` lies (PS3.3 C.7.6.2) and how its pixels become HU."""
    row_cosine = volume.direction[:, 0]
    column_cosine = volume.direction[:, 1]
    position = volume.index_to_lps(np.array([0.0, 0.0, float(k)]))
    sx, sy, sz = volume.spacing_mm
    thickness = attrs.slice_thickness_mm if attrs.slice_thickness_mm is not None else sz
    ds.SliceThickness = _ds_number(thickness)
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = [_ds_number(v) for v in position]
    ds.ImageOrientationPatient = [_ds_number(v) for v in (*row_cosine, *column_cosine)]
    normal = np.cross(row_cosine, column_cosine)
    ds.SliceLocation = _ds_number(float(np.dot(position, normal)))
    ds.PixelSpacing = [_ds_number(sy), _ds_number(sx)]
    ds.RescaleIntercept = _ds_number(RESCALE_INTERCEPT_HU)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"


def ct_slice_dataset(
    volume: Volume, k: int, attrs: CTSeriesAttributes, *, sop_instance_uid: str
) -> Dataset:
    """The dataset of slice ``k`` of ``volume`` (pixel data included)."""
    if volume.kind != "scalar":
        raise ValueError("only scalar volumes (HU) are written as CT images")
    ds = Dataset()
    ds.file_meta = _file_meta(sop_instance_uid)
    _patient_study_series(ds, attrs)
    ds.SOPInstanceUID = sop_instance_uid
    _slice_plane(ds, volume, k, attrs)
    pixels = hu_to_stored(volume.array[k])
    # pydicom 3 would otherwise replace the SOP Instance UID with a random one, breaking
    # reproducible output and the match with MediaStorageSOPInstanceUID.
    ds.set_pixel_data(
        pixels,
        photometric_interpretation="MONOCHROME2",
        bits_stored=12,
        generate_instance_uid=False,
    )
    return ds


def ct_series_write(
    volume: Volume,
    out_dir: Path,
    attrs: CTSeriesAttributes,
    *,
    sop_instance_uids: list[str] | None = None,
) -> list[Path]:
    """Write every slice of ``volume`` to ``out_dir`` as ``IM000001.dcm``... and return paths.

    ``sop_instance_uids`` (one per slice) makes the output reproducible; without it
    fresh UIDs are generated.
    """
    n_slices = volume.array.shape[0]
    if sop_instance_uids is not None and len(sop_instance_uids) != n_slices:
        raise ValueError(f"{len(sop_instance_uids)} SOP Instance UIDs for {n_slices} slices")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n_slices):
        uid = sop_instance_uids[k] if sop_instance_uids else synthetic_uid()
        ds = ct_slice_dataset(volume, k, attrs, sop_instance_uid=uid)
        path = out_dir / f"IM{k + 1:06d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def read_back(path: Path) -> Dataset:
    """Read a file written here (a convenience for tests and tools)."""
    return pydicom.dcmread(path)
