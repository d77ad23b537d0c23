"""Check one received DICOM file and pull out what the index needs, without Django.

`instance_inspect` decides whether a file can be stored: it must be a DICOM object of
a storage class RadTrack keeps (CT, MR, SEG, SR), carry the identifying UIDs, and for
images the geometry and complete pixel data. Slightly non-conformant files that read
safely are accepted and their problems returned as warnings. The bytes to store are the
original bytes with the 128-byte preamble zeroed (PS3.10 7.1; CVE-2019-11687, where a
preamble can make a DICOM file a valid executable too). Every text value handed to the
index is cleaned of what a database cannot keep (`text_clean`), and expansion is bounded:
a deflated data set or compressed pixels are never expanded past ``max_decoded_bytes``.
"""

from __future__ import annotations

import datetime as dt
import io
import mmap
import os
import re
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from imaging.core.dicom.inspect_fast import plain_image_read
from imaging.core.dicom.inspect_values import (
    date_read,
    floats_parse,
    floats_read,
    group_value_read,
    items_read,
    number_read,
    text_clean,
    text_read,
    text_read_raw,
    time_read,
    warning_clean,
)
from imaging.core.dicom.part10 import (
    PREAMBLE_LENGTH,
    DicomRejected,
    buffer_hashes,
    dataset_offset,
    inflated_size_check,
    meta_walk,
    preamble_zeroed,
)

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
_PIXEL_DATA = 0x7FE00010

_UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


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


def _uid_checked(value: str, keyword: str, tag: str) -> str:
    if not value:
        raise DicomRejected(f"missing {keyword} {tag}")
    if len(value) > 64 or not _UID_PATTERN.match(value):
        raise DicomRejected(f"{keyword} {tag} {value[:80]!r} is not a valid UID (PS3.5 9.1)")
    return value


def _require_uid(ds: Dataset, keyword: str, tag: str) -> str:
    try:
        value = str(ds.get(keyword, "") or "").strip().rstrip("\x00")
    except Exception as exc:
        raise DicomRejected(f"{keyword} {tag} cannot be read ({type(exc).__name__})") from None
    return _uid_checked(value, keyword, tag)


# -- reading, with expansion bounded ------------------------------------------------------
#: Values longer than this are left in the file when inspecting a file on disk (the
#: pixels): read when a check needs them, never for a native image.
_DEFER_BYTES = 1 << 16


def _read_dataset(
    data: bytes, max_decoded_bytes: int | None, path: Path | None = None
) -> tuple[Dataset, list[str]]:
    """The data set of ``data``, or of the file at ``path`` (``data`` then holds its
    first bytes, and large values stay in the file)."""
    found: list[str] = []
    offset, syntax = meta_walk(data)
    if syntax:
        _uid_checked(syntax, "TransferSyntaxUID", "(0002,0010)")
        if UID(syntax).is_transfer_syntax and UID(syntax).is_deflated:
            if path is not None:
                data, path = path.read_bytes(), None
            inflated_size_check(data, offset, max_decoded_bytes)
    source = io.BytesIO(data) if path is None else path
    defer = None if path is None else _DEFER_BYTES
    try:
        ds = pydicom.dcmread(source, defer_size=defer)
    except InvalidDicomError:
        # Files without the Part 10 preamble and File Meta still turn up from old
        # archives; read them only when they start with a plausible element tag.
        if len(data) < 8 or data[:2] not in (b"\x08\x00", b"\x02\x00", b"\x00\x08", b"\x00\x02"):
            raise DicomRejected("not a DICOM file (no 'DICM' prefix at byte 128)") from None
        try:
            ds = pydicom.dcmread(
                io.BytesIO(data) if path is None else path, force=True, defer_size=defer
            )
        except Exception as exc:
            raise DicomRejected(f"not a readable DICOM file ({type(exc).__name__})") from None
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
    """Bytes of the decoded pixels: Rows x Columns x Samples x Bits Allocated x Frames."""
    try:
        rows = int(ds.Rows)
        columns = int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.BitsAllocated)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except Exception as exc:
        raise DicomRejected(
            f"the Image Pixel module cannot be read ({type(exc).__name__})"
        ) from None
    if min(rows, columns, samples, bits, frames) < 1:
        raise DicomRejected(
            "Rows, Columns, Samples per Pixel, Bits Allocated and Number of Frames must be "
            "positive numbers"
        )
    return (rows * columns * samples * frames * bits + 7) // 8


