"""A radiologist's review of one study as a training case, with hard labels.

The labels are built on the study's stored grid, then put on the model grid by
`training.site.site_case_build` (as a site's labelled series are):

- organs (lung, liver) are what the model that made the segmentation labels there (a
  reviewer judges lesions, not organ outlines), with its lesion classes turned back into
  their organ: a lesion is only what the review says is one;
- an ``accepted`` or ``edited`` candidate is a lesion of its organ's class (lung nodule
  or liver lesion), drawn as the segmentation drew it, or as the reviewer redrew it when
  the correction carries a ``mask``;
- an ``added`` lesion (one the model missed) is its drawn ``mask``, or its component of
  the segmentation version the radiologist's correction made;
- a ``rejected`` candidate stays organ or background: a hard negative.

Every candidate of the segmentation must have a decision: a study still awaiting review
is not a training example (its undecided candidates would teach either answer). A lesion
of an organ RadTrack's network has no class for (a lymph node) is left out of the
targets and said so in the case's ``meta``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from imaging.core.geometry.volume import Volume
from imaging.core.registration.transforms import volume_onto_grid
from imaging.core.segmentation.network import SegmenterSpec
from imaging.core.segmentation.training.cases import TrainingCase
from imaging.core.segmentation.training.site import site_case_build

KINDS = ("accepted", "rejected", "edited", "added")
LESION_CODE = {"lung": 3, "liver": 4}


@dataclass(frozen=True, eq=False)
class Correction:
    """One reviewed candidate (``component_label`` of the segmentation's mask) or one drawn
    lesion (``mask``: a label volume, non-zero inside, on any grid)."""

    kind: str
    organ: str
    component_label: int | None = None
    mask: Volume | None = None


def _on_grid(volume: Volume, reference: Volume) -> np.ndarray:
    label = volume.with_array((volume.array > 0).astype(np.uint8), kind="label")
    return volume_onto_grid(moving=label, reference=reference, default_value=0).array > 0


def reviewed_labels(
    *,
    image: Volume,
    candidate_mask: Volume,
    organ_label: Volume,
    corrections: Sequence[Correction],
) -> tuple[Volume, list[str]]:
    """Class codes (`network.CLASSES`) on ``image``'s grid, and notes on what was left out."""
    for c in corrections:
        if c.kind not in KINDS:
            raise ValueError(f"correction kind {c.kind!r} is not one of {', '.join(KINDS)}")
        if c.kind == "added" and c.mask is None and c.component_label is None:
            raise ValueError("an added lesion needs its drawn mask (or its label) to be trained on")
    decided = {c.component_label for c in corrections if c.component_label is not None}
    present = {int(v) for v in np.unique(candidate_mask.array) if v}
    undecided = sorted(present - decided)
    if undecided:
        raise ValueError(f"candidate(s) {undecided} of the segmentation have no review decision")
    grid_mask = volume_onto_grid(moving=candidate_mask, reference=image, default_value=0).array
    organs = volume_onto_grid(moving=organ_label, reference=image, default_value=0).array
    label = organs.astype(np.uint8).copy()
    label[label == 3] = 1
    label[label == 4] = 2
    notes = []
    for c in corrections:
        if c.kind == "rejected":
            continue
        if c.organ not in LESION_CODE:
            notes.append(f"{c.kind} {c.organ} lesion left out: the network has no {c.organ} class")
            continue
        # A drawn outline wins over the segmentation's own.
        inside = _on_grid(c.mask, image) if c.mask is not None else grid_mask == c.component_label
        label[inside] = LESION_CODE[c.organ]
    return image.with_array(label, kind="label"), notes


def reviewed_case(
    *,
    case_id: str,
    image: Volume,
    candidate_mask: Volume,
    organ_label: Volume,
    corrections: Sequence[Correction],
    spec: SegmenterSpec,
) -> TrainingCase:
    """The reviewed study as a `TrainingCase` on ``spec``'s grid (hard targets)."""
    label, notes = reviewed_labels(
        image=image, candidate_mask=candidate_mask, organ_label=organ_label, corrections=corrections
    )
    rejected = [
        int(c.component_label)
        for c in corrections
        if c.kind == "rejected" and c.component_label is not None
    ]
    centres = ndimage.center_of_mass(
        candidate_mask.array > 0, candidate_mask.array, rejected
    ) if rejected else []  # fmt: skip
    hard = [
        candidate_mask.index_to_lps(np.asarray(kji, dtype=float)[::-1]).tolist() for kji in centres
    ]
    case = site_case_build(case_id=case_id, image=image, label=label, spec=spec,
                           hard_negatives_lps_mm=hard)  # fmt: skip
    counts = {k: sum(c.kind == k for c in corrections) for k in KINDS}
    return TrainingCase(
        case_id=case.case_id, hu=case.hu, organ=case.organ, lesion_fraction=case.lesion_fraction,
        lesion_code=case.lesion_code, lesion_index=case.lesion_index, lesions=case.lesions,
        spacing_mm=case.spacing_mm, meta={"source": "review", "corrections": counts, "notes": notes,
                                          "hard_negatives_kji": case.meta["hard_negatives_kji"]},
    )  # fmt: skip
