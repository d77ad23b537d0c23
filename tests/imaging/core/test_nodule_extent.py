"""Lung nodules the network outlined a piece of, given their whole extent
(`segmentation.nodule_extent`)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from imaging.core.geometry.volume import Volume
from imaging.core.segmentation.nodule_extent import nodule_extents
from tests.imaging.core.lung_scene import SPACING, ball, candidate, grid, tube_along_x

SHAPE = (70, 90, 90)  # k, j, i on the model grid (1.5 mm)
NODULE = (52.5, 67.5, 67.5)  # mm (z, y, x): a 24 mm solid nodule in the lung
RADIUS = 12.0


def _scene(vessel_radius_mm: float = 4.0, seed: int = 3) -> tuple[Volume, np.ndarray]:
    """A chest wall (40 HU) round one lung (-850 HU), air outside; in the lung a solid
    nodule with a vessel (``vessel_radius_mm``) running from it to the chest wall, as a
    vessel runs to the hilum; blurred and noisy. Also the nodule's voxels."""
    z, y, x = grid(SHAPE)
    body = (y >= 7.5) & (y < 127.5) & (x >= 7.5) & (x < 127.5)
    lung = (z >= 7.5) & (z < 97.5) & (y >= 22.5) & (y < 112.5) & (x >= 22.5) & (x < 112.5)
    hu = np.where(body, 40.0, -1000.0)
    hu = np.where(lung, -850.0, hu)
    nodule = ball(SHAPE, NODULE, RADIUS)
    vessel = tube_along_x(SHAPE, NODULE[1], NODULE[0], vessel_radius_mm) & (
        grid(SHAPE)[2] <= NODULE[2]
    )
    hu = np.where(nodule | vessel, 40.0, hu)
    hu = ndimage.gaussian_filter(hu.astype(np.float32), 0.7)
    hu += np.random.default_rng(seed).normal(0.0, 15.0, SHAPE).astype(np.float32)
    return Volume(array=hu, spacing_mm=(SPACING,) * 3, origin_mm=(0.0, 0.0, 0.0)), nodule


def _extent(image: Volume, piece: np.ndarray):
    labels = piece.astype(np.uint16)
    mask, candidates, grown, record = nodule_extents(
        image=image,
        candidate_mask=image.with_array(labels, kind="label"),
        candidates=(candidate(labels),),
    )
    return mask.array == 1, candidates[0], grown, record.details["judged"]["1"]


def test_a_nodule_the_network_outlined_a_cap_of_is_given_its_whole_extent():
    image, nodule = _scene()
    cap = nodule & (grid(SHAPE)[1] <= NODULE[1] - 8.0)  # its top: about 0.4 ml of 7.2
    outline, grown_candidate, grown, reading = _extent(image, cap)
    assert grown == [1], reading
    assert reading["taken"] and reading["open_radius_mm"] == 7.0, reading  # the vessel opened away
    assert (outline & nodule).sum() >= 0.9 * nodule.sum()
    beyond = outline & ~ndimage.binary_dilation(nodule, iterations=2)
    assert beyond.sum() <= 0.05 * nodule.sum()  # not the vessel
    assert abs(grown_candidate.volume_ml - nodule.sum() * SPACING**3 / 1000) <= 0.15 * 7.24


def test_a_nodule_the_network_outlined_whole_keeps_its_outline():
    image, nodule = _scene()
    outline, same, grown, reading = _extent(image, nodule)
    assert grown == [] and not reading["taken"]
    assert set(reading["tried"].values()) == {"the network outlined it whole"}, reading
    assert np.array_equal(outline, nodule) and same.n_voxels == int(nodule.sum())


def test_a_piece_of_the_vessel_leading_to_a_nodule_is_not_grown_into_it():
    """A candidate on the vessel, a nodule's length away from it: the vessel is no round
    region, and the nodule, once the vessel is opened away, is beyond the candidate."""
    piece = ball(SHAPE, (NODULE[0], NODULE[1], 35.0), 3.0)
    for vessel_radius_mm in (4.0, 6.0):
        image, _ = _scene(vessel_radius_mm=vessel_radius_mm)
        outline, _, grown, reading = _extent(image, piece)
        assert grown == [] and not reading["taken"], reading
        assert np.array_equal(outline, piece)
