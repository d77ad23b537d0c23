"""Decompression is bounded: a zip of zeros, a zip whose header under-declares its size,
an RLE file and a deflated data set that decode to far more than their size are each
refused with a reason, while the memory the import holds stays small (traced with
tracemalloc, which sees every buffer Python and NumPy allocate)."""

from __future__ import annotations

import io
import struct
import time
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import pydicom
import pytest
from django.test import RequestFactory
from pydicom.encaps import encapsulate
from pydicom.uid import DeflatedExplicitVRLittleEndian, RLELossless

from imaging.ingest.api import InstancesView
from imaging.ingest.service import ingest_paths
from imaging.models import Instance
from radtrack.api.tokens import api_token_issue
from tests.imaging.factories import ct_files
from tests.patients.factories import UserFactory

pytestmark = pytest.mark.django_db

MB = 2**20
GiB = 2**30


class _Peak:
    """The most memory Python held while the block ran, above what it held before."""

    def __enter__(self):
        tracemalloc.start()
        tracemalloc.reset_peak()
        self.base = tracemalloc.get_traced_memory()[0]
        self.started = time.monotonic()
        return self

    def __exit__(self, *exc):
        self.bytes = tracemalloc.get_traced_memory()[1] - self.base
        self.seconds = time.monotonic() - self.started
        tracemalloc.stop()


