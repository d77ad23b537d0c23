"""Check one received DICOM file and pull out what the index needs, without Django.

`instance_inspect` decides whether a file can be stored: it must be a DICOM object of
a storage class RadTrack keeps (CT, MR, SEG, SR), carry the identifying UIDs, and for
images the geometry and complete pixel data. Slightly non-conformant files that read
safely are accepted and their problems returned as warnings. The bytes to store are the
original bytes with the 128-byte preamble zeroed (PS3.10 7.1; CVE-2019-11687, where a
preamble can make a DICOM file a valid executable too).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import re
import threading
import warnings
from dataclasses import dataclass

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

PREAMBLE_LENGTH = 128

#: Storage SOP classes RadTrack stores (PS3.4 Annex B.5), with readable names.
ACCEPTED_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.66.4": "Segmentation Storage",
    "1.2.840.10008.5.1.4.1.1.88.11": "Basic Text SR Storage",
    "1.2.840.10008.5.1.4.1.1.88.22": "Enhanced SR Storage",
    "1.2.840.10008.5.1.4.1.1.88.33": "Comprehensive SR Storage",
    "1.2.840.10008.5.1.4.1.1.88.34": "Comprehensive 3D SR Storage",
}
CROSS_SECTIONAL_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2",
    "1.2.840.10008.5.1.4.1.1.4",
}
ENHANCED_CLASSES = {"1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.4.1"}

_WARNINGS_LOCK = threading.Lock()

_UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


class DicomRejected(Exception):
    """The file cannot be stored; ``str(exc)`` says why, for the person who sent it."""


@dataclass(frozen=True)
class PatientAttributes:
    patient_id: str
    name: str
    birth_date: dt.date | None
    sex: str


@dataclass(frozen=True)
class StudyAttributes:
    study_instance_uid: str
    study_date: dt.date | None
    study_time: dt.time | None
    accession_number: str
    description: str


@dataclass(frozen=True)
class SeriesAttributes:
    series_instance_uid: str
    modality: str
    series_number: int | None
    description: str
    manufacturer: str
    kernel: str
    body_part: str
    rows: int | None
    columns: int | None
    pixel_spacing_row_mm: float | None
    pixel_spacing_column_mm: float | None
    slice_thickness_mm: float | None
    image_orientation: tuple[float, ...] | None
    patient_position: str
    frame_of_reference_uid: str


@dataclass(frozen=True)
class InspectedInstance:
    """A file that may be stored, with the attributes the index keeps.

    ``sha256`` covers the stored file; ``dataset_sha256`` only the data set after the
    File Meta Information (group 0002), which differs between senders for the same
    object (implementation UID, source AE title) and so is what decides whether a
    second copy is the same object or a conflicting one.
    """

    data: bytes
    sha256: str
    dataset_sha256: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    instance_number: int | None
    image_position: tuple[float, float, float] | None
    patient: PatientAttributes
    study: StudyAttributes
    series: SeriesAttributes
    warnings: tuple[str, ...]

    @property
    def sop_class_name(self) -> str:
        return ACCEPTED_SOP_CLASSES.get(self.sop_class_uid, self.sop_class_uid)

    @property
    def is_analysable_image(self) -> bool:
        """An image series the pipeline turns into a volume (CT or MR)."""
        return self.sop_class_uid in CROSS_SECTIONAL_CLASSES | ENHANCED_CLASSES


def preamble_zeroed(data: bytes) -> bytes:
    """``data`` with its 128-byte preamble set to zeros when it has one."""
    if len(data) >= PREAMBLE_LENGTH + 4 and data[PREAMBLE_LENGTH : PREAMBLE_LENGTH + 4] == b"DICM":
        if data[:PREAMBLE_LENGTH].count(0) == PREAMBLE_LENGTH:
            return data
        return bytes(PREAMBLE_LENGTH) + data[PREAMBLE_LENGTH:]
    return data


_LONG_LENGTH_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"SV",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"UV",
}


def dataset_offset(data: bytes) -> int:
    """Where the data set starts: after the preamble, 'DICM' and group 0002 (PS3.10 7.1).

    File Meta elements are always Explicit VR Little Endian (PS3.10 7.1). A file
    without the Part 10 header starts with its data set.
    """
    if data[PREAMBLE_LENGTH : PREAMBLE_LENGTH + 4] != b"DICM":
        return 0
    offset = PREAMBLE_LENGTH + 4
    while offset + 8 <= len(data):
        group = int.from_bytes(data[offset : offset + 2], "little")
        if group != 0x0002:
            break
        vr = data[offset + 4 : offset + 6]
        if vr in _LONG_LENGTH_VRS:
            length = int.from_bytes(data[offset + 8 : offset + 12], "little")
            offset += 12 + length
        else:
            length = int.from_bytes(data[offset + 6 : offset + 8], "little")
            offset += 8 + length
    return min(offset, len(data))


def _text(ds: Dataset, keyword: str, found: list[str]) -> str:
    try:
        value = ds.get(keyword, "")
    except Exception as exc:  # a value pydicom cannot convert
        found.append(f"{keyword} could not be read ({exc}); left empty")
        return ""
    if value is None:
        return ""
    return str(value).strip()


def _number(ds: Dataset, keyword: str, found: list[str], cast=float):
    try:
        value = ds.get(keyword)
        if value is None or value == "":
            return None
        return cast(value)
    except Exception as exc:
        found.append(f"{keyword} could not be read ({exc}); left empty")
        return None


def _floats(ds: Dataset, keyword: str, count: int) -> tuple[float, ...] | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        values = tuple(float(v) for v in (value if isinstance(value, list | tuple) else [value]))
    except (TypeError, ValueError):
        values = tuple(float(v) for v in value)
    return values if len(values) == count else None


def _date(ds: Dataset, keyword: str, found: list[str]) -> dt.date | None:
    raw = _text(ds, keyword, found)
    if not raw:
        return None
    try:
        return dt.datetime.strptime(raw[:8], "%Y%m%d").date()
    except ValueError:
        # The value itself may be a birth date: never repeat it in a message.
        found.append(f"{keyword} is not a DICOM date (YYYYMMDD); left empty")
        return None


def _time(ds: Dataset, keyword: str, found: list[str]) -> dt.time | None:
    raw = _text(ds, keyword, found).replace(":", "")
    if not raw:
        return None
    digits = raw.split(".")[0]
    try:
        hour = int(digits[0:2])
        minute = int(digits[2:4] or 0)
        second = int(digits[4:6] or 0)
        return dt.time(hour, minute, min(second, 59))
    except ValueError:
        found.append(f"{keyword} is not a DICOM time (HHMMSS); left empty")
        return None


def _require_uid(ds: Dataset, keyword: str, tag: str) -> str:
    value = str(ds.get(keyword, "") or "").strip().rstrip("\x00")
    if not value:
        raise DicomRejected(f"missing {keyword} {tag}")
    if len(value) > 64 or not _UID_PATTERN.match(value):
        raise DicomRejected(f"{keyword} {tag} {value[:80]!r} is not a valid UID (PS3.5 9.1)")
    return value


def _read_dataset(data: bytes) -> tuple[Dataset, list[str]]:
    found: list[str] = []
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError:
        # Files without the Part 10 preamble and File Meta still turn up from old
        # archives; read them only when they start with a plausible element tag.
        if len(data) < 8 or data[:2] not in (b"\x08\x00", b"\x02\x00", b"\x00\x08", b"\x00\x02"):
            raise DicomRejected("not a DICOM file (no 'DICM' prefix at byte 128)") from None
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
        except Exception as exc:
            raise DicomRejected(f"not a readable DICOM file ({exc})") from None
        found.append("no DICOM preamble or File Meta Information (PS3.10 7.1)")
    except EOFError as exc:
        raise DicomRejected(f"truncated: {exc}") from None
    except Exception as exc:
        raise DicomRejected(f"not a readable DICOM file ({type(exc).__name__}: {exc})") from None
    return ds, found


def _all_elements_read(ds: Dataset) -> None:
    """Convert every element now, so a value that runs past the end shows up here."""
    for elem in ds.iterall():
        _ = elem.value


def _expected_native_length(ds: Dataset) -> int:
    rows = int(ds.Rows)
    columns = int(ds.Columns)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    bits = int(ds.BitsAllocated)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    n_bits = rows * columns * samples * frames * bits
    return (n_bits + 7) // 8


def _check_pixel_data(ds: Dataset, transfer_syntax: UID | None) -> None:
    if "PixelData" not in ds:
        return
    for keyword in ("Rows", "Columns", "BitsAllocated"):
        if ds.get(keyword) in (None, ""):
            raise DicomRejected(f"Pixel Data present but {keyword} is missing")
    if transfer_syntax is not None and transfer_syntax.is_compressed:
        try:
            ds.pixel_array  # noqa: B018 - decoding is the check
        except Exception as exc:
            raise DicomRejected(
                f"compressed Pixel Data ({transfer_syntax.name}) cannot be decoded: {exc}"
            ) from None
        return
    expected = _expected_native_length(ds)
    actual = len(ds.PixelData)
    if actual < expected:
        raise DicomRejected(
            f"Pixel Data (7FE0,0010) holds {actual} bytes but Rows x Columns x Samples x "
            f"Bits Allocated x Frames needs {expected}: the file is truncated"
        )


def _check_geometry(ds: Dataset, sop_class_uid: str) -> None:
    if sop_class_uid in CROSS_SECTIONAL_CLASSES:
        needed = {
            "ImagePositionPatient": ("(0020,0032)", 3),
            "ImageOrientationPatient": ("(0020,0037)", 6),
            "PixelSpacing": ("(0028,0030)", 2),
        }
        for keyword, (tag, count) in needed.items():
            try:
                values = _floats(ds, keyword, count)
            except (TypeError, ValueError):
                values = None
            if values is None:
                raise DicomRejected(
                    f"missing or malformed geometry: {keyword} {tag} needs {count} numbers"
                )
        if "PixelData" not in ds:
            raise DicomRejected("an image without Pixel Data (7FE0,0010)")
    elif sop_class_uid in ENHANCED_CLASSES:
        shared = ds.get("SharedFunctionalGroupsSequence")
        per_frame = ds.get("PerFrameFunctionalGroupsSequence")
        if not per_frame:
            raise DicomRejected("enhanced image without Per-frame Functional Groups (5200,9230)")
        for keyword in (
            "PlanePositionSequence",
            "PlaneOrientationSequence",
            "PixelMeasuresSequence",
        ):
            in_shared = bool(shared) and keyword in shared[0]
            in_frames = all(keyword in item for item in per_frame)
            if not (in_shared or in_frames):
                raise DicomRejected(f"missing geometry: {keyword} in the functional groups")


def _enhanced_first(ds: Dataset, sequence: str, keyword: str):
    for groups in (
        ds.get("SharedFunctionalGroupsSequence"),
        ds.get("PerFrameFunctionalGroupsSequence"),
    ):
        if groups and sequence in groups[0] and groups[0][sequence]:
            return groups[0][sequence][0].get(keyword)
    return None


HeaderCache = dict[str, tuple[PatientAttributes, StudyAttributes, SeriesAttributes]]


@dataclass(frozen=True)
class _Identity:
    """The UIDs and Patient ID an instance must carry to be stored."""

    transfer_syntax: UID | None
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    patient_id: str


def instance_inspect(
    data: bytes, *, name: str = "", headers: HeaderCache | None = None
) -> InspectedInstance:
    """Decide whether ``data`` can be stored and return what the index keeps.

    Raises `DicomRejected` with the reason when it cannot. ``name`` is only used in
    messages. ``headers``, kept by the caller across the files of an import, holds
    each series' patient, study and series attributes so they are read once.
    """
    if not data:
        raise DicomRejected("empty file")
    # catch_warnings changes process-wide state: one inspection at a time, so that
    # concurrent associations and uploads each get their own warnings.
    with _WARNINGS_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds, found = _read_dataset(data)
        if "PixelData" not in ds:
            _check_elements(ds)
        identity = _identity(ds, found)
        _check_geometry(ds, identity.sop_class_uid)
        _check_pixel_data(ds, identity.transfer_syntax)
        position = _image_position(ds, identity.sop_class_uid)
        patient, study, series = _series_headers(ds, identity, headers, found)
        instance_number = _number(ds, "InstanceNumber", found, cast=int)
    found.extend(_warning_text(w) for w in caught)

    stored = preamble_zeroed(data)
    return InspectedInstance(
        data=stored,
        sha256=hashlib.sha256(stored).hexdigest(),
        dataset_sha256=hashlib.sha256(memoryview(stored)[dataset_offset(stored) :]).hexdigest(),
        sop_instance_uid=identity.sop_instance_uid,
        sop_class_uid=identity.sop_class_uid,
        transfer_syntax_uid=str(identity.transfer_syntax or ""),
        instance_number=instance_number,
        image_position=position,
        patient=patient,
        study=study,
        series=series,
        warnings=tuple(dict.fromkeys(found)),
    )


def _check_elements(ds: Dataset) -> None:
    """Without pixel data to check lengths against, a cut-short file shows only as an
    element whose value runs past the end: convert every one now. (Images are checked
    through their Pixel Data length instead, which is much cheaper than converting
    every element of every slice.)"""
    try:
        _all_elements_read(ds)
    except EOFError as exc:
        raise DicomRejected(f"truncated: {exc}") from None
    except Exception as exc:
        raise DicomRejected(f"an element cannot be read: {type(exc).__name__}: {exc}") from None


def _identity(ds: Dataset, found: list[str]) -> _Identity:
    """The SOP class (one RadTrack stores), the UIDs and the Patient ID, or rejection."""
    meta = getattr(ds, "file_meta", None)
    transfer_syntax = (
        UID(str(meta.TransferSyntaxUID)) if meta and "TransferSyntaxUID" in meta else None
    )
    sop_class_uid = _require_uid(ds, "SOPClassUID", "(0008,0016)")
    if sop_class_uid not in ACCEPTED_SOP_CLASSES:
        raise DicomRejected(
            f"SOP Class {UID(sop_class_uid).name} is not one RadTrack stores "
            f"(CT, MR, Segmentation and SR storage)"
        )
    sop_instance_uid = _require_uid(ds, "SOPInstanceUID", "(0008,0018)")
    study_uid = _require_uid(ds, "StudyInstanceUID", "(0020,000D)")
    series_uid = _require_uid(ds, "SeriesInstanceUID", "(0020,000E)")
    if meta is not None and meta.get("MediaStorageSOPInstanceUID") not in (
        None,
        "",
        sop_instance_uid,
    ):
        found.append("Media Storage SOP Instance UID (0002,0003) differs from SOP Instance UID")
    patient_id = _text(ds, "PatientID", found)
    if not patient_id:
        raise DicomRejected(
            "Patient ID (0010,0020) is empty: the study cannot be assigned to a patient"
        )
    if len(patient_id) > 64:
        raise DicomRejected("Patient ID (0010,0020) is longer than 64 characters")
    return _Identity(
        transfer_syntax, sop_class_uid, sop_instance_uid, study_uid, series_uid, patient_id
    )


def _image_position(ds: Dataset, sop_class_uid: str) -> tuple[float, ...] | None:
    position = _floats(ds, "ImagePositionPatient", 3)
    if sop_class_uid in ENHANCED_CLASSES:
        position = position or _tuple_or_none(
            _enhanced_first(ds, "PlanePositionSequence", "ImagePositionPatient"), 3
        )
    return position


def _series_headers(
    ds: Dataset, identity: _Identity, headers: HeaderCache | None, found: list[str]
) -> tuple[PatientAttributes, StudyAttributes, SeriesAttributes]:
    """Patient, study and series attributes are the same in every image of a series:
    read them once per series (kept in ``headers``), not once per slice."""
    cached = headers.get(identity.series_uid) if headers is not None else None
    if (
        cached
        and cached[0].patient_id == identity.patient_id
        and cached[1].study_instance_uid == identity.study_uid
    ):
        return cached
    attributes = _header_attributes(
        ds,
        identity.sop_class_uid,
        identity.patient_id,
        identity.study_uid,
        identity.series_uid,
        found,
    )
    if headers is not None:
        headers[identity.series_uid] = attributes
    return attributes


def _header_attributes(
    ds: Dataset,
    sop_class_uid: str,
    patient_id: str,
    study_uid: str,
    series_uid: str,
    found: list[str],
) -> tuple[PatientAttributes, StudyAttributes, SeriesAttributes]:
    """The attributes the index keeps about the patient, the study and the series."""
    orientation = _floats(ds, "ImageOrientationPatient", 6)
    spacing = _floats(ds, "PixelSpacing", 2)
    thickness = _number(ds, "SliceThickness", found)
    if sop_class_uid in ENHANCED_CLASSES:
        orientation = orientation or _tuple_or_none(
            _enhanced_first(ds, "PlaneOrientationSequence", "ImageOrientationPatient"), 6
        )
        spacing = spacing or _tuple_or_none(
            _enhanced_first(ds, "PixelMeasuresSequence", "PixelSpacing"), 2
        )
        thickness = thickness or _tuple_or_none(
            _enhanced_first(ds, "PixelMeasuresSequence", "SliceThickness"), 1, scalar=True
        )
    sex = _text(ds, "PatientSex", found).upper()[:1]
    if sex not in ("", "F", "M", "O"):
        found.append(f"Patient's Sex (0010,0040) {sex!r} is not F, M or O; left empty")
        sex = ""

    patient = PatientAttributes(
        patient_id=patient_id,
        name=_text(ds, "PatientName", found)[:255],
        birth_date=_date(ds, "PatientBirthDate", found),
        sex=sex,
    )
    study = StudyAttributes(
        study_instance_uid=study_uid,
        study_date=_date(ds, "StudyDate", found),
        study_time=_time(ds, "StudyTime", found),
        accession_number=_text(ds, "AccessionNumber", found)[:64],
        description=_text(ds, "StudyDescription", found)[:255],
    )
    series = SeriesAttributes(
        series_instance_uid=series_uid,
        modality=_text(ds, "Modality", found)[:16],
        series_number=_number(ds, "SeriesNumber", found, cast=int),
        description=_text(ds, "SeriesDescription", found)[:255],
        manufacturer=_text(ds, "Manufacturer", found)[:128],
        kernel=_text(ds, "ConvolutionKernel", found)[:128],
        body_part=_text(ds, "BodyPartExamined", found)[:64],
        rows=_number(ds, "Rows", found, cast=int),
        columns=_number(ds, "Columns", found, cast=int),
        pixel_spacing_row_mm=spacing[0] if spacing else None,
        pixel_spacing_column_mm=spacing[1] if spacing else None,
        slice_thickness_mm=thickness,
        image_orientation=orientation,
        patient_position=_text(ds, "PatientPosition", found)[:8],
        frame_of_reference_uid=_text(ds, "FrameOfReferenceUID", found)[:64],
    )
    return patient, study, series


def _tuple_or_none(value, count: int, *, scalar: bool = False):
    if value is None:
        return None
    try:
        values = tuple(
            float(v)
            for v in (
                value
                if isinstance(value, list | tuple)
                or hasattr(value, "__iter__")
                and not isinstance(value, str)
                else [value]
            )
        )
    except (TypeError, ValueError):
        return None
    if len(values) != count:
        return None
    return values[0] if scalar else values


_QUOTED = re.compile(r"('[^']*'|\"[^\"]*\")")


def _warning_text(w: warnings.WarningMessage) -> str:
    """pydicom's warning without the quoted values, which may be patient data."""
    return _QUOTED.sub("'…'", str(w.message).splitlines()[0])[:300]
