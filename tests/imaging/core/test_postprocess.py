"""Post-processing: each recorded step does its one job on a scene built to need it."""

from __future__ import annotations

import numpy as np
import pytest

from imaging.core.postprocess import PostprocessSettings, body_mask, postprocess_run
from imaging.core.volume import Volume

SPACING = (1.5, 1.5, 1.5)


def _ball(shape, centre, radius):
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return (k - centre[0]) ** 2 + (j - centre[1]) ** 2 + (i - centre[2]) ** 2 <= radius**2


@pytest.fixture(scope="module")
def scene():
    """A body (ellipse of tissue, a lung of air inside) and lesion probabilities.

    Lesions: a 12 mm liver lesion with a one-voxel spur and a hole in its probability,
    a 5 mm lung nodule (3 voxels across: opening would erase it), a one-voxel speck
    (too small), a blob in the air outside the body, a blob of air probability in the
    lung (noise), and two lesions one voxel apart.
    """
    shape = (40, 80, 80)
    hu = np.full(shape, -1000.0, np.float32)
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    body = ((j - 40) / 30.0) ** 2 + ((i - 40) / 36.0) ** 2 <= 1
    hu[:, body[0]] = 40.0
    lung = _ball(shape, (20, 30, 25), 12)
    hu[lung] = -850.0
    p = np.zeros((5, *shape), np.float32)

    def lesion(mask, cls, prob, value_hu=None):
        p[cls][mask] = np.maximum(p[cls][mask], prob)
        if value_hu is not None:
            hu[mask] = value_hu

    liver = _ball(shape, (20, 50, 55), 4)  # 12 mm
    lesion(liver, 4, 0.95, 20.0)
    p[4][20, 50, 60:66] = 0.9  # a one-voxel spur sticking out
    p[4][20, 50, 55] = 0.2  # a hole in the probability
    nodule = _ball(shape, (20, 30, 22), 1.7)  # about 5 mm
    lesion(nodule, 3, 0.8, 30.0)
    p[3][10, 30, 30] = 0.9  # speck
    outside = _ball(shape, (20, 3, 3), 2)
    lesion(outside, 4, 0.9)
    in_air = _ball(shape, (20, 28, 32), 2)  # noise in the lung's air
    lesion(in_air, 3, 0.7)
    pair_a = _ball(shape, (30, 55, 30), 2.5)
    pair_b = _ball(shape, (30, 55, 37), 2.5)
    lesion(pair_a, 4, 0.9, 25.0)
    lesion(pair_b, 4, 0.6, 25.0)
    p[0] = np.clip(1 - p[3] - p[4], 0, 1)
    image = Volume(hu, SPACING, (-60.0, -60.0, -30.0))
    return image, p, {"liver": liver, "nodule": nodule}


def test_every_step_is_recorded_with_its_parameters(scene):
    image, p, _ = scene
    result = postprocess_run(probabilities=p, image=image)
    names = [r.name for r in result.records]
    assert names == [
        "postprocess_threshold",
        "postprocess_opening",
        "postprocess_closing",
        "postprocess_fill_holes",
        "postprocess_min_volume",
        "postprocess_outside_body",
        "postprocess_smooth",
        "postprocess_components",
    ]
    by_name = {r.name: r for r in result.records}
    assert by_name["postprocess_threshold"].parameters["threshold"] == 0.5
    assert by_name["postprocess_min_volume"].parameters["min_volume_ml"] == 0.02
    assert by_name["postprocess_outside_body"].details["removed_outside_body"] == 1
    assert by_name["postprocess_outside_body"].details["removed_in_air"] == 1
    assert by_name["postprocess_min_volume"].details["removed"] >= 1
    assert all(r.seconds >= 0 for r in result.records)


def test_candidates_are_the_real_lesions_with_organ_and_confidence(scene):
    image, p, truth = scene
    result = postprocess_run(probabilities=p, image=image)
    by_organ = sorted((c.organ, round(c.confidence, 2)) for c in result.candidates)
    # liver lesion, nodule, and the pair (kept apart: they do not touch)
    assert by_organ == [("liver", 0.6), ("liver", 0.9), ("liver", 0.95), ("lung", 0.8)]
    mask = result.mask.array
    assert result.mask.kind == "label" and result.mask.spacing_mm == SPACING
    liver = next(c for c in result.candidates if c.confidence == pytest.approx(0.95))
    region = mask == liver.label_value
    # The spur is gone (opening) and the hole is filled.
    assert not region[20, 50, 62:66].any()
    assert region[20, 50, 55]
    overlap = (region & truth["liver"]).sum() / truth["liver"].sum()
    assert overlap > 0.9 and region.sum() < 1.2 * truth["liver"].sum()
    nodule = next(c for c in result.candidates if c.organ == "lung")
    assert nodule.n_voxels >= 15  # a 5 mm nodule survives opening and smoothing


def test_settings_change_the_outcome(scene):
    image, p, _ = scene
    strict = postprocess_run(
        probabilities=p, image=image, settings=PostprocessSettings(threshold=0.75)
    )
    assert sorted(c.organ for c in strict.candidates) == ["liver", "liver", "lung"]
    big_only = postprocess_run(
        probabilities=p, image=image, settings=PostprocessSettings(min_volume_ml=0.5)
    )
    assert [round(c.confidence, 2) for c in big_only.candidates] == [0.95]


def test_body_mask_holds_the_lungs(scene):
    image, _, _ = scene
    body = body_mask(image.array)
    assert body[20, 30, 25]  # the lung's air is inside the body
    assert not body[20, 2, 2]