def _check_pixel_data(
    ds: Dataset, transfer_syntax: UID | None, max_decoded_bytes: int | None
) -> None:
    """Pixel Data complete (native) or decodable (compressed), and not larger decoded
    than ``max_decoded_bytes``; compressed frames are decoded one at a time."""
    if "PixelData" not in ds:
        return
    for keyword in ("Rows", "Columns", "BitsAllocated"):
        if ds.get(keyword) in (None, ""):
            raise DicomRejected(f"Pixel Data present but {keyword} is missing")
    expected = _expected_native_length(ds)
    if max_decoded_bytes is not None and expected > max_decoded_bytes:
        raise DicomRejected(
            f"its pixels decode to {expected / 2**20:.0f} MB, over the limit of "
            f"{max_decoded_bytes / 2**20:.0f} MB per instance (RADTRACK_MAX_DECODED_MB)"
        )
    if transfer_syntax is not None and transfer_syntax.is_compressed:
        try:
            for _ in get_decoder(transfer_syntax).iter_array(ds, raw=True):
                pass  # decoding is the check; one frame in memory at a time
        except Exception as exc:
            raise DicomRejected(
                f"compressed Pixel Data ({transfer_syntax.name}) cannot be decoded: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        return
    actual = _native_length(ds)
    if actual < expected:
        raise DicomRejected(
            f"Pixel Data (7FE0,0010) holds {actual} bytes but Rows x Columns x Samples x "
            f"Bits Allocated x Frames needs {expected}: the file is truncated"
        )


def _native_length(ds: Dataset) -> int:
    """Bytes of native Pixel Data the file holds; for a value left in the file, its
    declared length as far as the file reaches, without reading it."""
    # keep_deferred: without it pydicom reads a deferred value whole to return it.
    raw = ds.get_item(_PIXEL_DATA, keep_deferred=True)
    if not isinstance(raw, RawDataElement) or raw.value is not None or not ds.filename:
        return len(ds.PixelData)
    available = Path(ds.filename).stat().st_size - raw.value_tell
    return max(min(raw.length, available), 0)


def _check_geometry(ds: Dataset, sop_class_uid: str) -> None:
    if sop_class_uid in CROSS_SECTIONAL_CLASSES:
        needed = {
            "ImagePositionPatient": ("(0020,0032)", 3),
            "ImageOrientationPatient": ("(0020,0037)", 6),
            "PixelSpacing": ("(0028,0030)", 2),
        }
        for keyword, (tag, count) in needed.items():
            if floats_read(ds, keyword, count) is None:
                raise DicomRejected(
                    f"missing or malformed geometry: {keyword} {tag} needs {count} numbers"
                )
        if "PixelData" not in ds:
            raise DicomRejected("an image without Pixel Data (7FE0,0010)")
    elif sop_class_uid in ENHANCED_CLASSES:
        shared = items_read(ds, "SharedFunctionalGroupsSequence")
        per_frame = items_read(ds, "PerFrameFunctionalGroupsSequence")
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
    data: bytes, *, headers: HeaderCache | None = None, max_decoded_bytes: int | None = None
) -> InspectedInstance:
    """Decide whether ``data`` can be stored and return what the index keeps.

    Raises `DicomRejected` with the reason when it cannot; any other failure to read the
    file is turned into one too, so a malformed file is always refused with a reason.
    ``headers``, kept by the caller across the files of an import, holds each series'
    patient, study and series attributes so they are read once. ``max_decoded_bytes``
    bounds what the file may expand to (deflated data set, decoded pixels).
    """
    if not data:
        raise DicomRejected("empty file")
    stored = preamble_zeroed(data)
    offset, checked = _quick(stored, headers, max_decoded_bytes)
    if checked is None:
        checked = _checked(data, headers, max_decoded_bytes)
        offset = dataset_offset(stored)
    return _inspected(stored, buffer_hashes(stored, offset), *checked)


