"""Lung candidates holding a nodule and a vessel tree cut back to the nodule
(`segmentation.vessel_split`)."""

from __future__ import annotations

import numpy as np
import pytest

from imaging.core.segmentation.blobness import tubular_candidates_filter
from imaging.core.segmentation.vessel_split import SplitSettings, vessel_trees_split
from tests.imaging.core import lung_scene
from tests.imaging.core.lung_scene import LUNG_HU, SPACING

SHAPE = (50, 60, 90)  # k, j, i on a 1.5 mm grid
VESSEL_HU = 40.0


def _grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return lung_scene.grid(SHAPE)


def _ball(centre_mm, radius_mm) -> np.ndarray:
    return lung_scene.ball(SHAPE, centre_mm, radius_mm)


def _vessel(z_mm: float = 37.5, y_mm: float = 45.0, radius_mm: float = 2.0) -> np.ndarray:
    """A vessel along i across the whole grid, with a branch along k."""
    z, y, x = _grid()
    along = np.broadcast_to((z - z_mm) ** 2 + (y - y_mm) ** 2 <= radius_mm**2, SHAPE)
    branch = np.broadcast_to((x - 100.0) ** 2 + (y - y_mm) ** 2 <= radius_mm**2, SHAPE)
    return along | (branch & (z >= z_mm))


def _scene(
    *nodules: tuple[tuple[float, float, float], float, float],
) -> tuple[np.ndarray, np.ndarray]:
    """Noisy lungs with the vessel and ``nodules`` ((centre mm, radius mm, HU), ...):
    the image and the network's one candidate (label 1) outlining all of them."""
    rng = np.random.default_rng(5)
    image = np.full(SHAPE, LUNG_HU, np.float32) + rng.normal(0, 15, SHAPE).astype(np.float32)
    vessel = _vessel()
    image[vessel] = VESSEL_HU
    outline = vessel.copy()
    for centre, radius, hu in nodules:
        ball = _ball(centre, radius)
        image[ball] = np.maximum(image[ball], hu)
        outline |= ball
    return image, outline.astype(np.uint16)


_candidate, _volume = lung_scene.candidate, lung_scene.volume


def _split(image: np.ndarray, labels: np.ndarray, candidates=None, settings=None):
    return vessel_trees_split(
        image=_volume(image),
        candidate_mask=_volume(labels),
        candidates=candidates or (_candidate(labels),),
        lesion_probability=_volume((labels > 0).astype(np.float32) * 0.9),
        settings=settings,
    )


def test_a_nodule_on_a_vessel_is_cut_back_to_the_nodule_and_the_cut_recorded():
    nodule = _ball((37.5, 36.0, 60.0), 6.0)
    image, labels = _scene(((37.5, 36.0, 60.0), 6.0, 30.0))
    (parent,) = (_candidate(labels),)

    mask, kept, record = _split(image, labels)

    (piece,) = kept
    cut = mask.array == piece.label_value
    assert piece.label_value == parent.label_value
    assert 0.8 * nodule.sum() <= cut.sum() <= 1.4 * nodule.sum()
    assert (cut & nodule).sum() >= 0.9 * nodule.sum()
    assert not cut[:, :, :20].any() and not cut[:, :, 70:].any()  # the vessel away from it
    assert piece.volume_ml == pytest.approx(cut.sum() * SPACING**3 / 1000)
    assert piece.volume_ml < parent.volume_ml / 3
    (split,) = record.details["split"]
    assert split["label_value"] == parent.label_value
    assert split["dropped_ml"] > 2 * piece.volume_ml
    assert split["pieces"][0]["dot_hu"] >= SplitSettings().min_piece_dot_hu


def test_a_part_solid_nodule_keeps_its_ground_glass():
    ground_glass = _ball((37.5, 33.0, 60.0), 8.0)
    image, labels = _scene(((37.5, 33.0, 60.0), 8.0, -450.0), ((37.5, 33.0, 60.0), 3.5, 20.0))

    mask, kept, _ = _split(image, labels)

    (piece,) = kept
    cut = mask.array == piece.label_value
    assert (cut & ground_glass).sum() >= 0.85 * ground_glass.sum()
    assert not cut[:, :, :25].any() and not cut[:, :, 70:].any()


