"""Post-processing: each recorded step does its one job on a scene built to need it."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from imaging.core.geometry.preprocess import volume_resample
from imaging.core.geometry.volume import Volume
from imaging.core.registration.transforms import volume_onto_grid
from imaging.core.segmentation.body import body_mask
from imaging.core.segmentation.contrast import ContrastSettings, candidates_contrast_filter
from imaging.core.segmentation.postprocess import (
    LesionCandidate,
    PostprocessSettings,
    postprocess_run,
)

SPACING = (1.5, 1.5, 1.5)


def _ball(shape, centre, radius):
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return (k - centre[0]) ** 2 + (j - centre[1]) ** 2 + (i - centre[2]) ** 2 <= radius**2


def _trunk(shape, semi_j: float, semi_i: float, centre_i: float = 48.0) -> np.ndarray:
    """HU: air, and a trunk of soft tissue (an elliptic cylinder along k) centred at j 48."""
    hu = np.full(shape, -1000.0, np.float32)
    j, i = np.ogrid[: shape[1], : shape[2]]
    hu[:, ((j - 48) / semi_j) ** 2 + ((i - centre_i) / semi_i) ** 2 <= 1] = 40.0
    return hu


def _organ_context_record(result):
    return next(r for r in result.records if r.name == "postprocess_organ_context")


@pytest.fixture(scope="module")
def scene():
    """A body (ellipse of tissue, a lung of air inside) and lesion probabilities.

    Lesions: a 12 mm liver lesion with a one-voxel spur and a hole in its probability,
    a 5 mm lung nodule (3 voxels across: opening would erase it), a one-voxel speck
    (too small), a blob in the air outside the body, a blob of air probability in the
    lung (noise), two lesions one voxel apart, and a lesion-like blob in soft tissue
    outside any organ (no organ context).
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
    pair_a = _ball(shape, (28, 52, 40), 2.5)
    pair_b = _ball(shape, (28, 52, 47), 2.5)
    lesion(pair_a, 4, 0.9, 25.0)
    lesion(pair_b, 4, 0.6, 25.0)
    no_organ = _ball(shape, (10, 40, 72), 2.5)
    lesion(no_organ, 4, 0.9, 30.0)
    # Organ probabilities: the lung ball, and a liver ball around the liver lesions.
    liver_organ = _ball(shape, (25, 52, 45), 16)
    p[1] = lung * (1 - p[3] - p[4])
    p[2] = liver_organ * ~lung * (1 - p[3] - p[4])
    p[0] = np.clip(1 - p[1] - p[2] - p[3] - p[4], 0, 1)
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
        "postprocess_organ_context",
        "postprocess_smooth",
        "postprocess_components",
    ]
    by_name = {r.name: r for r in result.records}
    assert by_name["postprocess_threshold"].parameters["threshold"] == 0.5
    assert by_name["postprocess_min_volume"].parameters["min_volume_ml"] == 0.02
    assert by_name["postprocess_outside_body"].details["removed_outside_body"] == 1
    assert by_name["postprocess_outside_body"].details["removed_in_air"] == 1
    assert by_name["postprocess_min_volume"].details["removed"] >= 1
    assert by_name["postprocess_organ_context"].details["removed"] == 1
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


def test_a_nodule_the_network_sees_no_lung_around_is_kept_by_the_lung_mask():
    """Organ context does not hang on the network alone: with no lung probability at all
    (a network that has not learnt this patient's lungs), a nodule in a lung's air is
    still kept, as a lung nodule, while a blob in plain soft tissue is not."""
    shape = (48, 96, 96)
    hu = _trunk(shape, 44.0, 44.0)
    lung = _ball(shape, (24, 48, 36), 22)  # about 150 ml of air
    hu[lung] = -850.0
    nodule = _ball(shape, (24, 48, 30), 3)
    blob = _ball(shape, (24, 48, 82), 3)  # soft tissue, no organ
    hu[nodule | blob] = 30.0
    p = np.zeros((5, *shape), np.float32)
    p[3][nodule] = 0.9
    p[4][blob] = 0.9
    p[0] = 1.0 - p[3] - p[4]
    image = Volume(hu, SPACING, (0.0, 0.0, 0.0))
    result = postprocess_run(probabilities=p, image=image)
    assert [c.organ for c in result.candidates] == ["lung"]
    assert result.candidates[0].n_voxels >= 0.5 * nodule.sum()
    record = _organ_context_record(result)
    assert record.details["kept_by_lung_mask"] == 1 and record.details["removed"] == 1
    # The lung mask is the only witness here: without it the nodule goes too.
    strict = postprocess_run(
        probabilities=p, image=image, settings=PostprocessSettings(min_lung_share=1.01)
    )
    assert strict.candidates == ()


