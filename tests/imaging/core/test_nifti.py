"""NIfTI storage keeps LPS geometry, kind and frame of reference; labels stay integers."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from imaging.core.geometry.nifti import volume_read_nifti, volume_write_nifti
from imaging.core.geometry.volume import Volume

FOR_UID = "1.2.826.0.1.3680043.8.498.12345678901234567890123456789012345678"
assert len(FOR_UID) == 64


def oblique_direction() -> np.ndarray:
    a, b = np.radians(20.0), np.radians(-35.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


DIRECTIONS = {
    "HFS": np.eye(3),
    "FFS": np.diag([-1.0, 1.0, -1.0]),
    "HFP": np.diag([-1.0, -1.0, 1.0]),
    "oblique": oblique_direction(),
}


def scalar_volume(direction: np.ndarray) -> Volume:
    array = np.random.default_rng(0).normal(0, 300, (7, 9, 11)).astype(np.float32)
    return Volume(
        array=array,
        spacing_mm=(0.7421875, 0.7421875, 2.5),
        origin_mm=(-190.12890625, -203.0, 1187.5),
        direction=direction,
        frame_of_reference_uid=FOR_UID,
    )


@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_scalar_round_trip_keeps_lps_geometry(tmp_path, name):
    volume = scalar_volume(DIRECTIONS[name])
    path = volume_write_nifti(volume=volume, path=tmp_path / "ct.nii.gz")

    back = volume_read_nifti(path=path)

    assert back.kind == "scalar" and back.frame_of_reference_uid == FOR_UID
    assert back.array.dtype == np.float32
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.spacing_mm, volume.spacing_mm, atol=1e-6)
    np.testing.assert_allclose(back.origin_mm, volume.origin_mm, atol=1e-4)
    np.testing.assert_allclose(back.direction, volume.direction, atol=1e-6)
    points = np.array([[0, 0, 0], [10, 8, 6], [3.5, 2.25, 1.0]])
    np.testing.assert_allclose(back.index_to_lps(points), volume.index_to_lps(points), atol=1e-4)


def test_file_holds_ras_world_coordinates(tmp_path):
    """Another reader (nibabel, RAS+) sees the same points with x and y negated."""
    volume = scalar_volume(DIRECTIONS["oblique"])
    path = volume_write_nifti(volume=volume, path=tmp_path / "ct.nii.gz")

    image = nib.load(path)
    lps_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
    np.testing.assert_allclose(image.affine, lps_to_ras @ volume.affine_lps, atol=1e-4)
    # nibabel's array is indexed (i, j, k).
    np.testing.assert_array_equal(np.asarray(image.dataobj).transpose(2, 1, 0), volume.array)
    assert (path.read_bytes()[:2]) == b"\x1f\x8b"  # gzip


@pytest.mark.parametrize(("top", "dtype"), [(3, np.uint8), (300, np.uint16)])
def test_labels_are_written_as_integers(tmp_path, top, dtype):
    array = np.zeros((5, 6, 7), dtype=np.float32)
    array[2, 3, 4] = top
    array[1, 1, 1] = 1
    label = Volume(array=array, spacing_mm=(1, 1, 2), origin_mm=(0, 0, 0), kind="label")

    path = volume_write_nifti(volume=label, path=tmp_path / "mask.nii.gz")

    assert nib.load(path).get_data_dtype() == dtype
    back = volume_read_nifti(path=path)
    assert back.kind == "label" and back.array.dtype == dtype
    np.testing.assert_array_equal(back.array, array)


def test_bad_labels_and_names_are_refused(tmp_path):
    fractional = Volume(
        array=np.full((2, 2, 2), 0.5), spacing_mm=(1, 1, 1), origin_mm=(0, 0, 0), kind="label"
    )
    with pytest.raises(ValueError, match="whole numbers"):
        volume_write_nifti(volume=fractional, path=tmp_path / "m.nii.gz")
    with pytest.raises(ValueError, match="ends in .nii"):
        volume_write_nifti(volume=scalar_volume(np.eye(3)), path=tmp_path / "m.nrrd")


def test_foreign_file_reads_as_scalar_unless_told(tmp_path):
    path = tmp_path / "foreign.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 3, 2), np.int16), np.diag([-2.0, -2.0, 3.0, 1.0])), path)

    volume = volume_read_nifti(path=path)
    assert volume.kind == "scalar" and volume.frame_of_reference_uid == ""
    np.testing.assert_allclose(volume.spacing_mm, (2, 2, 3))
    np.testing.assert_allclose(volume.direction, np.eye(3), atol=1e-6)  # RAS -x,-y is LPS +
    assert volume_read_nifti(path=path, kind="label").kind == "label"
