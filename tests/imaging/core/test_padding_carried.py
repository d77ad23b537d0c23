"""A study's padding mask (`Volume.padding`: pixels outside the reconstructed field of
view, Pixel Padding Value (0028,0120)) goes with its volume through the orientation
step: a study whose header is corrected still knows which voxels were never imaged, so a
lesion against them is still read as reaching the edge of the field of view. A lesion a
radiologist clicks is judged against the whole study the same way: its padding, and
the first or last slice of its scanned range, where the click's lesion is cut, not
leaking."""

from __future__ import annotations

import numpy as np
import pytest

from imaging.core.geometry.volume import Volume
from imaging.core.registration.orientation import orientation_standardise, volume_flip_header
from imaging.core.segmentation.edges import EDGE_PADDING, EDGE_SCAN_END, lesion_edges
from imaging.core.segmentation.interactive import click_segment
from imaging.core.segmentation.interactive_search import lesion_search
from tests.imaging.core.test_anatomy import trunk_volume
from tests.imaging.core.test_interactive import LUNG_HU, NODULE_HU, _phantom

#: The reconstructed field of view: a circle of this radius (voxels) about the image
#: centre; the corners outside it are padding, in every slice.
FOV_RADIUS_VOXELS = 31.0


def _padded(volume: Volume) -> Volume:
    """``volume`` with its in-plane corners outside `FOV_RADIUS_VOXELS` padded (air)."""
    nk, nj, ni = volume.array.shape
    j, i = np.mgrid[0:nj, 0:ni]
    corner = np.hypot(i - (ni - 1) / 2, j - (nj - 1) / 2) > FOV_RADIUS_VOXELS
    padding = np.broadcast_to(corner, volume.array.shape).copy()
    array = np.where(padding, np.float32(-1000.0), volume.array)
    return Volume(array=array, spacing_mm=volume.spacing_mm, origin_mm=volume.origin_mm,
                  direction=volume.direction, padding=padding)  # fmt: skip


def _lesion_by_the_padding(volume: Volume) -> Volume:
    """A small lesion (label map on ``volume``'s grid) in the middle slices, against the
    padded corner at low i and j but two voxels clear of the images' edges."""
    mask = np.zeros(volume.array.shape, np.uint8)
    assert volume.padding is not None
    k = volume.array.shape[0] // 2
    j, i = 10, 10  # first padded along the diagonal: (9, 9) (distance 31.1)
    assert volume.padding[k, j - 1, i - 1] and not volume.padding[k, j, i]
    mask[k - 1 : k + 2, j : j + 3, i : i + 3] = 1
    return Volume(array=mask, spacing_mm=volume.spacing_mm, origin_mm=volume.origin_mm,
                  direction=volume.direction, kind="label")  # fmt: skip


@pytest.mark.parametrize("flips", [(-1, 1, 1), (1, 1, -1), (-1, -1, 1)])
def test_a_header_flip_keeps_the_padding_with_the_untouched_array(flips):
    study = _padded(trunk_volume(seed=3))

    flipped = volume_flip_header(volume=study, flips=flips)
    back = volume_flip_header(volume=flipped, flips=flips)

    assert flipped.array is study.array  # the voxels untouched, so is their padding
    assert flipped.padding is not None and np.array_equal(flipped.padding, study.padding)
    assert back.padding is not None and np.array_equal(back.padding, study.padding)
    assert np.allclose(back.origin_mm, study.origin_mm)


def test_a_study_whose_orientation_is_corrected_keeps_its_padding_and_its_edges():
    truth = _padded(trunk_volume(seed=5))
    wrong = volume_flip_header(volume=truth, flips=(-1, 1, 1))  # a left-right flip

    corrected = orientation_standardise(volume=wrong)

    assert corrected.check.flipped and corrected.volume is not wrong
    study = corrected.volume
    assert study.padding is not None and np.array_equal(study.padding, truth.padding)
    # A lesion against the padded corner reaches the edge of the field of view, in the
    # corrected study as in the study as it came.
    lesion = _lesion_by_the_padding(study)
    assert lesion_edges(lesion=lesion, scanned=study) == (EDGE_PADDING,)
    assert lesion_edges(lesion=_lesion_by_the_padding(truth), scanned=truth) == (EDGE_PADDING,)


# --------------------------------------------------------------------------- a click
def _nodule(**kwargs) -> tuple[Volume, float]:
    """A 5 mm-radius nodule in lung (`test_interactive._phantom`: 0.8 x 0.8 x 2 mm, 70 x
    70 x 40 voxels about the LPS origin) and its true volume (ml)."""
    volume, _, true_ml = _phantom(background=LUNG_HU, lesion=NODULE_HU, radius_mm=5.0, **kwargs)
    return volume, true_ml


def _padded_beyond(volume: Volume, x_mm: float) -> Volume:
    """``volume`` with every voxel at x >= ``x_mm`` (LPS) outside the field of view."""
    i0 = int(np.ceil(volume.lps_to_index(np.array([x_mm, 0.0, 0.0]))[0]))
    padding = np.zeros(volume.array.shape, bool)
    padding[:, :, i0:] = True
    array = np.where(padding, np.float32(-1000.0), volume.array)
    return Volume(array=array, spacing_mm=volume.spacing_mm, origin_mm=volume.origin_mm,
                  direction=volume.direction, padding=padding)  # fmt: skip


def test_a_clicked_nodule_against_the_padding_reaches_the_field_of_view():
    whole, _ = _nodule()
    study = _padded_beyond(whole, 4.0)  # the field of view ends across the nodule

    clicked = click_segment(study=study, seed_lps_mm=[-1.0, 0.0, 0.0])

    assert clicked.measurement.edges_reached == (EDGE_PADDING,)
    assert click_segment(study=whole, seed_lps_mm=[0.0, 0.0, 0.0]).measurement.edges_reached == ()


def test_a_nodule_found_again_in_a_box_of_the_study_is_judged_on_the_whole_study():
    study = _padded_beyond(_nodule()[0], 4.0)
    look = click_segment(study=study, seed_lps_mm=[-1.0, 0.0, 0.0]).look
    # what a caller reads around the mapped point: a box of the study, its padding kept
    box = (slice(2, 38), slice(3, 67), slice(3, 67))
    start = np.array([box[2].start, box[1].start, box[0].start], dtype=float)
    part = Volume(array=study.array[box], spacing_mm=study.spacing_mm,
                  origin_mm=tuple(study.index_to_lps(start)), direction=study.direction,
                  padding=study.padding[box])  # fmt: skip

    searched = lesion_search(study=part, centre_lps_mm=[1.0, 2.0, 0.0], look=look, scanned=study)

    assert searched.found is not None, searched.reason
    assert searched.found.measurement.edges_reached == (EDGE_PADDING,)


def test_a_clicked_nodule_cut_by_the_last_slice_is_measured_as_cut_not_refused():
    # the scan's last slice (z = 39 mm) runs 1 mm above the nodule's centre
    study, true_ml = _nodule(centre_mm=(0.0, 0.0, 38.0))

    for box in (None, [[-9.0, -9.0, 28.0], [9.0, 9.0, 39.0]]):
        clicked = click_segment(study=study, seed_lps_mm=[0.0, 0.0, 37.0], box_lps_mm=box)

        assert clicked.measurement.edges_reached == (EDGE_SCAN_END,)
        assert clicked.measurement.volume_ml < true_ml  # only part of it was imaged
