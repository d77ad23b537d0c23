"""The training generator leaves out lesions its acquisition's noise hides, and its noise
arithmetic is the noise it renders."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from imaging.core.synthetic.lesion_shape import LesionShape
from imaging.core.synthetic.variation import scene_sample
from imaging.core.synthetic.variation_lesions import lesions_draw
from imaging.core.synthetic.variation_render import (
    acquisition_sample,
    cohort_acquisition_sample,
    crop_render,
)
from imaging.core.synthetic.variation_visibility import NoiseModel, mean_noise_sd


@pytest.mark.parametrize(
    "noise",
    [
        NoiseModel(20.0, 0.6, 0.0, 0.0),
        NoiseModel(20.0, 1.2, 0.5, 0.6),
        NoiseModel(30.0, 0.4, 1.0, 0.6),
    ],
)
def test_the_noise_of_a_region_mean_is_what_the_renderer_makes(noise):
    # Counted over rendered noise fields made as `variation_render._scanner_effects`
    # makes them (filtered white noise, normalised to the standard deviation asked for).
    kk, jj, ii = np.mgrid[:9, :15, :15]
    mask = ((kk - 4) ** 2 / 4 + (jj - 7) ** 2 / 9 + (ii - 7) ** 2 / 9) <= 1
    rng = np.random.default_rng(0)
    means = []
    for _ in range(200):
        white = rng.standard_normal((40, 60, 60)).astype(np.float32)
        band = ndimage.gaussian_filter(white, (noise.z_px, noise.grain_px, noise.grain_px))
        if noise.coarse_weight:
            wide = (noise.z_px, 3 * noise.grain_px, 3 * noise.grain_px)
            band = band - noise.coarse_weight * ndimage.gaussian_filter(white, wide)
        band *= noise.sd_hu / band.std()
        means.append(band[15:24, 20:35, 20:35][mask].mean())
    counted = float(np.std(means))
    assert mean_noise_sd(mask, noise) == pytest.approx(counted, rel=0.15)
    if noise.grain_px >= 0.6:  # grainy noise: far more than independent voxels' sigma / sqrt(n)
        assert counted > 1.4 * noise.sd_hu / np.sqrt(mask.sum())


def _liver_lesion(rng):
    for _ in range(20):
        scene = scene_sample(rng)
        liver = [lesion for lesion in lesions_draw(scene, rng) if lesion.organ == "liver"]
        if liver:
            return scene, liver[0]
    raise AssertionError("no liver lesion drawn")


def test_a_lesion_the_noise_hides_is_neither_painted_nor_labelled():
    rng = np.random.default_rng(3)
    scene, drawn = _liver_lesion(rng)
    shape = drawn.shape
    faint = dataclasses.replace(
        drawn,
        kind="hypodense",
        shells=(),
        spicules=(),
        volume_ml=0.12,  # 6 mm
        shape=LesionShape(shape.centre_body_mm, scene.anatomy.liver_hu - 12.0,
                          shape.lobe_directions, shape.lobe_amplitudes, shape.lobe_sharpness),
    )  # fmt: skip
    base = dataclasses.replace(acquisition_sample(rng), pose=np.eye(4), streaks=0, cupping_hu=0.0,
                               pixel_mm=0.8, slice_thickness_mm=1.0, slice_spacing_mm=1.0)  # fmt: skip
    centre = np.asarray(shape.centre_body_mm)

    def render(noise_hu, lesions):
        acquisition = dataclasses.replace(base, noise_hu=noise_hu)
        return crop_render(scene=scene, lesions=lesions, centre_scene_mm=centre,
                           acquisition=acquisition, rng=np.random.default_rng(0), size=32)  # fmt: skip

    quiet, noisy = render(3.0, (faint,)), render(45.0, (faint,))
    assert quiet.lesions == (faint,) and quiet.lesion_fraction.sum() > 0
    assert not np.array_equal(quiet.hu, render(3.0, ()).hu)  # painted
    assert noisy.lesions == () and noisy.lesion_fraction.sum() == 0
    assert (noisy.lesion_code == 0).all() and (noisy.lesion_index == 0).all()
    # Not painted either: with the same noise field, the crop is the one with no lesion.
    assert np.array_equal(noisy.hu, render(45.0, ()).hu)


def test_a_lesion_of_the_cohorts_contrast_stays_in_its_coarse_noisy_studies():
    # The demo's studies: a 14 mm liver lesion 35 HU under the liver at 20 HU of noise,
    # 2.85 mm pixels and 5 mm slices, must stay a lesion the network is taught.
    rng = np.random.default_rng(5)
    scene, drawn = _liver_lesion(rng)
    shape = drawn.shape
    lesion = dataclasses.replace(
        drawn, kind="hypodense", shells=(), spicules=(), volume_ml=1.44,
        shape=LesionShape(shape.centre_body_mm, scene.anatomy.liver_hu - 35.0, (), (), ()),
    )  # fmt: skip
    acquisition = dataclasses.replace(cohort_acquisition_sample(rng), pose=np.eye(4),
                                      pixel_mm=2.85, slice_thickness_mm=5.0,
                                      slice_spacing_mm=5.0, noise_hu=20.0)  # fmt: skip
    crop = crop_render(scene=scene, lesions=(lesion,), centre_scene_mm=np.asarray(shape.centre_body_mm),
                       acquisition=acquisition, rng=rng, size=32)  # fmt: skip
    assert crop.lesions == (lesion,) and crop.lesion_fraction.sum() > 0


def test_cohort_acquisitions_are_the_cohort_generators():
    rng = np.random.default_rng(0)
    acquisitions = [cohort_acquisition_sample(rng) for _ in range(60)]
    coarse = [a for a in acquisitions if a.pixel_mm >= 2.5]
    assert 15 <= len(coarse) <= 45
    assert all(a.slice_thickness_mm in (4.5, 5.0) for a in coarse)
    assert all(0.6 <= a.pixel_mm <= 1.0 for a in acquisitions if a not in coarse)
    assert all(a.noise_coarse_weight == 0.0 and a.noise_grain_px == 0.6 for a in acquisitions)
    assert all(8.0 <= a.noise_hu <= 25.0 and not a.streaks for a in acquisitions)
