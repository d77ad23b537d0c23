"""A bounded fuzz of `instance_inspect` (Hypothesis, a few thousand inputs, fixed seed):
every input is either accepted with values a database can keep, or refused with a
reason; nothing else escapes. Then a few hundred of the same inputs through the ingest
service: each stored or refused with a reason, and the session done.

Inputs: a CT, a SEG and an SR whose text, number and geometry values are replaced by
arbitrary bytes (NUL, control characters, bytes that are not UTF-8, malformed decimal
strings), and CT files with bytes flipped, inserted or cut.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import math

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from imaging.core.dicom.inspect import DicomRejected, InspectedInstance, instance_inspect
from imaging.ingest.service import IngestRun
from imaging.ingest.sources import IngestSource
from imaging.models import IngestSession
from tests.imaging.factories import ct_files
from tests.logs import no_traceback_logged

FUZZ = settings(
    max_examples=1500,
    deadline=None,
    derandomize=True,  # the same inputs on every run: a failure is reproducible
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

#: Elements whose values are replaced, each written first with a valid placeholder that
#: occurs once in the file (its width is the width of the fuzzed value).
FIELDS: dict[str, str] = {
    "PatientID": "ZPATIENTID000001",
    "PatientName": "ZNAME^ZZZZZZZZZZZZZZZ002",
    "PatientBirthDate": "19000103",
    "PatientSex": "ZSEXZZZZZZZZZZ04",
    "StudyDescription": "ZSTUDYDESCRIPTION0000005",
    "SeriesDescription": "ZSERIESDESCRIPTION000006",
    "AccessionNumber": "ZACCESSION000007",
    "Manufacturer": "ZMANUFACTURER008",
    "Modality": "ZMODALITYZZZZ009",
    "StudyDate": "19000110",
    "StudyTime": "235959.000011",
    "SeriesNumber": "000000000012",
    "InstanceNumber": "000000000013",
    "SliceThickness": "0.00000000000014",
    "ImagePositionPatient": "0.00000000000151\\0.00000000000152\\0.00000000000153",
    "ImageOrientationPatient": "0.00000000000161\\0.00000000000162\\0.00000000000163\\"
    "0.00000000000164\\0.00000000000165\\0.00000000000166",
    "PixelSpacing": "0.00000000000171\\0.00000000000172",
}


def _fill(ds: Dataset) -> Dataset:
    for keyword, placeholder in FIELDS.items():
        setattr(ds, keyword, placeholder)
    return ds


def _encoded(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _non_image(sop_class: str) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[sop_class])
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[sop_class, "series"])
    if sop_class.endswith("66.4"):  # a segmentation: a small bitmap frame
        ds.Rows = ds.Columns = 8
        ds.BitsAllocated, ds.SamplesPerPixel, ds.NumberOfFrames = 1, 1, 1
        ds.PixelData = bytes(8)
    _fill(ds)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return _encoded(ds)


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, bytes]:
    (ct,) = ct_files(tmp_path_factory.mktemp("fuzz"), key="fuzz", slices=1, size=16)
    ds = pydicom.dcmread(ct)
    for keyword in FIELDS:
        if keyword in ds:
            del ds[keyword]
    return {
        "ct": _encoded(_fill(ds)),
        "seg": _non_image("1.2.840.10008.5.1.4.1.1.66.4"),
        "sr": _non_image("1.2.840.10008.5.1.4.1.1.88.33"),
    }


_value_bytes = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=32).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.lists(
        st.one_of(
            st.floats(allow_nan=True, allow_infinity=True).map(repr),
            st.sampled_from(["", " ", "1e999", "-0", "1,5", "abc", "\x00", "1..2", "+"]),
        ),
        max_size=8,
    ).map(lambda parts: "\\".join(parts).encode("latin-1", "replace")),
)


def _replaced(base: bytes, values: dict[int, bytes]) -> bytes:
    """``base`` with each field's placeholder replaced by a value of the same width."""
    data = base
    for n, value in values.items():
        placeholder = list(FIELDS.values())[n].encode()
        assert data.count(placeholder) == 1
        data = data.replace(placeholder, value[: len(placeholder)].ljust(len(placeholder), b" "))
    return data


