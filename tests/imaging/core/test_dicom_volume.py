"""DICOM series -> Volume: geometry round trips, ordering, and every detection.

Fixtures are real DICOM files written by the project's own writer
(`imaging.core.dicom_write`); geometries it does not produce (tilt, gaps, localizers,
rescale slope) are written slice by slice with explicit positions, or edited with
pydicom afterwards. Pixel values come from a linear field of the true LPS position,
so any interpolation on the right geometry reproduces the field exactly.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import EnhancedCTImageStorage, JPEG2000Lossless, JPEGLSLossless, RLELossless

from imaging.core.dicom.slice_geometry import GeometryLimits
from imaging.core.dicom.slices import SeriesGeometryError, SeriesVolumeError
from imaging.core.dicom.volume import series_summary, series_volume
from imaging.core.dicom.write import (
    CTSeriesAttributes,
    ct_series_write,
    ct_slice_dataset,
    synthetic_uid,
)
from imaging.core.geometry.volume import Volume

# Image Orientation (Patient) for the four standard patient positions (row, column cosines).
IOP = {
    "HFS": ((1, 0, 0), (0, 1, 0)),
    "FFS": ((-1, 0, 0), (0, 1, 0)),
    "HFP": ((-1, 0, 0), (0, -1, 0)),
    "FFP": ((1, 0, 0), (0, -1, 0)),
}
SHAPE_KJI = (12, 28, 32)
SPACING = (0.8, 0.9, 2.5)  # (i, j, k) mm


def direction_for(row, column) -> np.ndarray:
    r, c = np.asarray(row, float), np.asarray(column, float)
    return np.column_stack([r, c, np.cross(r, c)])


def attrs(series_uid: str | None = None, **kwargs) -> CTSeriesAttributes:
    return CTSeriesAttributes(
        patient_id="P1",
        study_instance_uid="1.2.826.0.1.3680043.8.498.1",
        series_instance_uid=series_uid or "1.2.826.0.1.3680043.8.498.2",
        frame_of_reference_uid="1.2.826.0.1.3680043.8.498.3",
        **kwargs,
    )


def field_hu(lps: np.ndarray) -> np.ndarray:
    """A linear field of position (HU): trilinear interpolation reproduces it exactly."""
    lps = np.asarray(lps, float)
    return 2.0 * lps[..., 0] - 3.0 * lps[..., 1] + 5.0 * lps[..., 2]


def write_slices(
    out_dir: Path,
    *,
    positions: list[np.ndarray],
    row=(1, 0, 0),
    column=(0, 1, 0),
    rows: int = 20,
    columns: int = 24,
    spacing_ij=(1.0, 1.0),
    series_uid: str | None = None,
    **attr_kwargs,
) -> list[Path]:
    """One file per position, pixel values from `field_hu` at each pixel's true LPS."""
    out_dir.mkdir(parents=True, exist_ok=True)
    attr_kwargs.setdefault("slice_thickness_mm", 2.0)
    direction = direction_for(row, column)
    paths = []
    j, i = np.mgrid[0:rows, 0:columns]
    for n, position in enumerate(positions):
        lps = (
            np.asarray(position, float)
            + i[..., None] * spacing_ij[0] * direction[:, 0]
            + j[..., None] * spacing_ij[1] * direction[:, 1]
        )
        one = Volume(
            array=np.rint(field_hu(lps))[None],
            spacing_mm=(*spacing_ij, 1.0),
            origin_mm=tuple(position),
            direction=direction,
        )
        ds = ct_slice_dataset(
            one, 0, attrs(series_uid, **attr_kwargs), sop_instance_uid=synthetic_uid()
        )
        ds.InstanceNumber = n + 1
        path = out_dir / f"S{n:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def assert_matches_field(volume: Volume, *, atol: float = 0.51, mask=None) -> None:
    k, j, i = np.indices(volume.array.shape)
    ijk = np.stack([i, j, k], axis=-1).reshape(-1, 3)
    expected = field_hu(volume.index_to_lps(ijk)).reshape(volume.array.shape)
    diff = np.abs(volume.array - expected)
    if mask is not None:
        diff = diff[mask]
    assert diff.max() <= atol, f"largest deviation from the field {diff.max():.2f} HU"