def test_a_cystic_lesion_whose_water_the_network_left_out_of_the_liver_is_kept():
    """The network outlines a cystic lesion's wall and labels its water centre neither
    liver nor lesion, in a liver it is unsure of (0.55): the wall's surroundings are half
    that water, under the network's organ context. The liver with what it encloses
    witnesses for it; the same wall in a notch open to the outside (the gallbladder's
    fossa) has no such witness and goes."""
    shape = (48, 96, 96)
    hu = _trunk(shape, 44.0, 44.0)
    liver = _ball(shape, (24, 48, 40), 26) & (hu > 0)
    hu[liver] = 60.0
    centre, notch = (24, 48, 40), (24, 48, 14)
    p = np.zeros((5, *shape), np.float32)
    p[2][liver] = 0.55
    for where in (centre, notch):
        water, wall = _ball(shape, where, 8), _ball(shape, where, 10)
        hu[water] = 10.0
        p[2][wall] = 0.0
        p[4][wall & ~water] = 0.9
    # The notch opens the second wall's water to the body outside the liver.
    opening = np.zeros(shape, bool)
    opening[19:30, 43:54, : notch[2] + 1] = True
    p[4][opening] = 0.0
    hu[opening & (hu > 0)] = 10.0
    p[0] = 1.0 - p[2] - p[4]
    image = Volume(hu, SPACING, (0.0, 0.0, 0.0))
    result = postprocess_run(probabilities=p, image=image)
    record = _organ_context_record(result)
    assert [c.organ for c in result.candidates] == ["liver"], record.details
    assert result.candidates[0].bbox_kji[2][0] > notch[2] + 10  # the lesion in the liver
    assert record.details["kept_by_liver_mask"] == 1 and record.details["removed"] == 1
    # The enclosing liver is the only witness here: without it the lesion goes too.
    strict = postprocess_run(
        probabilities=p, image=image, settings=PostprocessSettings(min_liver_share=1.01)
    )
    assert strict.candidates == ()


def test_no_step_depends_on_the_side(scene):
    """Mirroring the scene left-right mirrors the candidates and changes nothing else."""
    image, p, _ = scene
    result = postprocess_run(probabilities=p, image=image)
    mirrored = postprocess_run(
        probabilities=np.ascontiguousarray(p[..., ::-1]),
        image=image.with_array(np.ascontiguousarray(image.array[..., ::-1])),
    )
    key = sorted((c.organ, c.n_voxels, round(c.confidence, 3)) for c in result.candidates)
    assert key == sorted((c.organ, c.n_voxels, round(c.confidence, 3)) for c in mirrored.candidates)
    assert np.array_equal(result.mask.array > 0, mirrored.mask.array[..., ::-1] > 0)


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


def test_contrast_filter_keeps_a_lesion_and_drops_noise_blobs_and_subvoxel_specks():
    """On the study's own (thick, noisy) voxels: a real hypodense lesion stands far above
    the noise; a candidate over plain noisy liver and one smaller than a study voxel
    do not."""

    rng = np.random.default_rng(3)
    shape = (24, 60, 60)  # k, j, i: 3 x 3 x 5 mm voxels
    liver = np.full(shape, 60.0, np.float32)
    ks, js, is_ = np.ogrid[: shape[0], : shape[1], : shape[2]]
    lesion = ((ks * 5.0 - 60) ** 2 + (js * 3.0 - 60) ** 2 + (is_ * 3.0 - 60) ** 2) <= 8.0**2
    liver[lesion] = 25.0  # a 16 mm hypodense lesion centred at (60, 60, 60) mm
    study = Volume(
        liver + rng.normal(0, 20.0, shape).astype(np.float32), (3.0, 3.0, 5.0), (0, 0, 0)
    )

    grid = volume_resample(volume=study, spacing_mm=(1.5, 1.5, 1.5))
    k, j, i = np.ogrid[: grid.array.shape[0], : grid.array.shape[1], : grid.array.shape[2]]

    def blob(centre_mm, radius_mm):
        c = np.asarray(centre_mm) / 1.5
        return ((k - c[0]) ** 2 + (j - c[1]) ** 2 + (i - c[2]) ** 2) * 1.5**2 <= radius_mm**2

    labels = np.zeros(grid.array.shape, np.uint16)
    labels[blob((60.0, 60.0, 60.0), 8.0)] = 1  # the lesion
    labels[blob((60.0, 120.0, 120.0), 4.0)] = 2  # plain liver: noise only
    # One model voxel at 2.75 mm along k: study slices sit at 0 and 5 mm, and their
    # nearest model voxels are at -0.25 and 4.25/5.75 mm, so no study voxel holds it.
    labels[3, 100, 20] = 3
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    mask = grid.with_array(labels, kind="label")
    candidates = tuple(
        LesionCandidate(
            label_value=v, organ="liver", n_voxels=int((labels == v).sum()),
            volume_ml=float((labels == v).sum() * 1.5**3 / 1000), confidence=1.0,
            mean_probability=0.9, bbox_kji=((0, 1), (0, 1), (0, 1)),
        )
        for v in (1, 2, 3)
    )  # fmt: skip

    kept_mask, kept, record = candidates_contrast_filter(
        study=study, candidate_mask=mask, candidates=candidates
    )

    assert [c.label_value for c in kept] == [1], record.details

    assert set(np.unique(kept_mask.array)) == {0, 1}
    assert record.name == "postprocess_contrast" and record.details["removed"] == 2
    z = record.details["z"]
    assert z["1"] > 8.0 > z["2"] and z["3"] == 0.0
    # The threshold is a recorded parameter that changes the outcome.
    _, none_kept, _ = candidates_contrast_filter(
        study=study, candidate_mask=mask, candidates=candidates,
        settings=ContrastSettings(min_z=z["1"] + 1),
    )  # fmt: skip
    assert none_kept == ()