def _quick(buffer, headers: HeaderCache | None, max_decoded_bytes: int | None):
    """(data set offset, what `_checked` returns) for a plain image of a series whose
    header is already read (`plain_image_read`); (0, None) for pydicom's path."""
    plain = plain_image_read(buffer, CROSS_SECTIONAL_CLASSES) if headers else None
    if plain is None or headers is None:
        return 0, None
    cached = headers.get(plain.series_instance_uid)
    if (
        not cached
        or cached[0].patient_id != plain.patient_id
        or cached[1].study_instance_uid != plain.study_instance_uid
        or (max_decoded_bytes is not None and plain.pixel_bytes_needed > max_decoded_bytes)
    ):
        return 0, None
    identity = _Identity(
        UID(plain.transfer_syntax_uid),
        plain.sop_class_uid,
        plain.sop_instance_uid,
        plain.study_instance_uid,
        plain.series_instance_uid,
        plain.patient_id,
    )
    return plain.dataset_offset, (identity, plain.image_position, cached, plain.instance_number, [])


def instance_inspect_file(
    path: Path, *, headers: HeaderCache | None = None, max_decoded_bytes: int | None = None
) -> InspectedInstance:
    """`instance_inspect` for a file on disk that is already exactly what is to be
    stored (its preamble zeroed), and that nothing else writes meanwhile: it is mapped
    into memory, its header parsed, its pixels left where they are unless compressed
    (then decoded frame by frame), and both hashes taken from the mapping without a
    copy. ``data`` is left empty; ``size_bytes`` on the caller."""
    with open(path, "rb") as handle:
        if not os.fstat(handle.fileno()).st_size:
            raise DicomRejected("empty file")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            head = mapped[:_DEFER_BYTES]
            if head[:PREAMBLE_LENGTH].count(0) != PREAMBLE_LENGTH and head[128:132] == b"DICM":
                raise DicomRejected("its preamble is not zeroed (PS3.10 7.1)")
            offset, checked = _quick(mapped, headers, max_decoded_bytes)
            if checked is None:
                checked = _checked(head, headers, max_decoded_bytes, path)
                offset = dataset_offset(head)
            return _inspected(b"", buffer_hashes(mapped, offset), *checked)


def _checked(data: bytes, headers: HeaderCache | None, max_decoded_bytes: int | None, path=None):
    """Every check, under one lock: catch_warnings changes process-wide state, so one
    inspection at a time lets concurrent associations and uploads each get their own
    warnings."""
    with _WARNINGS_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            inspected = _inspect(data, headers, max_decoded_bytes, path)
        except DicomRejected:
            raise
        except Exception as exc:  # a malformed value in a place no check foresaw
            raise DicomRejected(
                f"an element cannot be read ({type(exc).__name__}: {text_clean(str(exc))[:200]})"
            ) from None
    inspected[-1].extend(warning_clean(w) for w in caught)
    return inspected


