"""A site's labelled series as training cases: images with NIfTI label maps or DICOM SEG.

Label maps carry the codes of `network.CLASSES`; DICOM SEG segments are read with
highdicom and mapped to classes by their labels (`segment_class`). Targets are hard
(a voxel is lesion or not) and lesions are the 26-connected lesion components.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import highdicom
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from imaging.core.dicom.volume import series_volume
from imaging.core.geometry.nifti import volume_read_nifti
from imaging.core.geometry.preprocess import volume_reorient
from imaging.core.geometry.volume import Volume
from imaging.core.segmentation.network import CLASSES, SegmenterSpec, body_box, model_grid
from imaging.core.segmentation.training.cases import N_CLASSES, TrainingCase, hu_int16
from imaging.core.synthetic.lesion_shape import equivalent_diameter_mm

SEGMENT_KEYWORDS: tuple[tuple[str, int], ...] = (
    ("nodule", 3),
    ("lung lesion", 3),
    ("lung_lesion", 3),
    ("liver lesion", 4),
    ("liver_lesion", 4),
    ("metasta", 4),
    ("lung", 1),
    ("liver", 2),
)


def segment_class(label: str) -> int | None:
    """The class code for a DICOM SEG segment label (Segment Label (0062,0005)), or None."""
    text = label.lower()
    for keyword, code in SEGMENT_KEYWORDS:
        if keyword in text:
            return code
    return None


def seg_labels_read(*, path: Path) -> Volume:
    """A DICOM SEG (binary, fractional or labelmap) as a label `Volume` with class codes.

    Segments are mapped to classes by their labels (`segment_class`); unmapped segments
    are ignored. The volume's geometry is the SEG's own (PS3.3 C.7.6.17 plane positions
    and C.7.6.2 orientation), in LPS, with its axes reoriented to L, P, S (exact).
    """
    seg = highdicom.seg.segread(str(path))
    numbers, codes = [], []
    for description in seg.SegmentSequence:
        code = segment_class(str(description.SegmentLabel))
        if code is not None:
            numbers.append(int(description.SegmentNumber))
            codes.append(code)
    if not numbers:
        raise ValueError(f"{path}: no segment label names lung, liver or a lesion")
    hd_volume = seg.get_volume(segment_numbers=numbers, combine_segments=False, dtype=np.uint8)
    array = np.asarray(hd_volume.array)  # (slices, rows, columns, segments)
    if array.ndim == 3:
        array = array[..., None]
    label = np.zeros(array.shape[:3], dtype=np.uint8)
    # Lesions last so they overwrite their organ.
    for position in np.argsort(codes, kind="stable"):
        label[array[..., position] > 0] = codes[position]
    affine = np.asarray(hd_volume.affine, dtype=float)  # (slice, row, column) -> LPS
    # Our arrays are [k, j, i]: the same axis order, with i = column, j = row, k = slice.
    columns = affine[:3, :3][:, [2, 1, 0]]
    spacing = np.linalg.norm(columns, axis=0)
    volume = Volume(
        array=label,
        spacing_mm=tuple(spacing),
        origin_mm=tuple(affine[:3, 3]),
        direction=columns / spacing,
        kind="label",
        frame_of_reference_uid=str(getattr(seg, "FrameOfReferenceUID", "")),
    )
    return volume_reorient(volume=volume)


def _label_on_grid(label: Volume, grid: Volume) -> np.ndarray:
    """Nearest-neighbour copy of ``label`` onto ``grid``'s voxels (0 outside the label)."""
    reference = sitk.Image(list(grid.shape_ijk), sitk.sitkUInt8)
    reference.SetSpacing(grid.spacing_mm)
    reference.SetOrigin(grid.origin_mm)
    reference.SetDirection(tuple(grid.direction.flatten()))
    image = label.with_array(label.array.astype(np.uint8)).to_sitk()
    out = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(out)