def test_contrast_filter_keeps_a_rim_enhancing_lesion_whose_mean_equals_the_liver():
    """A bright rim around a dark centre averages to the liver's HU: its voxels' spread
    beyond the noise keeps it, where the shift of the mean alone would drop it."""

    rng = np.random.default_rng(5)
    shape = (24, 60, 60)  # k, j, i: 3 x 3 x 5 mm voxels
    liver = np.full(shape, 60.0, np.float32)
    ks, js, is_ = np.ogrid[: shape[0], : shape[1], : shape[2]]
    r2 = (ks * 5.0 - 60) ** 2 + (js * 3.0 - 60) ** 2 + (is_ * 3.0 - 60) ** 2
    centre, rim = r2 <= 7.0**2, (r2 > 7.0**2) & (r2 <= 10.0**2)  # a 20 mm metastasis
    liver[centre], liver[rim] = 10.0, 60.0 + 50.0 * centre.sum() / rim.sum()  # mean 60 HU
    assert abs(float(liver[centre | rim].mean()) - 60.0) < 1e-3
    study = Volume(
        liver + rng.normal(0, 20.0, shape).astype(np.float32), (3.0, 3.0, 5.0), (0, 0, 0)
    )
    grid = volume_resample(volume=study, spacing_mm=(1.5, 1.5, 1.5))
    k, j, i = np.ogrid[: grid.array.shape[0], : grid.array.shape[1], : grid.array.shape[2]]
    labels = ((k * 1.5 - 60) ** 2 + (j * 1.5 - 60) ** 2 + (i * 1.5 - 60) ** 2) <= 10.0**2
    mask = grid.with_array(labels.astype(np.uint16), kind="label")
    candidate = LesionCandidate(
        label_value=1, organ="liver", n_voxels=int(labels.sum()),
        volume_ml=float(labels.sum() * 1.5**3 / 1000), confidence=1.0,
        mean_probability=0.9, bbox_kji=((0, 1), (0, 1), (0, 1)),
    )  # fmt: skip

    _, kept, record = candidates_contrast_filter(
        study=study, candidate_mask=mask, candidates=(candidate,)
    )

    assert kept == (candidate,), record.details
    assert "mean|core - median(ring)|" in record.parameters["rule"]
    # the shift of the mean alone is within the noise
    core = volume_onto_grid(moving=mask, reference=study).array > 0
    ring = ndimage.binary_dilation(core, iterations=3) & ~ndimage.binary_dilation(core)
    shift = abs(np.median(study.array[ring]) - study.array[core].mean())
    sigma = 1.4826 * np.median(np.abs(study.array[ring] - np.median(study.array[ring])))
    assert shift / (sigma / np.sqrt(core.sum())) < 8.0 < record.details["z"]["1"]


