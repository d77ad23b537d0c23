"""The training generator's wider variation: warped anatomy, lesions of every kind and
placement, and crops whose truth is exact."""

from __future__ import annotations

import numpy as np
import pytest

from imaging.core.synthetic.variation import scene_organ, scene_sample, warp_sample
from imaging.core.synthetic.variation_lesions import (
    LIVER_KINDS,
    LIVER_PLACEMENTS,
    LUNG_KINDS,
    LUNG_PLACEMENTS,
    lesions_draw,
)
from imaging.core.synthetic.variation_render import acquisition_sample, crop_render


def test_the_warp_is_bounded_and_smooth():
    rng = np.random.default_rng(0)
    for _ in range(5):
        warp = warp_sample(rng, max_mm=14.0)
        points = rng.uniform(-200, 200, (2000, 3))
        moved = np.stack(warp.apply(*points.T), axis=1)
        assert np.linalg.norm(moved - points, axis=1).max() <= warp.reach_mm + 1e-6 <= 14.0 + 1e-6
        step = np.array([0.5, 0.0, 0.0])
        again = np.stack(warp.apply(*(points + step).T), axis=1)
        # The displacement changes by less than half of any step: the warp folds nothing.
        assert (np.linalg.norm((again - moved) - step, axis=1) / 0.5).max() < 0.5


def test_lesions_of_every_kind_and_placement_sit_in_their_organ():
    rng = np.random.default_rng(1)
    seen = {"lung": set(), "liver": set()}
    places = {"lung": set(), "liver": set()}
    for _ in range(12):
        scene = scene_sample(rng)
        for lesion in lesions_draw(scene, rng):
            seen[lesion.organ].add(lesion.kind)
            places[lesion.organ].add(lesion.placement)
            assert scene_organ(scene, np.asarray(lesion.shape.centre_body_mm))[0] == lesion.organ
            assert lesion.volume_ml > 0
    assert seen["lung"] >= set(LUNG_KINDS) - {"calcified"} and seen["liver"] >= set(LIVER_KINDS) - {
        "hyperdense"
    }
    assert places["lung"] == set(LUNG_PLACEMENTS) and places["liver"] <= set(LIVER_PLACEMENTS)


def test_a_crop_carries_the_exact_volume_of_the_lesion_it_is_centred_on():
    rng = np.random.default_rng(4)
    scene = scene_sample(rng)
    lesion = min(lesions_draw(scene, rng), key=lambda x: x.volume_ml)
    assert lesion.shape.bounding_radius_mm(lesion.volume_ml) < 30.0  # the crop holds it
    crop = crop_render(scene=scene, lesions=(lesion,), centre_scene_mm=np.asarray(lesion.shape.centre_body_mm),
                       acquisition=acquisition_sample(rng), rng=rng, size=48)  # fmt: skip
    assert crop.hu.shape == crop.organ.shape == crop.lesion_fraction.shape == (48, 48, 48)
    assert (crop.lesion_index == 1).any()
    assert set(np.unique(crop.lesion_code)) == {0, 3 if lesion.organ == "lung" else 4}
    # Partial-volume truth: the occupancies sum to the lesion's exact volume.
    assert crop.lesion_fraction.sum() * 1.5**3 / 1000 == pytest.approx(lesion.volume_ml, rel=0.02)
    # The labels follow the image: lung voxels are air-dense.
    lung = (crop.organ == 1) & (crop.lesion_fraction == 0)
    assert lung.sum() > 100 if lesion.organ == "lung" else True
    if lung.sum() > 100:
        assert np.median(crop.hu[lung]) < -500


@pytest.mark.slow
def test_liver_lesions_reach_near_isodense_contrast():
    # Subtle metastases in an enhanced liver are where a detector trained on conspicuous
    # ones goes blind: the generator draws hypodense lesions down to 12 HU under the liver
    # and enhancing rims from just under the liver's CT number.
    rng = np.random.default_rng(7)
    drops, rims = [], []
    for _ in range(40):
        scene = scene_sample(rng)
        liver_hu = scene.anatomy.liver_hu
        for lesion in lesions_draw(scene, rng):
            if lesion.kind in ("hypodense", "lobulated"):
                drops.append(liver_hu - lesion.shape.hu)
            elif lesion.kind == "rim_enhancing":
                rims.append(lesion.shells[0][2] - liver_hu)
    assert len(drops) >= 10 and len(rims) >= 5
    assert min(drops) < 22.0 and min(drops) >= 12.0 - 1e-3
    assert min(rims) < 15.0 and min(rims) >= -5.0 - 1e-3