def marked_volume(direction: np.ndarray, *, seed: int = 0) -> tuple[Volume, tuple[int, int, int]]:
    rng = np.random.default_rng(seed)
    array = rng.integers(-1000, 1000, SHAPE_KJI).astype(np.float32)
    marker_ijk = (21, 5, 8)
    array[marker_ijk[2], marker_ijk[1], marker_ijk[0]] = 3000.0
    volume = Volume(
        array=array,
        spacing_mm=SPACING,
        origin_mm=(-12.5, 30.25, -101.0),
        direction=direction,
        frame_of_reference_uid="1.2.826.0.1.3680043.8.498.3",
    )
    return volume, marker_ijk


def lps_from_dicom_header(ds: Dataset, i: int, j: int) -> np.ndarray:
    """PS3.3 C.7.6.2.1.1, written out independently of Volume."""
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
    return ipp + iop[:3] * column_spacing * i + iop[3:] * row_spacing * j


# --------------------------------------------------------------------- round trips
@pytest.mark.parametrize("position", ["HFS", "FFS", "HFP", "FFP"])
def test_index_lps_round_trip_through_dicom(tmp_path, position):
    written, (mi, mj, mk) = marked_volume(direction_for(*IOP[position]))
    paths = ct_series_write(written, tmp_path, attrs(patient_position=position))

    result = series_volume(sources=paths)
    volume = result.volume

    assert not result.resampled and result.findings == ()
    assert volume.array.dtype == np.float32
    np.testing.assert_array_equal(volume.array, written.array)
    np.testing.assert_allclose(volume.spacing_mm, SPACING, atol=1e-6)
    np.testing.assert_allclose(volume.origin_mm, written.origin_mm, atol=1e-6)
    np.testing.assert_allclose(volume.direction, written.direction, atol=1e-9)
    assert volume.frame_of_reference_uid == written.frame_of_reference_uid

    # The marker voxel is where the writer put it, by the standard's own formula.
    k, j, i = np.unravel_index(np.argmax(volume.array), volume.array.shape)
    assert (i, j, k) == (mi, mj, mk)
    marker_file = pydicom.dcmread(paths[mk])
    where = lps_from_dicom_header(marker_file, mi, mj)
    np.testing.assert_allclose(volume.index_to_lps(np.array([i, j, k])), where, atol=1e-5)
    np.testing.assert_allclose(volume.lps_to_index(where), (mi, mj, mk), atol=1e-6)

    # index -> LPS -> index for arbitrary continuous indices.
    ijk = np.random.default_rng(1).uniform(-1, 30, (50, 3))
    np.testing.assert_allclose(volume.lps_to_index(volume.index_to_lps(ijk)), ijk, atol=1e-9)


def test_slices_written_against_the_normal_come_back_along_it(tmp_path):
    r, c = IOP["HFS"]
    left_handed = np.column_stack([r, c, -np.cross(r, c)])  # k runs feet-wards
    written, _ = marked_volume(left_handed)
    paths = ct_series_write(written, tmp_path, attrs())

    volume = series_volume(sources=paths).volume

    np.testing.assert_array_equal(volume.array, written.array[::-1])
    np.testing.assert_allclose(volume.direction, direction_for(r, c), atol=1e-9)
    last = written.index_to_lps(np.array([0, 0, SHAPE_KJI[0] - 1]))
    np.testing.assert_allclose(volume.origin_mm, last, atol=1e-6)
    # Same voxel, same place in the patient.
    np.testing.assert_allclose(
        volume.index_to_lps(np.array([3, 4, 0])),
        written.index_to_lps(np.array([3, 4, 11])),
        atol=1e-6,
    )


def test_shuffled_files_and_instance_numbers_give_the_same_volume(tmp_path):
    written, _ = marked_volume(direction_for(*IOP["FFS"]))
    paths = ct_series_write(written, tmp_path, attrs(patient_position="FFS"))
    reference = series_volume(sources=paths).volume

    numbers = list(range(1, len(paths) + 1))
    random.Random(3).shuffle(numbers)
    for path, number in zip(paths, numbers, strict=True):
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = number  # must not matter
        ds.save_as(path, enforce_file_format=True)
    shuffled = list(paths)
    random.Random(4).shuffle(shuffled)
    assert shuffled != paths

    volume = series_volume(sources=shuffled).volume
    np.testing.assert_array_equal(volume.array, reference.array)
    np.testing.assert_allclose(volume.origin_mm, reference.origin_mm)

    # Datasets work as well as paths.
    datasets = [pydicom.dcmread(p) for p in shuffled]
    np.testing.assert_array_equal(series_volume(sources=datasets).volume.array, reference.array)