@pytest.fixture(scope="module")
def zeros_zip(tmp_path_factory) -> Path:
    """1 GiB of zeros in about 1 MB of zip, written once for the module."""
    path = tmp_path_factory.mktemp("bomb") / "zeros.zip"
    chunk = bytes(16 * MB)
    with (
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive,
        archive.open("IM000001.dcm", "w", force_zip64=True) as entry,
    ):
        for _ in range(GiB // len(chunk)):
            entry.write(chunk)
    assert path.stat().st_size < 2 * MB
    return path


def _api(client):
    user = UserFactory(groups=["radiologist"])
    return {"HTTP_AUTHORIZATION": f"Token {api_token_issue(user=user)}"}


class _Answer:
    def __init__(self, response):
        self.status_code = response.status_code
        self._data = response.data

    def json(self):
        return self._data


def _post_zip(client, path: Path, auth: dict, peak: _Peak | None = None) -> _Answer:
    """POST ``path`` to /api/v1/instances/; only the server's work is inside ``peak``
    (building the multipart body is the test client's, and slow under tracemalloc)."""
    with open(path, "rb") as handle:
        request = RequestFactory().post("/api/v1/instances/", {"file": [handle]}, **auth)
    view = InstancesView.as_view()
    if peak is None:
        return _Answer(view(request))
    with peak:
        return _Answer(view(request))


def test_a_gibibyte_of_zeros_in_a_zip_is_refused_without_expanding_it(client, zeros_zip):
    auth = _api(client)
    response = _post_zip(client, zeros_zip, auth, peak := _Peak())

    assert response.status_code == 400
    (entry,) = response.json()["files"]
    assert entry["status"] == "rejected"
    assert "zip bomb" in entry["reason"] and "RADTRACK_ZIP_MAX_RATIO" in entry["reason"]
    assert peak.bytes < 64 * MB, f"{peak.bytes / MB:.0f} MB held"
    assert peak.seconds < 20


def _under_declared(source: bytes, name: str, declared: int) -> bytes:
    """A zip of ``source`` whose local and central headers claim ``declared`` bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, source)
    data = bytearray(buffer.getvalue())
    real = struct.pack("<I", len(source))
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.index(signature)
        assert data[at + offset : at + offset + 4] == real
        data[at + offset : at + offset + 4] = struct.pack("<I", declared)
    return bytes(data)


def test_a_zip_that_under_declares_its_size_is_refused_as_soon_as_it_passes_it(
    client, tmp_path, settings
):
    settings.RADTRACK_MAX_UPLOAD_BYTES = 8 * MB  # the header says 1000 bytes: it "fits"
    archive = tmp_path / "liar.zip"
    archive.write_bytes(_under_declared(bytes(256 * MB), "IM000001.dcm", 1000))
    auth = _api(client)
    response = _post_zip(client, archive, auth, peak := _Peak())

    assert response.status_code == 400
    reason = response.json()["files"][0]["reason"]
    assert "expands past the 1000 bytes its header declares" in reason
    assert peak.bytes < 16 * MB, f"{peak.bytes / MB:.0f} MB held"


def test_the_folder_path_reads_zips_under_the_same_bounds(tmp_path, zeros_zip):
    with _Peak() as peak:
        _, (outcome,) = ingest_paths(paths=[zeros_zip], process=False)
    assert outcome.status == "rejected" and "zip bomb" in outcome.reason
    assert peak.bytes < 64 * MB


def test_total_expansion_and_entry_count_per_upload_are_capped(client, tmp_path, settings):
    files = ct_files(tmp_path / "s", key="cap", slices=3, size=64)
    archive = tmp_path / "three.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in files:
            zf.write(f, f.name)
    auth = _api(client)
    settings.RADTRACK_ZIP_MAX_EXPANDED_BYTES = int(files[0].stat().st_size * 2.5)
    by_status = {}
    for entry in _post_zip(client, archive, auth).json()["files"]:
        by_status.setdefault(entry["status"], []).append(entry["reason"])
    assert len(by_status["stored"]) == 2
    assert "RADTRACK_ZIP_MAX_EXPANDED_MB" in by_status["rejected"][0]

    settings.RADTRACK_ZIP_MAX_EXPANDED_BYTES = 8 * GiB
    settings.RADTRACK_ZIP_MAX_ENTRIES = 2
    (entry,) = _post_zip(client, archive, auth).json()["files"]
    assert entry["status"] == "rejected" and "RADTRACK_ZIP_MAX_ENTRIES" in entry["reason"]


def _rle_constant_frame(rows: int, columns: int) -> bytes:
    """One 16-bit frame of a constant value, RLE encoded (PS3.5 Annex G): two segments
    (high and low bytes), each runs of 128 equal bytes written as two bytes."""
    runs = rows * columns // 128
    segment = b"\x81\x00" * runs
    header = struct.pack("<16I", 2, 64, 64 + len(segment), *([0] * 13))
    return header + segment + segment


def _rle_series_file(tmp_path: Path, frames: int, size: int = 512) -> Path:
    (path,) = ct_files(tmp_path / "base", key=f"rle-{frames}", slices=1, size=16)
    ds = pydicom.dcmread(path)
    ds.Rows = ds.Columns = size
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.NumberOfFrames = frames
    ds.PixelData = encapsulate([_rle_constant_frame(size, size)] * frames)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = RLELossless
    out = tmp_path / f"rle-{frames}.dcm"
    ds.save_as(out, enforce_file_format=True)
    return out


def test_an_rle_file_that_decodes_to_a_gibibyte_is_refused_before_decoding(tmp_path):
    path = _rle_series_file(tmp_path, frames=2048)  # 1 GiB of pixels in about 17 MB
    assert path.stat().st_size < 20 * MB
    with _Peak() as peak:
        _, (outcome,) = ingest_paths(paths=[path], process=False)

    assert outcome.status == "rejected"
    assert "decode to 1024 MB, over the limit of 512 MB" in outcome.reason
    assert "RADTRACK_MAX_DECODED_MB" in outcome.reason
    assert peak.bytes < 3 * path.stat().st_size
    assert peak.seconds < 20


def test_compressed_frames_under_the_limit_are_decoded_one_at_a_time(tmp_path, settings):
    path = _rle_series_file(tmp_path, frames=160)  # 80 MB of pixels in about 1.3 MB
    settings.RADTRACK_MAX_DECODED_BYTES = 64 * MB
    _, (refused,) = ingest_paths(paths=[path], process=False)
    assert refused.status == "rejected" and "over the limit of 64 MB" in refused.reason

    settings.RADTRACK_MAX_DECODED_BYTES = 128 * MB
    with _Peak() as peak:
        _, (stored,) = ingest_paths(paths=[path], process=False)
    assert stored.status == "stored", stored.reason
    assert peak.bytes < 24 * MB, f"{peak.bytes / MB:.0f} MB held for 80 MB of pixels"
    assert Instance.objects.count() == 1


def test_a_deflated_data_set_that_inflates_past_the_limit_is_refused(tmp_path, settings):
    (path,) = ct_files(tmp_path / "s", key="deflate", slices=1, size=16)
    ds = pydicom.dcmread(path)
    ds.add_new(0x00091010, "OB", bytes(64 * MB))  # a private element of zeros
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    out = tmp_path / "deflated.dcm"
    ds.save_as(out, enforce_file_format=True)
    assert out.stat().st_size < MB
    settings.RADTRACK_MAX_DECODED_BYTES = 16 * MB

    with _Peak() as peak:
        _, (outcome,) = ingest_paths(paths=[out], process=False)

    assert outcome.status == "rejected"
    assert "inflates to more than 16 MB" in outcome.reason
    assert peak.bytes < 8 * MB


def test_a_corrupt_deflate_stream_is_refused_with_a_reason(tmp_path):
    (path,) = ct_files(tmp_path / "s", key="deflate-bad", slices=1, size=16)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    out = tmp_path / "deflated.dcm"
    ds.save_as(out, enforce_file_format=True)
    data = bytearray(out.read_bytes())
    data[-40:] = b"\xff" * 40
    out.write_bytes(bytes(data))
    _, (outcome,) = ingest_paths(paths=[out], process=False)
    assert outcome.status == "rejected" and outcome.reason


def test_zlib_is_what_the_archives_use():
    """The bomb fixture is deflate (the method every zip tool writes), not stored."""
    assert zipfile.ZIP_DEFLATED == 8 and zlib.MAX_WBITS == 15