def site_case_build(
    *,
    case_id: str,
    image: Volume,
    label: Volume,
    spec: SegmenterSpec,
    hard_negatives_lps_mm: Sequence[Sequence[float]] = (),
) -> TrainingCase:
    """A site's labelled series as a training case on the model grid (hard targets).
    ``hard_negatives_lps_mm``: points (the image's LPS mm) where the network was wrong to
    see a lesion (a rejected candidate's centre), kept in ``meta["hard_negatives_kji"]``
    on the case's grid so that patches are also centred there (`training.patches`)."""
    grid, _ = model_grid(volume=image, spec=spec)
    lab_array = _label_on_grid(label, grid)
    box = body_box(grid.array)
    start = np.array([b.start for b in box])
    stop = np.array([b.stop for b in box])
    hard = []
    for point in hard_negatives_lps_mm:
        kji = np.round(grid.lps_to_index(np.asarray(point, dtype=float))[::-1]).astype(int)
        if np.all(kji >= start) and np.all(kji < stop):
            hard.append((kji - start).tolist())
    hu = grid.array[box]
    lab_array = lab_array[box]
    organ = lab_array.copy()
    organ[organ == 3] = 1
    organ[organ == 4] = 2
    lesion = np.isin(lab_array, (3, 4))
    components, n = ndimage.label(lesion, structure=np.ones((3, 3, 3)))
    voxel_ml = float(np.prod(grid.spacing_mm)) / 1000.0
    lesions: list[dict[str, Any]] = []
    index = np.zeros(lab_array.shape, dtype=np.uint8)
    for number in range(1, min(n, 255) + 1):
        mask = components == number
        volume_ml = float(mask.sum()) * voxel_ml
        organ_name = "lung" if np.median(lab_array[mask]) == 3 else "liver"
        index[mask] = len(lesions) + 1
        lesions.append(
            {
                "lesion_id": f"{case_id}-C{number:02d}",
                "organ": organ_name,
                "volume_ml": volume_ml,
                "diameter_mm": equivalent_diameter_mm(volume_ml),
            }
        )
    return TrainingCase(
        case_id=case_id,
        hu=hu_int16(hu),
        organ=organ,
        lesion_fraction=lesion.astype(np.float16),
        lesion_code=np.where(lesion, lab_array, 0).astype(np.uint8),
        lesion_index=index,
        lesions=tuple(lesions),
        spacing_mm=grid.spacing_mm,
        meta={"source": "site", "hard_negatives_kji": hard},
    )


def _site_image_read(folder: Path) -> Volume:
    if (folder / "image.nii.gz").exists():
        return volume_read_nifti(path=folder / "image.nii.gz", kind="scalar")
    if (folder / "image").is_dir():
        return series_volume(sources=sorted((folder / "image").rglob("*.dcm"))).volume
    raise ValueError(f"{folder}: no image.nii.gz and no image/ DICOM folder")


def _site_label_read(folder: Path) -> Volume:
    if (folder / "label.nii.gz").exists():
        label = volume_read_nifti(path=folder / "label.nii.gz", kind="label")
        if label.array.size and int(label.array.max()) >= N_CLASSES:
            raise ValueError(
                f"{folder}/label.nii.gz has label {int(label.array.max())}; "
                f"codes are {', '.join(f'{i} {c}' for i, c in enumerate(CLASSES))}"
            )
        return label
    if (folder / "seg.dcm").exists():
        return seg_labels_read(path=folder / "seg.dcm")
    raise ValueError(f"{folder}: no label.nii.gz and no seg.dcm")


def site_cases_read(*, data_dir: Path, spec: SegmenterSpec) -> list[TrainingCase]:
    """Read ``data_dir/<case>/`` folders: an image (``image.nii.gz`` or a DICOM series
    folder ``image/``) and labels (``label.nii.gz`` with `CLASSES` codes, or ``seg.dcm``)."""
    folders = sorted(p for p in Path(data_dir).iterdir() if p.is_dir())
    if not folders:
        raise ValueError(f"{data_dir} holds no case folders")
    cases = []
    for folder in folders:
        image = _site_image_read(folder)
        label = _site_label_read(folder)
        cases.append(site_case_build(case_id=folder.name, image=image, label=label, spec=spec))
    return cases
