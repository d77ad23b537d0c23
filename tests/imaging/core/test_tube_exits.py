"""Lung candidates that a tube as thick as they are leaves (`segmentation.tube_exits`)."""

from __future__ import annotations

import numpy as np
import pytest

from imaging.core.geometry.volume import Volume
from imaging.core.segmentation.tube_exits import TubeExitSettings, tube_exits_filter
from tests.imaging.core import lung_scene

SHAPE = (60, 80, 80)  # k, j, i on a 1.5 mm grid


def _filter(image: np.ndarray, labels: np.ndarray, organ: str = "lung", **settings):
    values = [int(v) for v in np.unique(labels) if v]
    candidates = tuple(lung_scene.candidate(labels, v, organ=organ) for v in values)
    return candidates, tube_exits_filter(
        image=lung_scene.volume(image),
        candidate_mask=lung_scene.volume(labels),
        candidates=candidates,
        settings=TubeExitSettings(**settings) if settings else None,
    )


def _stretch(tube: np.ndarray, start_mm: float, stop_mm: float) -> np.ndarray:
    """The voxels of ``tube`` with x in [start_mm, stop_mm)."""
    _, _, x = lung_scene.grid(SHAPE)
    return tube & (x >= start_mm) & (x < stop_mm)


def test_a_stretch_of_a_vessel_is_dropped_with_its_thickness_and_exit():
    image = lung_scene.lungs(SHAPE, 4)
    vessel = lung_scene.tube_along_x(SHAPE, y_mm=60, z_mm=45, radius_mm=3.0)
    image[vessel] = 40.0
    labels = np.zeros(SHAPE, np.uint16)
    labels[_stretch(vessel, 45, 60)] = 1  # the network outlined 15 mm of it

    _, (mask, kept, record) = _filter(image, labels)

    assert kept == () and not mask.array.any()
    judged = record.details["judged"]["1"]
    assert 2.5 <= judged["thickness_mm"] <= 3.5
    assert judged["exit_ratio"] >= 0.9
    assert record.details["removed"] == ["1"] and record.name == "postprocess_tube_exits"


def test_a_vessel_branching_is_dropped():
    """Where a vessel divides, the image is blob-like; the three tubes leave as thick."""
    image = lung_scene.lungs(SHAPE, 5)
    z, y, x = lung_scene.grid(SHAPE)
    parent = (z - 45) ** 2 + (y - 60) ** 2 <= 3.0**2
    parent = np.broadcast_to(parent, SHAPE) & (x < 60)
    branches = np.zeros(SHAPE, bool)
    for slope in (0.7, -0.7):  # two children from (x 60, y 60) in the axial plane
        branches |= ((z - 45) ** 2 + (y - 60 - slope * (x - 60)) ** 2 <= 2.5**2) & (x >= 58)
    image[parent | branches] = 40.0
    labels = np.zeros(SHAPE, np.uint16)
    labels[(parent | branches) & lung_scene.ball(SHAPE, (45, 60, 60), 6.0)] = 1

    _, (_, kept, record) = _filter(image, labels)

    assert kept == (), record.details["judged"]


def test_a_nodule_on_a_thinner_vessel_and_an_isolated_nodule_are_kept():
    image = lung_scene.lungs(SHAPE, 6)
    vessel = lung_scene.tube_along_x(SHAPE, y_mm=60, z_mm=45, radius_mm=2.0)
    juxtavascular = lung_scene.ball(SHAPE, (45, 60 + 6.5, 60), 5.0)  # touching the vessel
    isolated = lung_scene.ball(SHAPE, (45, 25, 30), 4.0)
    image[vessel] = 40.0
    image[juxtavascular | isolated] = 30.0
    labels = np.zeros(SHAPE, np.uint16)
    labels[juxtavascular | (vessel & lung_scene.ball(SHAPE, (45, 60, 60), 8.0))] = 1
    labels[isolated] = 2

    candidates, (_, kept, record) = _filter(image, labels)

    assert kept == candidates, record.details["judged"]
    assert record.details["judged"]["1"]["exit_ratio"] <= 0.6
    assert record.details["judged"]["2"]["exit_mm"] == 0.0


def test_a_nodule_on_the_pleura_is_not_read_as_joined_to_the_wall():
    image = lung_scene.lungs(SHAPE, 7)
    _, _, x = lung_scene.grid(SHAPE)
    wall = np.broadcast_to(x < 30.0, SHAPE)
    nodule = lung_scene.ball(SHAPE, (45, 60, 33.0), 5.0)
    image[wall] = 40.0
    image[nodule] = 30.0
    labels = np.zeros(SHAPE, np.uint16)
    labels[nodule & ~wall] = 1

    candidates, (_, kept, record) = _filter(image, labels)

    assert kept == candidates, record.details["judged"]


def test_half_a_nodule_outlined_is_kept_by_its_blob_response():
    """The rest of the nodule leaves the half the network outlined as thick as it (the
    ratio alone would drop it); its blob response says nodule."""
    image = lung_scene.lungs(SHAPE, 8)
    nodule = lung_scene.ball(SHAPE, (45, 60, 60), 4.0)
    image[nodule] = 30.0
    labels = np.zeros(SHAPE, np.uint16)
    labels[_stretch(nodule, 0, 60)] = 1

    candidates, (_, kept, record) = _filter(image, labels)

    assert kept == candidates
    judged = record.details["judged"]["1"]
    assert judged["exit_ratio"] >= TubeExitSettings().min_exit_ratio
    assert judged["dot_hu"] >= TubeExitSettings().strong_dot_hu
    _, (_, kept, _) = _filter(image, labels, strong_dot_hu=judged["dot_hu"] + 1)
    assert kept == ()


def test_only_lung_candidates_up_to_the_size_limit_are_judged():
    image = lung_scene.lungs(SHAPE, 9)
    vessel = lung_scene.tube_along_x(SHAPE, y_mm=60, z_mm=45, radius_mm=3.0)
    image[vessel] = 40.0
    labels = np.zeros(SHAPE, np.uint16)
    labels[_stretch(vessel, 45, 60)] = 1

    candidates, (_, kept, record) = _filter(image, labels, organ="liver")
    assert kept == candidates and record.details["looked_at"] == 0
    candidates, (_, kept, record) = _filter(image, labels, max_volume_ml=0.1)
    assert kept == candidates and record.details["looked_at"] == 0


def test_image_and_mask_on_different_grids_are_refused():
    labels = Volume(
        array=np.zeros((10, 10, 10), np.uint16), spacing_mm=(1.5,) * 3, origin_mm=(0, 0, 0)
    )
    with pytest.raises(ValueError, match="share a grid"):
        tube_exits_filter(
            image=lung_scene.volume(lung_scene.lungs(SHAPE, 1)),
            candidate_mask=labels,
            candidates=(),
        )