def test_spacing_comes_from_positions_not_slice_thickness(tmp_path):
    written, _ = marked_volume(direction_for(*IOP["HFS"]))
    paths = ct_series_write(written, tmp_path, attrs(slice_thickness_mm=5.0))
    assert pydicom.dcmread(paths[0]).SliceThickness == 5.0

    result = series_volume(sources=paths)

    assert result.volume.spacing_mm[2] == pytest.approx(2.5, abs=1e-6)
    assert [f.code for f in result.findings] == ["spacing_from_positions"]
    assert "5 mm" in result.findings[0].message


def test_thin_slices_far_apart_are_a_warning_not_a_contiguous_volume(tmp_path):
    # 1 mm slices every 2.5 mm: 1.5 mm between two slices was never imaged.
    written, _ = marked_volume(direction_for(*IOP["HFS"]))
    paths = ct_series_write(written, tmp_path, attrs(slice_thickness_mm=1.0))

    result = series_volume(sources=paths)

    (gap,) = result.findings
    assert (gap.code, gap.severity) == ("gaps_between_slices", "warning")
    assert "1.5 mm between slices was not imaged" in gap.message


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_compressed_transfer_syntaxes_decode(tmp_path, syntax):
    array = np.random.default_rng(2).integers(-1000, 2000, (3, 32, 32)).astype(np.float32)
    written = Volume(array=array, spacing_mm=(0.7, 0.7, 3.0), origin_mm=(0, 0, 0))
    paths = ct_series_write(written, tmp_path, attrs())
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.compress(syntax)
        ds.save_as(path, enforce_file_format=True)
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == syntax

    np.testing.assert_array_equal(series_volume(sources=paths).volume.array, array)


def test_rescale_slope_and_intercept_are_applied(tmp_path):
    written, _ = marked_volume(direction_for(*IOP["HFS"]))
    hu = np.clip(written.array, -1000, 900)
    written = written.with_array(hu)
    paths = ct_series_write(written, tmp_path, attrs())
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        stored = ((hu[k] + 1024.0) / 0.5).astype(np.uint16)  # slope 0.5, intercept -1024
        ds.set_pixel_data(stored, photometric_interpretation="MONOCHROME2", bits_stored=16)
        ds.RescaleSlope = "0.5"
        ds.RescaleIntercept = "-1024"
        ds.save_as(path, enforce_file_format=True)

    volume = series_volume(sources=paths).volume

    assert volume.array.dtype == np.float32
    np.testing.assert_array_equal(volume.array, hu)


def test_enhanced_multiframe_ct_with_frames_out_of_order(tmp_path):
    written, _ = marked_volume(direction_for(*IOP["HFP"]))
    order = list(range(SHAPE_KJI[0]))
    random.Random(5).shuffle(order)
    ds = ct_slice_dataset(written, 0, attrs(), sop_instance_uid=synthetic_uid())
    ds.SOPClassUID = EnhancedCTImageStorage
    ds.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        delattr(ds, keyword)
    for keyword in ("SliceThickness", "ConvolutionKernel"):  # in the functional groups
        if keyword in ds:
            delattr(ds, keyword)
    stored = np.stack([np.rint(written.array[k] + 1024).astype(np.uint16) for k in order])
    ds.set_pixel_data(stored, photometric_interpretation="MONOCHROME2", bits_stored=12)
    ds.RescaleIntercept, ds.RescaleSlope = "0", "1"  # the functional group value wins

    def item(**values) -> Dataset:
        out = Dataset()
        for key, value in values.items():
            setattr(out, key, value)
        return out

    orientation = [*written.direction[:, 0], *written.direction[:, 1]]
    shared = item(
        PlaneOrientationSequence=DicomSequence([item(ImageOrientationPatient=orientation)]),
        PixelMeasuresSequence=DicomSequence(
            [item(PixelSpacing=[SPACING[1], SPACING[0]], SliceThickness=SPACING[2])]
        ),
        PixelValueTransformationSequence=DicomSequence(
            [item(RescaleIntercept=-1024, RescaleSlope=1, RescaleType="HU")]
        ),
        CTReconstructionSequence=DicomSequence([item(ConvolutionKernel="B70f")]),
    )
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(
        [
            item(
                PlanePositionSequence=DicomSequence(
                    [item(ImagePositionPatient=list(written.index_to_lps(np.array([0, 0, k]))))]
                )
            )
            for k in order
        ]
    )
    path = tmp_path / "enhanced.dcm"
    ds.save_as(path, enforce_file_format=True)

    result = series_volume(sources=[path])

    np.testing.assert_array_equal(result.volume.array, written.array)
    np.testing.assert_allclose(result.volume.origin_mm, written.origin_mm, atol=1e-6)
    np.testing.assert_allclose(result.volume.direction, written.direction, atol=1e-9)
    assert result.slice_sop_instance_uids[0].endswith(f"#{order.index(0) + 1}")
    # The series chooser reads the kernel and thickness where Enhanced CT keeps them.
    summary = series_summary(sources=[path])
    assert summary.convolution_kernel == "B70f"
    assert summary.slice_thickness_mm == pytest.approx(SPACING[2])


