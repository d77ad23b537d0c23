"""Simple liver cysts told from lesions (`segmentation.cysts.simple_cysts_filter`)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from imaging.core.geometry.preprocess import volume_resample
from imaging.core.geometry.volume import Volume
from imaging.core.segmentation.cysts import CystSettings, simple_cysts_filter
from imaging.core.segmentation.postprocess import LesionCandidate

# Four 14 mm spheres in a liver (3 x 3 x 5 mm voxels, 12 HU of noise), each its candidate.
CENTRES_MM = {1: (40.0, 40.0, 40.0), 2: (40.0, 40.0, 110.0), 3: (40.0, 110.0, 40.0),
              4: (40.0, 110.0, 110.0)}  # fmt: skip


def _case(liver_hu: float, inside_hu: dict[int, float], organs: dict[int, str] | None = None):
    rng = np.random.default_rng(7)
    shape = (16, 50, 50)  # k, j, i
    array = np.full(shape, liver_hu, np.float32)
    ks, js, is_ = np.ogrid[: shape[0], : shape[1], : shape[2]]
    for value, (z, y, x) in CENTRES_MM.items():
        ball = ((ks * 5.0 - z) ** 2 + (js * 3.0 - y) ** 2 + (is_ * 3.0 - x) ** 2) <= 7.0**2
        array[ball] = inside_hu[value]
    study = Volume(
        array + rng.normal(0, 12.0, shape).astype(np.float32), (3.0, 3.0, 5.0), (0, 0, 0)
    )
    grid = volume_resample(volume=study, spacing_mm=(1.5, 1.5, 1.5))
    k, j, i = np.ogrid[: grid.array.shape[0], : grid.array.shape[1], : grid.array.shape[2]]
    labels = np.zeros(grid.array.shape, np.uint16)
    for value, centre in CENTRES_MM.items():
        c = np.asarray(centre) / 1.5
        labels[((k - c[0]) ** 2 + (j - c[1]) ** 2 + (i - c[2]) ** 2) * 1.5**2 <= 6.5**2] = value
    organs = organs or {}
    candidates = tuple(
        LesionCandidate(
            label_value=v, organ=organs.get(v, "liver"), n_voxels=int((labels == v).sum()),
            volume_ml=float((labels == v).sum() * 1.5**3 / 1000), confidence=1.0,
            mean_probability=0.9, bbox_kji=((0, 1), (0, 1), (0, 1)),
        )
        for v in CENTRES_MM
    )  # fmt: skip
    return study, grid.with_array(labels, kind="label"), candidates


def test_water_dense_finding_in_an_enhanced_liver_is_a_simple_cyst_and_only_that():
    # 1: water (a cyst); 2: a hypodense metastasis taking up contrast (45 HU);
    # 3: water but filed as a lung candidate (the rule is the liver's); 4: a cyst whose
    # fluid is only the centre, its wall at 60 HU (a cystic metastasis).
    study, mask, candidates = _case(105.0, {1: 5.0, 2: 45.0, 3: 5.0, 4: 60.0}, {3: "lung"})
    ks, js, is_ = np.ogrid[: study.array.shape[0], : study.array.shape[1], : study.array.shape[2]]
    z, y, x = CENTRES_MM[4]
    study.array[((ks * 5.0 - z) ** 2 + (js * 3.0 - y) ** 2 + (is_ * 3.0 - x) ** 2) <= 3.0**2] = 8.0

    kept_mask, kept, record = simple_cysts_filter(
        study=study, candidate_mask=mask, candidates=candidates
    )

    assert [c.label_value for c in kept] == [2, 3, 4], record.details
    assert set(np.unique(kept_mask.array)) == {0, 2, 3, 4}
    assert record.name == "postprocess_simple_cysts"
    assert record.details["looked_at"] == 3 and record.details["removed"] == 1
    cyst = record.details["cysts"]["1"]
    assert cyst["median_hu"] <= 20.0 and cyst["liver_hu"] >= 100.0
    assert record.parameters["max_median_hu"] == 20.0 and record.parameters["min_liver_hu"] == 75.0


@pytest.mark.parametrize("liver_hu", [60.0, 70.0])
def test_without_contrast_the_rule_abstains(liver_hu):
    # Unenhanced, a hypodense metastasis can be as dark as a cyst: nothing is removed.
    study, mask, candidates = _case(liver_hu, {1: 5.0, 2: 15.0, 3: 5.0, 4: 10.0})

    kept_mask, kept, record = simple_cysts_filter(
        study=study, candidate_mask=mask, candidates=candidates
    )

    assert len(kept) == 4 and record.details["removed"] == 0
    assert kept_mask is mask


def test_the_thresholds_are_recorded_parameters_that_decide():
    study, mask, candidates = _case(105.0, {1: 5.0, 2: 45.0, 3: 30.0, 4: 60.0})

    _, kept, _ = simple_cysts_filter(
        study=study, candidate_mask=mask, candidates=candidates,
        settings=CystSettings(max_median_hu=35.0),
    )  # fmt: skip
    assert [c.label_value for c in kept] == [2, 4]
    _, kept, _ = simple_cysts_filter(
        study=study, candidate_mask=mask, candidates=candidates,
        settings=CystSettings(min_liver_hu=110.0),
    )  # fmt: skip
    assert len(kept) == 4


def test_a_mask_already_on_the_study_grid_gives_the_same_answer():
    from imaging.core.registration.transforms import volume_onto_grid

    study, mask, candidates = _case(105.0, {1: 5.0, 2: 45.0, 3: 5.0, 4: 60.0})
    on_study = volume_onto_grid(moving=mask, reference=study).array
    # An earlier filter dropped candidate 3: it is still in the shared mask, not in the list.
    fewer = tuple(c for c in candidates if c.label_value != 3)
    without = mask.with_array(np.where(mask.array == 3, 0, mask.array))
    _, kept, record = simple_cysts_filter(study=study, candidate_mask=without, candidates=fewer)
    _, shared, shared_record = simple_cysts_filter(
        study=study, candidate_mask=without, candidates=fewer, on_study=on_study
    )
    assert [c.label_value for c in shared] == [c.label_value for c in kept] == [2, 4]
    assert shared_record.details == record.details


def _liver_labels(mask: Volume, outside: dict[int, float]) -> Volume:
    """The network's organs on the candidates' grid: liver (2) everywhere but, beside each
    candidate in ``outside``, a region open to the image's nearer side edge that leaves
    that share of the candidate's columns (i) out of the liver, as the gallbladder's
    fossa opens the liver's under-surface."""
    labels = np.full(mask.array.shape, 2, np.uint8)
    width = mask.array.shape[2]
    for value, share in outside.items():
        ks, js, is_ = np.nonzero(mask.array == value)
        lo, hi = is_.min() - 4, is_.max() + 4
        rows = (slice(ks.min() - 4, ks.max() + 5), slice(js.min() - 4, js.max() + 5))
        if lo + hi < width:  # nearer the low edge: open towards it
            labels[rows[0], rows[1], : int(round(lo + share * (hi - lo)))] = 0
        else:
            labels[rows[0], rows[1], int(round(hi - share * (hi - lo))) :] = 0
    labels[mask.array > 0] = 4
    return mask.with_array(labels, kind="label")


