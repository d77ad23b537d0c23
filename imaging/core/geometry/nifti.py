"""Store a `Volume` as compressed NIfTI-1 (.nii.gz) and read it back with its LPS geometry.

NIfTI's world frame is RAS+ (x grows to the patient's right, y anterior, z superior);
SimpleITK's NIfTI IO converts between it and ITK's LPS on write and read (it negates
the first two rows of the qform/sform), so the volume comes back in DICOM LPS mm. The
header stores spacing, origin and direction as float32, which bounds the round trip to
about 1e-5 mm over a body-sized origin.

The volume's kind and frame of reference UID travel in the 80-character ``descrip``
field (``"label FoR=<uid>"``; a UID over 64 characters is left out); label volumes are
written as the smallest unsigned integer type that holds them, scalar volumes keep their
dtype (float32 HU from `imaging.core.dicom.volume.series_volume`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from imaging.core.geometry.volume import Volume, VolumeKind

_DESCRIP_LIMIT = 80
_NOTES_KEY = "ITK_FileNotes"  # written into and read from the NIfTI descrip field


def _label_array(array: np.ndarray) -> np.ndarray:
    if array.size and (np.any(array < 0) or not np.all(np.equal(np.mod(array, 1), 0))):
        raise ValueError("a label volume holds non-negative whole numbers")
    top = int(array.max()) if array.size else 0
    for dtype in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(dtype).max:
            return array.astype(dtype)
    raise ValueError(f"label value {top} is too large for NIfTI unsigned integer types")


def volume_write_nifti(*, volume: Volume, path: Path) -> Path:
    """Write ``volume`` to ``path`` (gzip-compressed when it ends in .gz) and return it."""
    path = Path(path)
    if not path.name.endswith((".nii", ".nii.gz")):
        raise ValueError(f"a NIfTI file name ends in .nii or .nii.gz, not {path.name}")
    array = _label_array(volume.array) if volume.kind == "label" else volume.array
    image = volume.with_array(array).to_sitk()
    notes = f"{volume.kind} FoR={volume.frame_of_reference_uid}"
    if len(notes) > _DESCRIP_LIMIT:
        # Only a UID over DICOM's 64 characters gets here; the database keeps it anyway.
        notes = f"{volume.kind} FoR="
    image.SetMetaData(_NOTES_KEY, notes)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=path.name.endswith(".gz"))
    return path


def volume_read_nifti(*, path: Path, kind: VolumeKind | None = None) -> Volume:
    """Read a NIfTI file into a `Volume` in LPS mm.

    ``kind`` defaults to what ``volume_write_nifti`` recorded, else ``scalar``; the frame
    of reference UID comes from the same note (empty when absent).
    """
    image = sitk.ReadImage(str(path))
    notes = image.GetMetaData(_NOTES_KEY) if image.HasMetaDataKey(_NOTES_KEY) else ""
    recorded, _, frame_uid = notes.partition(" FoR=")
    recorded_kind: VolumeKind = "label" if recorded == "label" else "scalar"
    if recorded not in ("scalar", "label"):
        frame_uid = ""
    return Volume.from_sitk(
        image,
        kind=kind or recorded_kind,
        frame_of_reference_uid=frame_uid.strip(),
    )
