"""Lung candidates that are pieces of tubes told from nodules (`segmentation.blobness`)."""

from __future__ import annotations

import numpy as np
import pytest

from imaging.core.geometry.volume import Volume
from imaging.core.segmentation.blobness import BlobSettings, tubular_candidates_filter
from tests.imaging.core import lung_scene
from tests.imaging.core.lung_scene import LUNG_HU

SHAPE = (60, 80, 80)  # k, j, i on a 1.5 mm grid


def _ball(centre_mm, radius_mm) -> np.ndarray:
    return lung_scene.ball(SHAPE, centre_mm, radius_mm)


def _tube_along_x(y_mm: float, z_mm: float, radius_mm: float) -> np.ndarray:
    return lung_scene.tube_along_x(SHAPE, y_mm, z_mm, radius_mm)


def _lungs(seed: int = 3) -> np.ndarray:
    return lung_scene.lungs(SHAPE, seed)


_candidate, _volume = lung_scene.candidate, lung_scene.volume


def _nodule_and_vessel_piece() -> tuple[np.ndarray, np.ndarray]:
    """Lungs with a 10 mm nodule (label 1) and a 4 mm vessel of which the network
    outlined 15 mm (label 2): the image and the candidate labels."""
    image = _lungs()
    nodule = _ball((45, 30, 30), 5.0)
    vessel = _tube_along_x(y_mm=90, z_mm=45, radius_mm=2.0)
    image[nodule] = 30.0
    image[vessel] = 40.0
    labels = np.zeros(SHAPE, np.uint16)
    labels[nodule] = 1
    segment = vessel.copy()
    segment[:, :, :20] = False
    segment[:, :, 30:] = False
    labels[segment] = 2
    return image, labels


def test_a_nodule_is_kept_and_a_vessel_segment_dropped_with_the_evidence():
    image, labels = _nodule_and_vessel_piece()
    candidates = (_candidate(labels, 1), _candidate(labels, 2))

    mask, kept, record = tubular_candidates_filter(
        image=_volume(image), candidate_mask=_volume(labels), candidates=candidates
    )

    assert [c.label_value for c in kept] == [1]
    assert set(np.unique(mask.array)) == {0, 1}
    dots = {k: v["dot_hu"] for k, v in record.details["responses"].items()}
    assert dots["1"] >= 3 * BlobSettings().min_dot_hu
    assert dots["2"] < BlobSettings().min_dot_hu
    assert record.details["removed"] == 1 and record.name == "postprocess_tubular"


def test_a_nodule_on_a_vessel_and_a_faint_ground_glass_nodule_are_kept():
    image = _lungs()
    vessel = _tube_along_x(y_mm=60, z_mm=45, radius_mm=2.0)
    juxtavascular = _ball((45, 60 + 5.5, 60), 4.5)  # touching the vessel beside it
    ground_glass = _ball((45, 25, 60), 6.0)
    image[vessel] = 40.0
    image[juxtavascular] = 20.0
    image[ground_glass] = LUNG_HU + 150.0  # pure ground glass: 150 HU above the lung
    labels = np.zeros(SHAPE, np.uint16)
    joined = juxtavascular | (vessel & _ball((45, 60, 60), 9.0))  # with the vessel's stub
    labels[joined] = 1
    labels[ground_glass] = 2
    candidates = (_candidate(labels, 1), _candidate(labels, 2))

    _, kept, record = tubular_candidates_filter(
        image=_volume(image), candidate_mask=_volume(labels), candidates=candidates
    )

    assert [c.label_value for c in kept] == [1, 2], record.details["responses"]


def test_only_lung_candidates_up_to_the_size_limit_are_judged():
    image = _lungs()
    vessel = _tube_along_x(y_mm=60, z_mm=45, radius_mm=2.0)
    image[vessel] = 40.0
    labels = np.zeros(SHAPE, np.uint16)
    piece = vessel.copy()
    piece[:, :, :20] = False
    piece[:, :, 30:] = False
    labels[piece] = 1
    liver = (_candidate(labels, 1, organ="liver"),)
    _, kept, record = tubular_candidates_filter(
        image=_volume(image), candidate_mask=_volume(labels), candidates=liver
    )
    assert kept == liver and record.details["looked_at"] == 0

    lung = (_candidate(labels, 1),)
    _, kept, _ = tubular_candidates_filter(
        image=_volume(image),
        candidate_mask=_volume(labels),
        candidates=lung,
        settings=BlobSettings(max_volume_ml=lung[0].volume_ml / 2),
    )
    assert kept == lung


def test_anisotropic_grid_gives_the_same_reading():
    """The scales are in mm: a grid of 1.5 x 1.5 x 3 mm judges the same shapes alike."""
    image, labels = _nodule_and_vessel_piece()
    thick = Volume(array=image[::2], spacing_mm=(1.5, 1.5, 3.0), origin_mm=(0.0, 0.0, 0.0))
    thick_labels = thick.with_array(labels[::2], kind="label")
    candidates = (_candidate(labels[::2], 1), _candidate(labels[::2], 2))
    _, kept, _ = tubular_candidates_filter(
        image=thick, candidate_mask=thick_labels, candidates=candidates
    )
    assert [c.label_value for c in kept] == [1]


def test_image_and_mask_on_different_grids_are_refused():
    image = _volume(_lungs())
    labels = Volume(
        array=np.zeros((10, 10, 10), np.uint16), spacing_mm=(1.5,) * 3, origin_mm=(0, 0, 0)
    )
    with pytest.raises(ValueError, match="share a grid"):
        tubular_candidates_filter(image=image, candidate_mask=labels, candidates=())


@pytest.mark.parametrize(("radius_mm", "embedded_mm"), [(3.0, 0.0), (4.5, 2.0), (6.0, 4.0)])
def test_a_nodule_on_the_pleura_is_kept(radius_mm, embedded_mm):
    """A nodule on the chest wall is a bump on the wall, not a blob in the image: judged
    with the wall taken away, it is kept (without that, all three were dropped)."""
    image = _lungs()
    _, _, x = lung_scene.grid(SHAPE)
    wall = np.broadcast_to(x < 30.0, SHAPE)
    image[wall] = 40.0
    nodule = _ball((45, 60, 30.0 + radius_mm - embedded_mm), radius_mm)
    image[nodule] = 30.0
    labels = np.zeros(SHAPE, np.uint16)
    labels[nodule & ~wall] = 1  # the network outlines the part in the lung
    candidates = (_candidate(labels, 1),)

    _, kept, record = tubular_candidates_filter(
        image=_volume(image), candidate_mask=_volume(labels), candidates=candidates
    )

    assert kept == candidates, record.details["responses"]


def test_a_small_solid_nodule_is_kept_a_small_vessel_piece_is_not():
    image = _lungs()
    nodule = _ball((45, 30, 30), 2.0)  # 4 mm across: judged at the small scale too
    vessel = _tube_along_x(y_mm=90, z_mm=45, radius_mm=1.5)
    image[nodule] = 30.0
    image[vessel] = 40.0
    labels = np.zeros(SHAPE, np.uint16)
    labels[nodule] = 1
    piece = vessel.copy()
    piece[:, :, :40] = False
    piece[:, :, 44:] = False  # 6 mm of a 3 mm vessel: smaller than the nodule
    labels[piece] = 2
    candidates = (_candidate(labels, 1), _candidate(labels, 2))

    _, kept, record = tubular_candidates_filter(
        image=_volume(image), candidate_mask=_volume(labels), candidates=candidates
    )

    assert [c.label_value for c in kept] == [1], record.details["responses"]