# --------------------------------------------------------------------- detections
def axial_positions(count: int, spacing: float = 2.0, z0: float = -20.0) -> list[np.ndarray]:
    return [np.array([-10.0, -8.0, z0 + spacing * n]) for n in range(count)]


def test_localizer_is_dropped_and_reported(tmp_path):
    paths = write_slices(tmp_path / "axial", positions=axial_positions(8))
    localizer = pydicom.dcmread(paths[0])
    localizer.SOPInstanceUID = synthetic_uid()
    localizer.file_meta.MediaStorageSOPInstanceUID = localizer.SOPInstanceUID
    localizer.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    localizer.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # coronal
    localizer.ImagePositionPatient = [-10, 0, 0]
    scout = tmp_path / "scout.dcm"
    localizer.save_as(scout, enforce_file_format=True)

    result = series_volume(sources=[scout, *paths])

    assert result.volume.array.shape == (8, 20, 24)
    assert result.dropped_sop_instance_uids == (localizer.SOPInstanceUID,)
    assert [f.code for f in result.findings] == ["localizer_dropped"]
    assert not result.resampled
    assert_matches_field(result.volume)


def test_an_image_in_another_orientation_is_taken_for_a_localizer(tmp_path):
    paths = write_slices(tmp_path / "axial", positions=axial_positions(8))
    sagittal = write_slices(
        tmp_path / "sag", positions=[np.array([0.0, -8.0, 0.0])], row=(0, 1, 0), column=(0, 0, -1)
    )

    result = series_volume(sources=[*paths, *sagittal])

    assert result.volume.array.shape[0] == 8
    (finding,) = result.findings
    assert finding.code == "orientation_outlier_dropped" and finding.severity == "warning"
    assert "sagittal" in finding.message and "axial" in finding.message


def test_mixed_orientations_are_refused(tmp_path):
    axial = write_slices(tmp_path / "a", positions=axial_positions(6))
    coronal = write_slices(
        tmp_path / "c",
        positions=[np.array([-10.0, y, 10.0]) for y in (-4.0, -2.0, 0.0, 2.0, 4.0)],
        row=(1, 0, 0),
        column=(0, 0, -1),
    )
    with pytest.raises(SeriesGeometryError, match="mixed orientations") as caught:
        series_volume(sources=[*axial, *coronal])
    assert caught.value.code == "mixed_orientation"
    assert "6 image(s) axial" in str(caught.value) and "5 image(s) coronal" in str(caught.value)


def test_small_spacing_irregularity_is_resampled_and_reported(tmp_path):
    positions = axial_positions(10)
    positions[4] = positions[4] + np.array([0, 0, 0.3])  # gaps 2.3 and 1.7 mm: 15% off
    paths = write_slices(tmp_path, positions=positions)

    result = series_volume(sources=paths)

    codes = [f.code for f in result.findings]
    assert codes == ["irregular_spacing", "irregular_spacing", "resampled"]
    assert "15% off" in result.findings[0].message
    assert result.resampled
    assert result.volume.array.shape == (10, 20, 24)
    assert result.volume.spacing_mm[2] == pytest.approx(2.0)
    assert_matches_field(result.volume)

    with pytest.raises(SeriesGeometryError, match="resampling is not allowed") as caught:
        series_volume(sources=paths, allow_resample=False)
    assert caught.value.code == "resample_needed"


