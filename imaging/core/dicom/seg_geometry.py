"""Checks that a label map and its source images can make a DICOM SEG, and the label map
as a highdicom volume (`seg_sr` builds the SEG and SR from them)."""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from imaging.core.geometry.volume import Volume


class DicomExportError(ValueError):
    """The inputs cannot make a valid SEG or SR; ``str(exc)`` says which and why."""


def check_sources(source_images: Sequence[Dataset]) -> str:
    """The sources' common Frame of Reference UID; they must be one series of one study."""
    if not source_images:
        raise DicomExportError("no source images given")
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        values = {str(ds.get(keyword, "")) for ds in source_images}
        if "" in values:
            raise DicomExportError(f"a source image lacks {keyword}")
        if len(values) > 1:
            raise DicomExportError(
                f"the source images have {len(values)} different {keyword} values; "
                "they must be the images of one series"
            )
    return str(source_images[0].FrameOfReferenceUID)


#: Largest difference of direction cosines taken as the same axis (about 0.6 degrees).
DIRECTION_TOLERANCE = 0.01


def check_orientation(label_map: Volume, source_images: Sequence[Dataset]) -> None:
    """Refuse a label map whose axes do not run as the source images' do.

    Rows and columns must follow Image Orientation (Patient) (0020,0037) and slices their
    cross product (the axes `series_volume` builds). A flipped axis would put the mask
    on mirrored voxels or the wrong slices with no error from highdicom.
    """
    orientation = source_images[0].get("ImageOrientationPatient")
    if orientation is None or len(orientation) != 6:
        raise DicomExportError("a source image lacks Image Orientation (Patient) (0020,0037)")
    row = np.asarray([float(v) for v in orientation[:3]])
    column = np.asarray([float(v) for v in orientation[3:]])
    expected = np.column_stack([row, column, np.cross(row, column)])
    if not np.allclose(np.asarray(label_map.direction), expected, atol=DIRECTION_TOLERANCE):
        raise DicomExportError(
            "the label map's axes do not run as the source images' Image Orientation "
            "(Patient) (0020,0037) says (was its header corrected, e.g. a flip?); map it "
            "back to the source header before exporting"
        )


def highdicom_volume(label_map: Volume, array: np.ndarray, frame_uid: str) -> hd.Volume:
    """``array`` (on ``label_map``'s grid, axes k, j, i) as a highdicom volume.

    highdicom's affine maps array indices in axis order (k, j, i) to LPS mm, so its
    columns are the slice, column and row directions scaled by their spacings.
    """
    sx, sy, sz = label_map.spacing_mm
    d = label_map.direction
    affine = np.eye(4)
    affine[:3, 0] = d[:, 2] * sz
    affine[:3, 1] = d[:, 1] * sy
    affine[:3, 2] = d[:, 0] * sx
    affine[:3, 3] = label_map.origin_mm
    return hd.Volume(
        array=array,
        affine=affine,
        coordinate_system="PATIENT",
        frame_of_reference_uid=frame_uid,
    )