@pytest.mark.parametrize("liver_hu", [60.0, 105.0])
def test_fluid_beside_the_liver_is_not_a_liver_lesion(liver_hu):
    # 1: water with half its surroundings outside the liver (a gallbladder); 2: water with
    # the liver all around (unenhanced: a possible metastasis, kept); 3: a hypodense
    # lesion at 45 HU half outside (an exophytic solid lesion, kept: not fluid); 4: water,
    # a sixth of its surroundings outside (a cystic lesion at the liver's edge, kept).
    study, mask, candidates = _case(liver_hu, {1: 5.0, 2: 0.0, 3: 45.0, 4: 5.0})
    organs = _liver_labels(mask, {1: 0.5, 3: 0.5, 4: 0.1})

    _, kept, record = simple_cysts_filter(
        study=study, candidate_mask=mask, candidates=candidates, organ_label=organs,
        settings=CystSettings(min_liver_hu=200.0),  # the simple-cyst rule abstains here
    )  # fmt: skip

    assert [c.label_value for c in kept] == [2, 3, 4], record.details
    beside = record.details["fluid_beside_liver"]
    assert list(beside) == ["1"] and beside["1"]["median_hu"] <= 20.0
    assert beside["1"]["liver_share"] < 0.9
    assert record.details["removed"] == 1 and "fluid beside the liver" in record.parameters["rule"]
    # Without the network's organs the rule cannot look.
    _, all_kept, _ = simple_cysts_filter(
        study=study, candidate_mask=mask, candidates=candidates,
        settings=CystSettings(min_liver_hu=200.0),
    )  # fmt: skip
    assert len(all_kept) == 4
    # A lesion whose rim the network left out of liver and lesion alike is still inside
    # the liver: what the liver encloses counts as liver.
    rimmed = organs.array.copy()
    rim = ndimage.binary_dilation(mask.array == 2, iterations=2) & (mask.array == 0)
    rimmed[rim] = 0
    _, kept, record = simple_cysts_filter(
        study=study, candidate_mask=mask, candidates=candidates,
        organ_label=organs.with_array(rimmed), settings=CystSettings(min_liver_hu=200.0),
    )  # fmt: skip
    assert [c.label_value for c in kept] == [2, 3, 4], record.details
    # So is the water of a large cystic lesion the network left out whole (18 mm from the
    # candidate, its part of it: past any box a few voxels round the candidate).
    centre = np.argwhere(mask.array == 2).mean(axis=0)
    k, j, i = np.indices(mask.array.shape)
    water = (k - centre[0]) ** 2 + (j - centre[1]) ** 2 + (i - centre[2]) ** 2 <= 12.0**2
    wide = organs.array.copy()
    wide[water & (mask.array == 0)] = 0
    _, kept, record = simple_cysts_filter(
        study=study, candidate_mask=mask, candidates=candidates,
        organ_label=organs.with_array(wide), settings=CystSettings(min_liver_hu=200.0),
    )  # fmt: skip
    assert [c.label_value for c in kept] == [2, 3, 4], record.details
    # In a noisy unenhanced liver another class can win the argmax around a lesion while
    # liver and liver lesion together still hold it: given the probabilities, their liver
    # (as every other step draws it) is read; without them the labels are. The labels are
    # lost over the lesion's surroundings and on to the grid's edge, so that no hole
    # filling gives them back.
    faint = organs.array.copy()
    around = ndimage.binary_dilation(mask.array == 2, iterations=4)
    around |= np.maximum.accumulate(around, axis=0)
    faint[around & (mask.array == 0)] = 0
    probabilities = np.zeros((5, *organs.array.shape), dtype=np.float16)
    probabilities[2][np.isin(organs.array, (2, 4))] = 0.4  # liver and lesion summed: 0.6
    probabilities[4][np.isin(organs.array, (2, 4))] = 0.2
    _, kept, record = simple_cysts_filter(
        study=study, candidate_mask=mask, candidates=candidates,
        organ_label=organs.with_array(faint), probabilities=probabilities,
        settings=CystSettings(min_liver_hu=200.0),
    )  # fmt: skip
    assert [c.label_value for c in kept] == [2, 3, 4], record.details
    _, kept, record = simple_cysts_filter(
        study=study, candidate_mask=mask, candidates=candidates,
        organ_label=organs.with_array(faint), settings=CystSettings(min_liver_hu=200.0),
    )  # fmt: skip
    assert [c.label_value for c in kept] == [3, 4], record.details