def test_large_spacing_irregularity_is_refused_with_where(tmp_path):
    positions = axial_positions(10)
    positions[4] = positions[4] + np.array([0, 0, 0.8])  # 40% off
    paths = write_slices(tmp_path, positions=positions)

    with pytest.raises(SeriesGeometryError, match="irregular slice spacing") as caught:
        series_volume(sources=paths)
    assert caught.value.code == "irregular_spacing"
    assert "-14.00 and -11.20 mm" in str(caught.value)
    assert caught.value.findings


def test_a_missing_slice_is_detected_and_interpolated(tmp_path):
    positions = axial_positions(12)
    del positions[6]
    paths = write_slices(tmp_path, positions=positions)

    result = series_volume(sources=paths)

    missing = [f for f in result.findings if f.code == "missing_slices"]
    assert len(missing) == 1 and missing[0].message.startswith("1 slice(s) missing")
    assert missing[0].positions_mm == (pytest.approx(-10.0), pytest.approx(-6.0))
    assert result.resampled and result.volume.array.shape == (12, 20, 24)
    assert len(result.slice_sop_instance_uids) == 11
    assert_matches_field(result.volume)


def test_three_consecutive_missing_slices_are_refused(tmp_path):
    positions = axial_positions(12)
    del positions[5:8]
    paths = write_slices(tmp_path, positions=positions)

    with pytest.raises(SeriesGeometryError, match="3 consecutive slice") as caught:
        series_volume(sources=paths)
    assert caught.value.code == "missing_slices"
    assert "between -12.00 and -4.00 mm" in str(caught.value)
    assert [f.code for f in caught.value.findings] == ["missing_slices"]


def tilted_series(tmp_path: Path, tilt_deg: float, count: int = 14) -> list[Path]:
    """Gantry tilted about the patient's left-right axis: image planes tilted, table along S."""
    t = math.radians(tilt_deg)
    column = (0.0, math.cos(t), math.sin(t))
    positions = [np.array([-12.0, -10.0, -13.0 + 2.0 * n]) for n in range(count)]
    paths = write_slices(tmp_path, positions=positions, row=(1, 0, 0), column=column)
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.GantryDetectorTilt = tilt_deg
        ds.save_as(path, enforce_file_format=True)
    return paths


def test_gantry_tilt_is_detected_and_resampled(tmp_path):
    paths = tilted_series(tmp_path, 15.0)

    result = series_volume(sources=paths)

    tilt = next(f for f in result.findings if f.code == "gantry_tilt")
    assert "15.00°" in tilt.message and "(0018,1120) says 15°" in tilt.message
    assert result.gantry_tilt_deg == pytest.approx(15.0, abs=0.01)
    assert result.resampled and result.findings[-1].code == "resampled"
    volume = result.volume
    t = math.radians(15.0)
    # Orthogonal grid in the tilted image plane; spacing along the normal 2 mm * cos(tilt).
    np.testing.assert_allclose(volume.direction[:, 1], (0, math.cos(t), math.sin(t)), atol=1e-6)
    assert volume.spacing_mm[2] == pytest.approx(2.0 * math.cos(t), abs=1e-4)
    # Every voxel that lies inside the acquired field holds the field at its true place.
    # Rows shift by 2 mm * sin(15°) / 1 mm = 0.52 px per slice: keep 4 px clear of the ends.
    inside = np.zeros(volume.array.shape, bool)
    inside[:, 4:-4, :] = True
    assert_matches_field(volume, mask=inside)


def test_gantry_tilt_beyond_the_limit_or_without_resampling_is_refused(tmp_path):
    paths = tilted_series(tmp_path, 15.0, count=6)
    with pytest.raises(SeriesGeometryError, match="beyond the 10°") as caught:
        series_volume(sources=paths, limits=GeometryLimits(max_tilt_deg=10.0))
    assert caught.value.code == "gantry_tilt"
    with pytest.raises(SeriesGeometryError, match="gantry tilt of 15.00°"):
        series_volume(sources=paths, allow_resample=False)


def test_header_tilt_with_straight_positions_needs_no_correction(tmp_path):
    paths = write_slices(tmp_path, positions=axial_positions(5))
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.GantryDetectorTilt = 12
        ds.save_as(path, enforce_file_format=True)

    result = series_volume(sources=paths)

    assert [f.code for f in result.findings] == ["header_gantry_tilt"]
    assert not result.resampled and result.gantry_tilt_deg == 0.0