def test_a_nodule_in_a_lung_cut_by_the_field_of_view_is_inside_the_patient():
    """A large patient: the image's edge cuts the chest wall, so the lung meets the air
    outside the image and hole filling alone does not put it inside the body."""
    shape = (30, 60, 60)
    hu = np.full(shape, -1000.0, np.float32)
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    body = ((j - 30) / 26.0) ** 2 + ((i - 20) / 32.0) ** 2 <= 1  # cut at i = 0
    hu[:, body[0]] = 40.0
    lung = _ball(shape, (15, 30, 6), 9) & (i >= 0)
    hu[lung] = -850.0
    assert (hu[:, :, 0] < -500).any() and (hu[15, 30, 0] < -500)  # the lung meets the edge
    nodule = _ball(shape, (15, 30, 7), 2.5)
    hu[nodule] = 30.0
    p = np.zeros((5, *shape), np.float32)
    p[3][nodule] = 0.9
    p[1] = lung * (1 - p[3])
    p[0] = np.clip(1 - p[1] - p[3], 0, 1)
    result = postprocess_run(probabilities=p, image=Volume(hu, SPACING, (0.0, 0.0, 0.0)))
    by_name = {r.name: r for r in result.records}
    assert by_name["postprocess_outside_body"].details["removed_outside_body"] == 0
    assert [c.organ for c in result.candidates] == ["lung"]


def test_a_nodule_with_no_lung_around_it_is_dropped_even_where_the_network_sees_lung():
    """The classical lung mask also witnesses against the network: a bright bone tip
    against the air outside the back (where a network fooled by a prone patient put
    nodule and lung probability) has no lung parenchyma around it and is dropped; a
    nodule in the lung and a subpleural one against the chest wall are kept."""
    shape = (48, 96, 96)
    hu = _trunk(shape, 40.0, 44.0)
    lung = _ball(shape, (24, 48, 34), 22)  # about 150 ml of air
    hu[lung] = -850.0
    nodule = _ball(shape, (24, 48, 34), 3)
    # Subpleural: against the lung's lateral wall, half of it in the chest wall.
    subpleural = _ball(shape, (24, 48, 12), 3) & (hu < -500)
    spinous = _ball(shape, (24, 8, 48), 3)  # at the back's skin, half in the air outside
    hu[nodule | subpleural] = 30.0
    hu[spinous] = 300.0
    p = np.zeros((5, *shape), np.float32)
    p[3][nodule | subpleural | spinous] = 0.9
    around = ndimage.binary_dilation(spinous, iterations=3) & ~spinous
    p[1] = np.where(lung | around, 1.0 - p[3], 0.0)  # the network's lung, wrong at the back
    p[0] = np.clip(1.0 - p[1] - p[3], 0, 1)
    image = Volume(hu, SPACING, (0.0, 0.0, 0.0))
    result = postprocess_run(probabilities=p, image=image)
    record = _organ_context_record(result)
    assert record.details["removed_no_lung"] == 1 and record.details["lungs_found"]
    centres = sorted(round((c.bbox_kji[2][0] + c.bbox_kji[2][1]) / 2) for c in result.candidates)
    assert len(centres) == 2 and centres[0] < 16 and 30 <= centres[1] <= 38
    # Without the rule the bone tip is a "nodule".
    off = postprocess_run(probabilities=p, image=image,
                          settings=PostprocessSettings(min_nodule_lung_share=0.0))  # fmt: skip
    assert len(off.candidates) == 3
    # A study that shows no lungs at all (the abdomen below them): the mask cannot
    # witness, and the network's nodule stays.
    no_lungs = hu.copy()
    no_lungs[lung & ~nodule & ~subpleural] = 40.0
    kept = postprocess_run(probabilities=p, image=Volume(no_lungs, SPACING, (0.0, 0.0, 0.0)))
    record = _organ_context_record(kept)
    assert not record.details["lungs_found"] and record.details["removed_no_lung"] == 0


def test_a_nodule_in_a_lung_the_field_of_view_opens_is_not_judged_by_the_lung_mask():
    """Where the image's edge cuts the chest wall, hole filling leaves that lung outside
    the body and outside the lung mask: the mask cannot speak against a nodule there."""
    shape = (48, 96, 96)
    hu = _trunk(shape, 40.0, 52.0, centre_i=40.0)  # cut at i = 0
    cut = _ball(shape, (24, 48, 12), 20)  # the lung the edge opens
    whole = _ball(shape, (24, 48, 62), 20)  # the other lung, inside the body
    hu[cut | whole] = -850.0
    assert (hu[24, 48, 0] < -500) and not body_mask(hu)[24, 48, 12]
    nodule = _ball(shape, (24, 48, 10), 3)
    hu[nodule] = 30.0
    p = np.zeros((5, *shape), np.float32)
    p[3][nodule] = 0.9
    p[1] = np.where(cut | whole, 1.0 - p[3], 0.0)
    p[0] = np.clip(1.0 - p[1] - p[3], 0, 1)
    result = postprocess_run(probabilities=p, image=Volume(hu, SPACING, (0.0, 0.0, 0.0)))
    record = _organ_context_record(result)
    assert record.details["lungs_found"] and record.details["removed_no_lung"] == 0
    assert [c.organ for c in result.candidates] == ["lung"]
