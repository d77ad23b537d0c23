"""Lung candidates that are stretches of an enhanced vessel (`segmentation.enhanced_vessels`)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from imaging.core.geometry.volume import Volume
from imaging.core.segmentation.enhanced_vessels import (
    EnhancedVesselSettings,
    enhanced_vessels_filter,
)
from tests.imaging.core import lung_scene

SHAPE = (50, 70, 70)  # k, j, i on a 1.5 mm grid
CENTRE = (37.5, 52.5, 52.5)


def _filter(image: np.ndarray, labels: np.ndarray, organ: str = "lung", **settings):
    values = [int(v) for v in np.unique(labels) if v]
    candidates = tuple(lung_scene.candidate(labels, v, organ=organ) for v in values)
    return candidates, enhanced_vessels_filter(
        image=lung_scene.volume(image),
        candidate_mask=lung_scene.volume(labels),
        candidates=candidates,
        settings=EnhancedVesselSettings(**settings) if settings else None,
    )


def _vessel_stretch(vessel_hu: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A vessel of ``vessel_hu`` crossing the scene, and the network's outline of 12 mm of
    it with the lung just around it."""
    image = lung_scene.lungs(SHAPE, seed)
    vessel = lung_scene.tube_along_x(SHAPE, y_mm=CENTRE[1], z_mm=CENTRE[0], radius_mm=3.0)
    image[vessel] = vessel_hu
    labels = np.zeros(SHAPE, np.uint16)
    labels[lung_scene.tube_along_x(SHAPE, y_mm=CENTRE[1], z_mm=CENTRE[0], radius_mm=4.5)
           & lung_scene.ball(SHAPE, CENTRE, 6.0)] = 1  # fmt: skip
    return image, labels


def test_a_stretch_of_an_enhanced_vessel_is_dropped_with_its_share_and_exit():
    image, labels = _vessel_stretch(180.0, 1)

    _, (mask, kept, record) = _filter(image, labels)

    assert kept == () and not mask.array.any()
    judged = record.details["judged"]["1"]
    assert judged["blood_share"] >= 0.9
    assert judged["exit_ml"] >= EnhancedVesselSettings().min_exit_ml
    assert record.name == "postprocess_enhanced_vessels" and record.details["removed"] == ["1"]


def test_without_contrast_the_same_stretch_is_not_judged_a_vessel():
    image, labels = _vessel_stretch(40.0, 2)

    candidates, (_, kept, record) = _filter(image, labels)

    assert kept == candidates
    assert record.details["judged"]["1"] == {"blood_share": 0.0, "exit_ml": 0.0}


def test_a_nodule_against_an_enhanced_vessel_is_kept():
    """The vessel runs past the nodule and the outline takes in a little of it: a small
    share of the nodule's voxels at blood density, joined to the vessel outside."""
    image = lung_scene.lungs(SHAPE, 3)
    vessel = lung_scene.tube_along_x(SHAPE, y_mm=CENTRE[1] + 7.5, z_mm=CENTRE[0], radius_mm=2.0)
    nodule = lung_scene.ball(SHAPE, CENTRE, 6.0)
    image[nodule] = 40.0
    image[vessel] = 180.0
    labels = np.zeros(SHAPE, np.uint16)
    labels[lung_scene.ball(SHAPE, CENTRE, 6.5)] = 1

    candidates, (_, kept, record) = _filter(image, labels)

    assert kept == candidates, record.details["judged"]
    judged = record.details["judged"]["1"]
    assert 0.0 < judged["blood_share"] < EnhancedVesselSettings().min_blood_share
    assert judged["exit_ml"] > 0.0


def test_a_calcified_nodule_is_kept_its_calcium_is_not_blood():
    """Blurred by the scanner, the calcification's edge passes through the blood pool's
    band; those voxels stay inside the nodule, no vessel leaves it."""
    image = lung_scene.lungs(SHAPE, 4)
    nodule = lung_scene.ball(SHAPE, CENTRE, 6.0)
    image[nodule] = 40.0
    image[lung_scene.ball(SHAPE, CENTRE, 3.5)] = 700.0
    image = ndimage.gaussian_filter(image, 0.8)
    labels = np.zeros(SHAPE, np.uint16)
    labels[nodule] = 1

    candidates, (_, kept, record) = _filter(image, labels)

    assert kept == candidates, record.details["judged"]
    judged = record.details["judged"]["1"]
    assert judged["blood_share"] > 0.0 and judged["exit_ml"] == 0.0


def test_only_lung_candidates_are_judged_and_the_thresholds_are_the_settings():
    image, labels = _vessel_stretch(180.0, 5)

    candidates, (_, kept, record) = _filter(image, labels, organ="liver")
    assert kept == candidates and record.details["looked_at"] == 0
    candidates, (_, kept, _) = _filter(image, labels, min_exit_ml=100.0)
    assert kept == candidates


def test_image_and_mask_on_different_grids_are_refused():
    labels = Volume(
        array=np.zeros((10, 10, 10), np.uint16), spacing_mm=(1.5,) * 3, origin_mm=(0, 0, 0)
    )
    with pytest.raises(ValueError, match="share a grid"):
        enhanced_vessels_filter(
            image=lung_scene.volume(lung_scene.lungs(SHAPE, 1)), candidate_mask=labels,
            candidates=(),
        )  # fmt: skip