fuzzed_values = st.tuples(
    st.sampled_from(["ct", "seg", "sr"]),
    st.dictionaries(st.integers(0, len(FIELDS) - 1), _value_bytes, max_size=6),
)
mutations = st.lists(
    st.tuples(st.sampled_from(["flip", "insert", "cut"]), st.floats(0, 1), st.binary(max_size=6)),
    min_size=1,
    max_size=4,
)


def _mutated(base: bytes, edits) -> bytes:
    data = bytearray(base)
    for kind, where, payload in edits:
        at = int(where * max(len(data) - 1, 0))
        if kind == "flip" and data:
            data[at] ^= payload[0] if payload else 0xFF
        elif kind == "insert":
            data[at:at] = payload
        else:
            del data[at : at + (len(payload) or 1) * 37]
    return bytes(data)


def _database_safe(item: InspectedInstance) -> None:
    """Every value the index would keep is one PostgreSQL accepts."""
    texts = [
        item.patient.patient_id,
        item.patient.name,
        item.patient.sex,
        item.study.accession_number,
        item.study.description,
        *(getattr(item.series, f) for f in ("modality", "description", "manufacturer")),
        *(getattr(item.series, f) for f in ("kernel", "body_part", "patient_position")),
        item.series.frame_of_reference_uid,
        item.transfer_syntax_uid,
        *item.warnings,
    ]
    for text in texts:
        assert "\x00" not in text
        text.encode("utf-8")  # no lone surrogates
    for number in (item.instance_number, item.series.series_number):
        assert number is None or -(2**31) <= number < 2**31
    floats = [
        *(item.image_position or ()),
        *(item.series.image_orientation or ()),
        item.series.pixel_spacing_row_mm,
        item.series.slice_thickness_mm,
    ]
    assert all(f is None or math.isfinite(f) for f in floats)
    json.dumps([item.image_position, item.series.image_orientation], allow_nan=False)
    for day in (item.patient.birth_date, item.study.study_date):
        assert day is None or isinstance(day, dt.date)


def _inspect_or_refuse(data: bytes) -> InspectedInstance | None:
    try:
        with no_traceback_logged():
            item = instance_inspect(data, headers={}, max_decoded_bytes=64 * 2**20)
    except DicomRejected as exc:
        assert str(exc).strip(), "refused without a reason"
        assert "\x00" not in str(exc)
        return None
    _database_safe(item)
    return item


@FUZZ
@given(case=fuzzed_values)
def test_fuzzed_values_are_accepted_safely_or_refused_with_a_reason(bases, case):
    base, values = case
    _inspect_or_refuse(_replaced(bases[base], values))


@FUZZ
@given(edits=mutations)
def test_mutated_files_are_accepted_safely_or_refused_with_a_reason(bases, edits):
    _inspect_or_refuse(_mutated(bases["ct"], edits))


@pytest.mark.parametrize("base", ["seg", "sr"])
@pytest.mark.parametrize(
    "geometry", [b"1\\2\\abc", b"abc", b"1\\\\2\\3", b"1e999\\0\\0", b"nan\\1\\2", b"\x00"]
)
def test_malformed_geometry_on_a_seg_or_sr_is_a_warning_never_an_error(bases, base, geometry):
    """Was a bare ValueError: `_floats` fell back to reading the value character by
    character."""
    n = list(FIELDS).index("ImagePositionPatient")
    item = _inspect_or_refuse(_replaced(bases[base], {n: geometry}))
    assert item is not None
    assert item.image_position is None
    if geometry.strip(b"\x00 "):  # a value, not padding: said so
        assert any("ImagePositionPatient" in w for w in item.warnings)


@pytest.mark.django_db
@settings(FUZZ, max_examples=300)
@given(case=fuzzed_values, edits=st.one_of(st.none(), mutations))
def test_fuzzed_files_through_the_ingest_service_are_stored_or_refused(bases, case, edits):
    base, values = case
    data = _replaced(bases[base], values)
    if edits is not None:
        data = _mutated(data, edits)
    with no_traceback_logged():
        run = IngestRun(source=IngestSession.Source.FOLDER, process=False)
        (outcome,) = run.add([IngestSource("fuzz.dcm", lambda: data, len(data))])
        session = run.finish()

    assert outcome.status in {"stored", "duplicate", "conflict", "rejected"}
    assert outcome.status == "stored" or outcome.reason
    assert session.status == IngestSession.Status.DONE
    assert session.files_seen == 1