def test_two_nodules_joined_by_a_vessel_become_two_candidates():
    first, second = _ball((37.5, 36.0, 30.0), 5.5), _ball((37.5, 36.0, 80.0), 5.5)
    image, labels = _scene(((37.5, 36.0, 30.0), 5.5, 30.0), ((37.5, 36.0, 80.0), 5.5, 30.0))

    mask, kept, record = _split(image, labels)

    assert len(kept) == 2
    values = {c.label_value for c in kept}
    assert len(values) == 2 and 1 in values
    for nodule in (first, second):
        held = {int(v) for v in np.unique(mask.array[nodule]) if v}
        assert len(held) == 1 and (mask.array[nodule] > 0).mean() >= 0.9
    for candidate in kept:
        assert candidate.n_voxels == int((mask.array == candidate.label_value).sum())
    assert len(record.details["split"][0]["pieces"]) == 2


def test_a_lone_nodule_a_small_candidate_and_a_liver_candidate_stay_whole():
    rng = np.random.default_rng(2)
    image = np.full(SHAPE, LUNG_HU, np.float32) + rng.normal(0, 15, SHAPE).astype(np.float32)
    lone = _ball((37.5, 40.0, 40.0), 7.0)
    image[lone] = 30.0
    labels = (lone | _ball((37.5, 40.0, 40.0), 8.5)).astype(np.uint16)

    mask, kept, record = _split(image, labels)
    assert kept == (_candidate(labels),)
    assert mask.array is labels or np.array_equal(mask.array, labels)
    assert record.details["split"] == []

    image, tree = _scene(((37.5, 36.0, 60.0), 6.0, 30.0))
    for candidates, settings in (
        ((_candidate(tree, organ="liver"),), None),
        ((_candidate(tree),), SplitSettings(min_volume_ml=_candidate(tree).volume_ml + 0.1)),
    ):
        mask, kept, record = _split(image, tree, candidates, settings)
        assert kept == candidates and record.details["split"] == []
        assert np.array_equal(mask.array, tree)


def test_image_and_candidates_on_different_grids_are_refused():
    image, labels = _scene(((37.5, 36.0, 60.0), 6.0, 30.0))
    with pytest.raises(ValueError, match="share a grid"):
        _split(image[:-1], labels)


def test_a_cavitating_nodule_on_a_vessel_stays_one_lesion():
    wall = _ball((37.5, 33.0, 60.0), 8.0) & ~_ball((37.5, 33.0, 60.0), 4.5)
    image, labels = _scene(((37.5, 33.0, 60.0), 8.0, 30.0))
    image[_ball((37.5, 33.0, 60.0), 4.5)] = LUNG_HU
    labels[_ball((37.5, 33.0, 60.0), 4.5)] = 0

    mask, kept, record = _split(image, labels)

    (piece,) = kept
    assert record.details["split"][0]["seeds"] >= 2
    assert ((mask.array == piece.label_value) & wall).sum() >= 0.9 * wall.sum()


def test_a_vessel_tree_whose_only_blobs_are_its_crossings_is_dropped():
    rng = np.random.default_rng(5)
    image = np.full(SHAPE, LUNG_HU, np.float32) + rng.normal(0, 15, SHAPE).astype(np.float32)
    z, _, x = _grid()
    crossing = np.broadcast_to((z - 37.5) ** 2 + (x - 60.0) ** 2 <= 3.0**2, SHAPE)
    tree = _vessel(radius_mm=3.0) | crossing
    image[tree] = VESSEL_HU
    labels = tree.astype(np.uint16)
    _, by_blob_filter, _ = tubular_candidates_filter(
        image=_volume(image), candidate_mask=_volume(labels), candidates=(_candidate(labels),)
    )
    assert by_blob_filter == (_candidate(labels),)  # a crossing is blob enough for it

    mask, kept, record = _split(image, labels)

    assert kept == () and not mask.array.any()
    (tree_record,) = record.details["vessel_trees"]
    assert tree_record["label_value"] == 1 and tree_record["seeds"] >= 1
    assert tree_record["vessel_share"] >= SplitSettings().min_tree_share