def _inspected(
    stored: bytes, hashes, identity, position, attributes, instance_number, found
) -> InspectedInstance:
    patient, study, series = attributes
    return InspectedInstance(
        data=stored,
        sha256=hashes[0],
        dataset_sha256=hashes[1],
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


def _inspect(data: bytes, headers: HeaderCache | None, max_decoded_bytes: int | None, path=None):
    ds, found = _read_dataset(data, max_decoded_bytes, path)
    if "PixelData" not in ds:
        _check_elements(ds)
    identity = _identity(ds, found)
    _check_geometry(ds, identity.sop_class_uid)
    _check_pixel_data(ds, identity.transfer_syntax, max_decoded_bytes)
    position = _image_position(ds, identity.sop_class_uid, found)
    attributes = _series_headers(ds, identity, headers, found)
    instance_number = number_read(ds, "InstanceNumber", found, cast=int)
    return identity, position, attributes, instance_number, found


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
        raise DicomRejected(f"an element cannot be read: {type(exc).__name__}") from None


def _identity(ds: Dataset, found: list[str]) -> _Identity:
    """The SOP class (one RadTrack stores), the UIDs and the Patient ID, or rejection."""
    meta = getattr(ds, "file_meta", None)
    transfer_syntax = (
        UID(str(meta.TransferSyntaxUID)) if meta and "TransferSyntaxUID" in meta else None
    )
    if transfer_syntax is not None and not transfer_syntax.is_transfer_syntax:
        raise DicomRejected(
            f"Transfer Syntax UID (0002,0010) {text_clean(transfer_syntax)[:64]!r} is not "
            "a transfer syntax RadTrack can read"
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
    return _Identity(
        transfer_syntax,
        sop_class_uid,
        sop_instance_uid,
        study_uid,
        series_uid,
        _patient_id(ds, found),
    )


def _patient_id(ds: Dataset, found: list[str]) -> str:
    """The Patient ID exactly as sent: it files the study, so it is refused, never
    cleaned, when it holds what a database cannot keep."""
    patient_id = text_read_raw(ds, "PatientID", found).strip()
    if not patient_id:
        raise DicomRejected(
            "Patient ID (0010,0020) is empty: the study cannot be assigned to a patient"
        )
    if text_clean(patient_id) != patient_id:
        raise DicomRejected(
            "Patient ID (0010,0020) holds control characters (such as NUL): the study "
            "cannot be assigned to a patient safely"
        )
    if len(patient_id) > 64:
        raise DicomRejected("Patient ID (0010,0020) is longer than 64 characters")
    return patient_id


def _image_position(ds: Dataset, sop_class_uid: str, found: list[str]) -> tuple[float, ...] | None:
    position = floats_read(ds, "ImagePositionPatient", 3, found)
    if sop_class_uid in ENHANCED_CLASSES:
        position = position or floats_parse(
            group_value_read(ds, "PlanePositionSequence", "ImagePositionPatient"), 3
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
    attributes = _header_attributes(ds, identity, found)
    if headers is not None:
        headers[identity.series_uid] = attributes
    return attributes


def _enhanced_geometry(ds: Dataset, orientation, spacing, thickness):
    """Orientation, spacing and thickness from the functional groups when the top level
    has none (enhanced CT and MR)."""
    orientation = orientation or floats_parse(
        group_value_read(ds, "PlaneOrientationSequence", "ImageOrientationPatient"), 6
    )
    spacing = spacing or floats_parse(
        group_value_read(ds, "PixelMeasuresSequence", "PixelSpacing"), 2
    )
    if thickness is None:
        value = floats_parse(group_value_read(ds, "PixelMeasuresSequence", "SliceThickness"), 1)
        thickness = value[0] if value else None
    return orientation, spacing, thickness


def _header_attributes(
    ds: Dataset, identity: _Identity, found: list[str]
) -> tuple[PatientAttributes, StudyAttributes, SeriesAttributes]:
    """The attributes the index keeps about the patient, the study and the series."""
    orientation = floats_read(ds, "ImageOrientationPatient", 6, found)
    spacing = floats_read(ds, "PixelSpacing", 2, found)
    thickness = number_read(ds, "SliceThickness", found)
    if identity.sop_class_uid in ENHANCED_CLASSES:
        orientation, spacing, thickness = _enhanced_geometry(ds, orientation, spacing, thickness)
    sex = text_read(ds, "PatientSex", found).upper()[:1]
    if sex not in ("", "F", "M", "O"):
        found.append("Patient's Sex (0010,0040) is not F, M or O; left empty")
        sex = ""

    patient = PatientAttributes(
        patient_id=identity.patient_id,
        name=text_read(ds, "PatientName", found)[:255],
        birth_date=date_read(ds, "PatientBirthDate", found),
        sex=sex,
    )
    study = StudyAttributes(
        study_instance_uid=identity.study_uid,
        study_date=date_read(ds, "StudyDate", found),
        study_time=time_read(ds, "StudyTime", found),
        accession_number=text_read(ds, "AccessionNumber", found)[:64],
        description=text_read(ds, "StudyDescription", found)[:255],
    )
    series = SeriesAttributes(
        series_instance_uid=identity.series_uid,
        modality=text_read(ds, "Modality", found)[:16],
        series_number=number_read(ds, "SeriesNumber", found, cast=int),
        description=text_read(ds, "SeriesDescription", found)[:255],
        manufacturer=text_read(ds, "Manufacturer", found)[:128],
        kernel=text_read(ds, "ConvolutionKernel", found)[:128],
        body_part=text_read(ds, "BodyPartExamined", found)[:64],
        rows=number_read(ds, "Rows", found, cast=int),
        columns=number_read(ds, "Columns", found, cast=int),
        pixel_spacing_row_mm=spacing[0] if spacing else None,
        pixel_spacing_column_mm=spacing[1] if spacing else None,
        slice_thickness_mm=thickness,
        image_orientation=orientation,
        patient_position=text_read(ds, "PatientPosition", found)[:8],
        frame_of_reference_uid=text_read(ds, "FrameOfReferenceUID", found)[:64],
    )
    return patient, study, series
