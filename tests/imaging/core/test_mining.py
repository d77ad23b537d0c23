"""Hard negatives mined from labelled cases: a candidate the network makes where the
labels hold no lesion becomes a hard negative at its centre; one on a labelled lesion
does not."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from imaging.core.geometry.volume import Volume
from imaging.core.segmentation.network import CLASSES, SegmentationOutput
from imaging.core.segmentation.training.cases import TrainingCase
from imaging.core.segmentation.training.mining import _mined_by_organ, hard_negatives_mine
from imaging.core.segmentation.training.patches import _patch_centre

SHAPE = (40, 40, 40)
SPACING = (1.5, 1.5, 2.0)  # (i, j, k): not cubic, so that a swapped axis shows
LABELLED = (slice(8, 14), slice(10, 16), slice(12, 18))
UNLABELLED = (slice(26, 32), slice(22, 28), slice(6, 12))  # centre (28.5, 24.5, 8.5)


class _Stub:
    """A network that sees a liver lesion in both cubes, and liver everywhere else."""

    version = "stub-1"

    def segment(self, *, volume: Volume, device=None, tta: bool = True) -> SegmentationOutput:
        lesion = np.zeros(volume.array.shape, dtype=bool)
        lesion[LABELLED] = lesion[UNLABELLED] = True
        probabilities = np.zeros((len(CLASSES), *volume.array.shape), dtype=np.float16)
        probabilities[CLASSES.index("liver")] = np.where(lesion, 0.05, 0.95)
        probabilities[CLASSES.index("liver_lesion")] = np.where(lesion, 0.95, 0.05)
        label = volume.with_array(np.where(lesion, 4, 2).astype(np.uint8), kind="label")
        lesion_probability = volume.with_array(probabilities[4].astype(np.float32))
        return SegmentationOutput(
            image=volume, probabilities=probabilities, label=label,
            lesion_probability=lesion_probability,
            uncertainty=volume.with_array(np.zeros(volume.array.shape, dtype=np.float32)),
            model_version=self.version, model_sha256="", device="cpu", tta=False, timings={},
        )  # fmt: skip


def _case(hard: list[list[int]]) -> TrainingCase:
    rng = np.random.default_rng(0)
    hu = rng.normal(60.0, 8.0, SHAPE)
    hu[LABELLED] += 90.0
    hu[UNLABELLED] += 90.0
    code = np.zeros(SHAPE, dtype=np.uint8)
    code[LABELLED] = 4
    return TrainingCase(
        case_id="mine", hu=hu.astype(np.int16), organ=np.full(SHAPE, 2, dtype=np.uint8),
        lesion_fraction=(code > 0).astype(np.float16), lesion_code=code,
        lesion_index=(code > 0).astype(np.uint8),
        lesions=({"lesion_id": "mine-C01", "organ": "liver", "volume_ml": 0.5, "diameter_mm": 9.8},),
        spacing_mm=SPACING, meta={"source": "site", "hard_negatives_kji": hard},
    )  # fmt: skip


def test_a_candidate_off_the_labels_becomes_a_hard_negative_at_its_centre():
    (mined,), added = hard_negatives_mine(cases=[_case([[1, 2, 3]])], model=_Stub(), device="cpu")

    assert added == 1
    kept, centre = mined.meta["hard_negatives_kji"]
    assert kept == [1, 2, 3]  # the review's rejected candidates stay
    assert np.abs(np.asarray(centre) - np.array([28.5, 24.5, 8.5])).max() <= 1.0


def test_a_candidate_on_a_labelled_lesion_is_no_hard_negative():
    case = _case([])
    code = case.lesion_code.copy()
    code[UNLABELLED] = 4  # both cubes labelled now
    (mined,), added = hard_negatives_mine(
        cases=[replace(case, lesion_code=code)], model=_Stub(), device="cpu"
    )

    assert added == 0 and mined.meta["hard_negatives_kji"] == []


def test_hard_negatives_of_each_organ_get_an_equal_share_of_the_patches():
    """Nine lung false candidates and one in the liver: the liver's gets half of the
    hard-negative patches, not a tenth (the many lung ones would drown it)."""
    organ = np.ones(SHAPE, dtype=np.uint8)
    organ[:, :, 30:] = 2  # liver for i >= 30
    lung = [[5 + 3 * n, 20, 10] for n in range(9)]
    liver = [20, 20, 35]
    case = replace(_case([*lung, liver]), organ=organ)
    rng = np.random.default_rng(1)
    size = 8
    centres = np.array(
        [_patch_centre(case, rng, size, 0.0, hard_negative_share=1.0) for _ in range(600)]
    )
    at_liver = np.all(np.abs(centres - np.asarray(liver)) <= size // 4, axis=1).mean()
    assert 0.4 < at_liver < 0.6
    # One organ only: every hard negative as likely as another.
    lung_only = replace(case, meta={**case.meta, "hard_negatives_kji": lung})
    centres = np.array(
        [_patch_centre(lung_only, rng, size, 0.0, hard_negative_share=1.0) for _ in range(900)]
    )
    first = np.all(np.abs(centres - np.asarray(lung[0])) <= size // 4, axis=1).mean()
    assert 0.05 < first < 0.2


def test_the_mined_false_candidates_are_counted_per_organ():
    before = _case([[1, 2, 3]])
    (mined,), _ = hard_negatives_mine(cases=[before], model=_Stub(), device="cpu")
    assert _mined_by_organ(before=[before], after=[mined]) == {
        "elsewhere": 0,
        "lung": 0,
        "liver": 1,
    }
