"""Exact truth label maps of a synthetic study, for training and scoring segmenters.

Labels follow the rendering exactly: organs as painted (a structure painted over an
organ hides it) and lesions by the partial-volume occupancy `phantom_render` uses, on
any grid (the scanner's or a model's), without blur or noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from imaging.core.synthetic.anatomy import BodyAnatomy
from imaging.core.synthetic.anatomy_structures import anatomy_structures
from imaging.core.synthetic.phantom import (
    LesionAtStudy,
    ScanGeometry,
    body_coordinates,
    lesion_fraction_render,
    structure_boxes,
)

#: Codes of `study_label_render`: the classes of `imaging.core.segmentation.network`.
LABEL_CODES = {"lung": 1, "liver": 2, "lung_lesion": 3, "liver_lesion": 4}
_ORGAN_OF_STRUCTURE = {"right_lung": "lung", "left_lung": "lung", "liver": "liver"}


def anatomy_label_render(
    *,
    anatomy: BodyAnatomy,
    geometry: ScanGeometry,
    pose_body_to_lps: np.ndarray,
    codes: dict[str, int] | None = None,
    slices_per_chunk: int = 16,
) -> np.ndarray:
    """Per-voxel organ codes ([k, j, i], uint8) of the anatomy as painted, without lesions.

    A voxel takes the code of the last structure, in paint order, whose surface holds
    its centre (the same rule as `anatomy_label`, so a structure painted over an organ
    hides it); ``codes`` maps organ names (``lung``, ``liver``) to codes, defaulting to
    `LABEL_CODES`; every other structure and air is 0. Structures are evaluated only in
    their bounding boxes, as in rendering.
    """
    codes = {k: v for k, v in (codes or LABEL_CODES).items() if k in ("lung", "liver")}
    pose = np.asarray(pose_body_to_lps, dtype=float)
    body_from_lps = np.linalg.inv(pose)
    ni, nj, nk = geometry.shape_ijk
    out = np.zeros((nk, nj, ni), dtype=np.uint8)
    boxes = structure_boxes(
        anatomy_structures(anatomy),
        geometry,
        body_from_lps=body_from_lps,
        lps_from_body=pose,
        pad_mm=2.0 * float(np.max(geometry.spacing_mm)),
        slices_per_chunk=slices_per_chunk,
    )
    for structure, (ka, kb, j0, j1, i0, i1) in boxes:
        code = codes.get(_ORGAN_OF_STRUCTURE.get(structure.name, ""), 0)
        x, y, z = body_coordinates(geometry, body_from_lps, (ka, kb, j0, j1, i0, i1))
        inside = structure.signed_distance(x, y, z) < 0
        out[ka:kb, j0:j1, i0:i1][inside] = code
    return out


@dataclass(frozen=True, eq=False)
class StudyLabels:
    """Exact truth on one grid: organ codes, lesion occupancy and lesion identities.

    ``label`` ([k, j, i], uint8, `LABEL_CODES`) is the organ code, overwritten by the
    lesion code of its organ where a lesion occupies at least half the voxel;
    ``lesion_fraction`` (float32, 0..1) is the summed occupancy of all lesions;
    ``lesion_index`` (uint16) is 1 + the position in ``lesion_ids`` of the lesion that
    occupies at least half the voxel (0 elsewhere); ``lesion_code`` (uint8) is the
    lesion code of the organ of the lesion that touches the voxel at all (0 elsewhere).
    """

    label: np.ndarray
    lesion_fraction: np.ndarray
    lesion_index: np.ndarray
    lesion_code: np.ndarray
    lesion_ids: tuple[str, ...]
    lesion_organs: tuple[str, ...]


def study_label_render(
    *,
    anatomy: BodyAnatomy,
    lesions: list[LesionAtStudy],
    lesion_organs: dict[str, str],
    geometry: ScanGeometry,
    pose_body_to_lps: np.ndarray,
) -> StudyLabels:
    """The truth label maps of a study on ``geometry`` (any grid: the scanner's or a model's).

    ``lesion_organs`` maps lesion ids to ``lung`` or ``liver``. Lesion occupancy is the
    exact partial-volume fraction of `lesion_fraction_render` (no blur, no noise).
    """
    label = anatomy_label_render(
        anatomy=anatomy, geometry=geometry, pose_body_to_lps=pose_body_to_lps
    )
    body_from_lps = np.linalg.inv(np.asarray(pose_body_to_lps, dtype=float))
    fraction = np.zeros(label.shape, dtype=np.float32)
    index = np.zeros(label.shape, dtype=np.uint16)
    code = np.zeros(label.shape, dtype=np.uint8)
    ids, organs = [], []
    for lesion in lesions:
        rendered = lesion_fraction_render(lesion, geometry, body_from_lps)
        if rendered is None:
            continue
        ids.append(lesion.lesion_id)
        organ = lesion_organs[lesion.lesion_id]
        organs.append(organ)
        k0, j0, i0 = rendered.start_kji
        nk_, nj_, ni_ = rendered.fraction.shape
        box = (slice(k0, k0 + nk_), slice(j0, j0 + nj_), slice(i0, i0 + ni_))
        fraction[box] += rendered.fraction
        core = rendered.fraction >= 0.5
        index[box][core] = len(ids)
        label[box][core] = LABEL_CODES[f"{organ}_lesion"]
        code[box][rendered.fraction > 0] = LABEL_CODES[f"{organ}_lesion"]
    np.clip(fraction, 0.0, 1.0, out=fraction)
    return StudyLabels(label, fraction, index, code, tuple(ids), tuple(organs))
