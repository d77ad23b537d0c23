"""The liver's second reader: hypodense focal lesions the network did not outline
(`segmentation.liver_reader`)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from imaging.core.geometry.volume import Volume
from imaging.core.segmentation.liver_reader import (
    LiverReaderSettings,
    liver_hypodense_candidates,
)
from imaging.core.segmentation.measure import lesions_measure
from imaging.core.segmentation.postprocess import LesionCandidate, PostprocessResult
from imaging.core.segmentation.reader_regions import reader_outline_probability

SPACING = 1.5
SHAPE = (60, 100, 100)  # k, j, i on the model grid
MISSED = (45.0, 60.0, 100.0)  # mm (k, j, i): a 12 mm metastasis the network missed
FOUND = (45.0, 100.0, 60.0)  # a 14 mm one it outlined
TUBE_J = 95.0  # mm: a dark vessel along i


def _distance_mm(centre) -> np.ndarray:
    k, j, i = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    c = np.asarray(centre)
    return np.sqrt(
        (k * SPACING - c[0]) ** 2 + (j * SPACING - c[1]) ** 2 + (i * SPACING - c[2]) ** 2
    )


def _scene(*, noise_hu: float = 8.0, lesions: bool = True, seed: int = 3):
    """An enhanced liver (100 HU) in soft tissue (40 HU): a missed metastasis (55 HU), a
    found one (its candidate in the mask), a 6 mm dark tube; probabilities to match."""
    liver = _distance_mm((45.0, 75.0, 75.0)) <= 55.0
    liver &= np.abs(np.arange(SHAPE[0]) * SPACING - 45.0)[:, None, None] <= 36.0
    hu = np.where(liver, 100.0, 40.0)
    missed = _distance_mm(MISSED) <= 6.0
    found = _distance_mm(FOUND) <= 7.0
    if lesions:
        hu[missed] = 55.0
        hu[found] = 50.0
        k, j, i = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
        tube = ((k * SPACING - 30.0) ** 2 + (j * SPACING - TUBE_J) ** 2 <= 3.0**2) & liver
        hu[np.broadcast_to(tube, SHAPE)] = 60.0
    hu = ndimage.gaussian_filter(hu, 0.8)
    rng = np.random.default_rng(seed)
    hu = hu + ndimage.gaussian_filter(rng.normal(0.0, noise_hu * 2.2, SHAPE), 0.8)
    image = Volume(hu.astype(np.float32), (SPACING,) * 3, (0.0, 0.0, 0.0))
    probabilities = np.zeros((5, *SHAPE), dtype=np.float16)
    probabilities[2][liver] = 0.95
    mask = np.zeros(SHAPE, dtype=np.uint16)
    candidates: tuple[LesionCandidate, ...] = ()
    if lesions:
        probabilities[4][found] = 0.9
        probabilities[2][found] = 0.05
        mask[found] = 1
        candidates = (
            LesionCandidate(label_value=1, organ="liver", n_voxels=int(found.sum()),
                            volume_ml=float(found.sum() * SPACING**3 / 1000), confidence=0.9,
                            mean_probability=0.9, bbox_kji=((25, 36), (62, 72), (35, 46))),
        )  # fmt: skip
    post = PostprocessResult(mask=image.with_array(mask, kind="label"), candidates=candidates)
    return image, probabilities, post, missed


def test_a_hypodense_lesion_the_network_missed_is_added_and_nothing_else():
    image, probabilities, post, missed = _scene()

    result, record = liver_hypodense_candidates(post=post, probabilities=probabilities, image=image)

    assert record.name == "liver_second_reader"
    added = [c for c in result.candidates if c.label_value not in (1,)]
    assert len(added) == 1, record.details  # not the found lesion again, not the tube
    lesion = added[0]
    assert lesion.organ == "liver" and lesion.confidence < 0.1
    region = result.mask.array == lesion.label_value
    assert region[missed].mean() > 0.6 and np.all(
        missed[region] | (_distance_mm(MISSED)[region] < 9)
    )
    assert 0.5 <= lesion.volume_ml <= 1.4  # the sphere holds 0.90 ml
    assert record.details["added_labels"] == [lesion.label_value]
    assert np.all(result.mask.array[post.mask.array == 1] == 1)  # the network's own untouched
    seed = record.details["added"][0]["seed_kji"]
    assert missed[tuple(seed)]


def test_the_added_lesion_is_outlined_on_its_own_region_and_measured():
    image, probabilities, post, missed = _scene()
    result, record = liver_hypodense_candidates(post=post, probabilities=probabilities, image=image)
    network = image.with_array(probabilities[3] + probabilities[4])

    outlined = reader_outline_probability(network, result.mask, record.details["added_labels"])
    lesions = lesions_measure(lesion_probability=outlined, candidate_mask=result.mask,
                              candidates=result.candidates, study=image)  # fmt: skip

    by_label = {m.label_value: m for m in lesions}
    added = by_label[record.details["added_labels"][0]]
    assert abs(added.volume_ml - 0.905) / 0.905 < 0.25, added
    assert 9.0 <= added.longest_axial_diameter_mm <= 15.0
    # The network's map is left as it was, and is what the found lesion is outlined on.
    assert np.array_equal(outlined.array[post.mask.array == 1], network.array[post.mask.array == 1])


@pytest.mark.parametrize("noise_hu", [18.0, 40.0, 60.0])
def test_in_a_noisy_liver_the_thresholds_follow_the_noise(noise_hu):
    # A blob search over a whole liver finds its darkest noise first, and the contrast
    # test alone would keep some of it (z up to 6 against a threshold of 4 in this
    # scene): the seeds' thresholds are multiples of the drop's own noise.
    proposed = floor_only = 0
    for seed in range(3):
        image, probabilities, post, _ = _scene(noise_hu=noise_hu, lesions=False, seed=seed)
        result, record = liver_hypodense_candidates(
            post=post, probabilities=probabilities, image=image
        )
        proposed += len(result.candidates)
        assert record.details["drop_noise_hu"] > 0.2 * noise_hu
        result, _ = liver_hypodense_candidates(
            post=post, probabilities=probabilities, image=image,
            settings=LiverReaderSettings(min_blob_noise=0.0, min_drop_noise=0.0),
        )  # fmt: skip
        floor_only += len(result.candidates)
    assert proposed == 0
    if noise_hu >= 40.0:
        assert floor_only >= 3  # the floors in HU alone let the noise through


def test_turned_off_or_without_a_liver_it_adds_nothing():
    image, probabilities, post, _ = _scene()
    result, record = liver_hypodense_candidates(
        post=post, probabilities=probabilities, image=image,
        settings=LiverReaderSettings(enabled=False),
    )  # fmt: skip
    assert result is post and record.details["skipped"] == "turned off"

    probabilities[2] = 0
    result, record = liver_hypodense_candidates(post=post, probabilities=probabilities, image=image)
    assert result is post and record.details["skipped"] == "no liver of min_liver_ml"


def test_air_or_fat_inside_the_networks_liver_is_no_lesion():
    # A network's liver can reach the lung base or the fat beside the organ: a round
    # pocket of air (or fat) there is dark and round, and not a lesion of the liver.
    image, probabilities, post, missed = _scene()
    pocket = _distance_mm((45.0, 110.0, 110.0)) <= 7.0
    for hu in (-800.0, -90.0):
        array = image.array.copy()
        array[pocket] = hu
        result, record = liver_hypodense_candidates(
            post=post, probabilities=probabilities, image=image.with_array(array)
        )
        added = [c for c in result.candidates if c.label_value != 1]
        assert len(added) == 1, record.details  # the missed metastasis, not the pocket
        assert not np.any((result.mask.array == added[0].label_value) & pocket)


def test_its_labels_start_above_every_label_the_network_had():
    # The network's candidates dropped by the filters keep their numbers in the step
    # records: the reader's must not reuse them.
    image, probabilities, post, _ = _scene()
    result, record = liver_hypodense_candidates(
        post=post, probabilities=probabilities, image=image, first_label=40
    )
    assert record.details["added_labels"] == [40]
    assert {c.label_value for c in result.candidates} == {1, 40}
    assert set(np.unique(result.mask.array)) == {0, 1, 40}