def test_two_images_at_one_position_are_refused(tmp_path):
    positions = axial_positions(6)
    positions.append(positions[2].copy())
    paths = write_slices(tmp_path, positions=positions)
    with pytest.raises(SeriesGeometryError, match="same position -16.000 mm") as caught:
        series_volume(sources=paths)
    assert caught.value.code == "duplicate_position"


def test_positions_off_a_line_are_refused(tmp_path):
    positions = axial_positions(8)
    positions[3] = positions[3] + np.array([2.0, 0, 0])
    paths = write_slices(tmp_path, positions=positions)
    with pytest.raises(SeriesGeometryError, match="not lie on a straight line"):
        series_volume(sources=paths)


def test_images_of_two_series_are_refused(tmp_path):
    a = write_slices(tmp_path / "a", positions=axial_positions(3))
    b = write_slices(tmp_path / "b", positions=axial_positions(3, z0=0), series_uid="1.2.3.9")
    with pytest.raises(SeriesVolumeError, match="2 series"):
        series_volume(sources=[*a, *b])


def test_run_record_is_json_ready(tmp_path):
    import json

    positions = axial_positions(12)
    del positions[6]
    result = series_volume(sources=write_slices(tmp_path, positions=positions))
    record = json.loads(json.dumps(result.as_record()))
    assert record["resampled"] is True
    assert {f["code"] for f in record["findings"]} == {"missing_slices", "resampled"}
    assert set(record["versions"]) == {"pydicom", "SimpleITK", "numpy"}


def test_series_summary_from_headers(tmp_path):
    written, _ = marked_volume(direction_for(*IOP["HFS"]))
    paths = ct_series_write(
        written, tmp_path, attrs(convolution_kernel="B30f", series_number=3, slice_thickness_mm=3.0)
    )
    summary = series_summary(sources=paths)
    assert summary.modality == "CT" and summary.plane == "axial"
    assert summary.convolution_kernel == "B30f"
    assert summary.n_slices == SHAPE_KJI[0]
    assert summary.slice_thickness_mm == 3.0
    assert summary.slice_spacing_mm == pytest.approx(2.5)
    assert summary.coverage_mm == pytest.approx(2.5 * (SHAPE_KJI[0] - 1))
    assert summary.series_number == 3


def _numbered(paths: list[Path], numbers: list[int]) -> None:
    for path, number in zip(paths, numbers, strict=True):
        ds = pydicom.dcmread(path)
        ds.AcquisitionNumber = number
        ds.save_as(path, enforce_file_format=True)


def test_two_scans_interleaved_in_one_series_are_refused(tmp_path):
    # Two breath-holds of the same range stored as one series: stacked, they would
    # alternate between two moments slice by slice.
    paths = write_slices(tmp_path / "mixed", positions=axial_positions(8))
    _numbered(paths, [1, 2, 1, 2, 1, 2, 1, 2])
    with pytest.raises(SeriesVolumeError, match="Acquisition Number 1, 2 are interleaved") as err:
        series_volume(sources=paths)
    assert err.value.code == "interleaved_acquisitions"
    # A step-and-shoot scan numbers each table position: blocks, one after another.
    blocks = write_slices(tmp_path / "steps", positions=axial_positions(8))
    _numbered(blocks, [1, 1, 1, 1, 2, 2, 2, 2])
    assert series_volume(sources=blocks).volume.shape_ijk[2] == 8


def test_padded_pixels_outside_the_field_of_view_read_as_air(tmp_path):
    # Pixel Padding Value marks pixels outside the reconstructed circle: stored 0 with an
    # intercept of -1024 they would read -1024 anyway, so pad with -2000 (stored), which
    # rescales to -3024 HU, darker than anything in a body.
    paths = write_slices(tmp_path / "padded", positions=axial_positions(4))
    for path in paths:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array.astype(np.int16)
        pixels[:, :3] = -2000
        ds.PixelRepresentation = 1
        ds.set_pixel_data(pixels, photometric_interpretation="MONOCHROME2", bits_stored=16)
        ds.add_new(0x00280120, "SS", -2000)  # Pixel Padding Value, signed
        ds.save_as(path, enforce_file_format=True)

    volume = series_volume(sources=paths).volume

    assert float(volume.array.min()) >= -1024.0
    np.testing.assert_array_equal(volume.array[:, :, :3], -1024.0)