def _fine_cyst(liver_hu: float):
    """A 7 mm cyst (5 HU) in 1 mm voxels whose edge is blurred 2 mm into the liver (55 HU):
    the contrast filter's ring, 1-3 voxels out, lies in that blur."""
    rng = np.random.default_rng(11)
    shape = (40, 40, 40)
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    r = np.sqrt((k - 20.0) ** 2 + (j - 20.0) ** 2 + (i - 20.0) ** 2)
    array = np.where(r <= 7.0, 5.0, np.where(r <= 9.5, 55.0, liver_hu)).astype(np.float32)
    study = Volume(
        array + rng.normal(0, 10.0, shape).astype(np.float32), (1.0, 1.0, 1.0), (0, 0, 0)
    )
    grid = volume_resample(volume=study, spacing_mm=(1.5, 1.5, 1.5))
    gk, gj, gi = np.ogrid[: grid.array.shape[0], : grid.array.shape[1], : grid.array.shape[2]]
    inside = ((gk * 1.5 - 20) ** 2 + (gj * 1.5 - 20) ** 2 + (gi * 1.5 - 20) ** 2) <= 6.5**2
    mask = grid.with_array(inside.astype(np.uint16), kind="label")
    organs = grid.with_array(np.where(inside, 4, 2).astype(np.uint8), kind="label")
    candidate = LesionCandidate(
        label_value=1, organ="liver", n_voxels=int(inside.sum()),
        volume_ml=float(inside.sum() * 1.5**3 / 1000), confidence=1.0, mean_probability=0.9,
        bbox_kji=((0, 1), (0, 1), (0, 1)),
    )  # fmt: skip
    return study, mask, (candidate,), organs


def test_the_liver_is_judged_beyond_the_blur_of_the_cysts_own_edge():
    study, mask, candidates, organs = _fine_cyst(liver_hu=105.0)

    # The ring alone reads the blur (under 75 HU): the rule would abstain.
    _, kept, record = simple_cysts_filter(study=study, candidate_mask=mask, candidates=candidates)
    assert len(kept) == 1 and record.details["removed"] == 0
    # The network's liver 3-10 mm out reads the enhanced liver: a simple cyst.
    _, kept, record = simple_cysts_filter(
        study=study, candidate_mask=mask, candidates=candidates, organ_label=organs
    )
    assert kept == () and record.details["removed"] == 1
    cyst = record.details["cysts"]["1"]
    assert cyst["liver_hu"] >= 95.0 and cyst["ring_hu"] < 75.0
    # Unenhanced, the liver beyond the blur is under the threshold too: kept.
    study, mask, candidates, organs = _fine_cyst(liver_hu=62.0)
    _, kept, _ = simple_cysts_filter(
        study=study, candidate_mask=mask, candidates=candidates, organ_label=organs
    )
    assert len(kept) == 1
