"""The lungs' second reader: ground-glass and part-solid nodules the network did not
outline (`segmentation.lung_reader`), and through `lesions_segment`."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from imaging.core.geometry.volume import Volume
from imaging.core.segmentation.lung_reader import LungReaderSettings, lung_faint_candidates
from imaging.core.segmentation.postprocess import LesionCandidate, PostprocessResult

SPACING = 1.5
SHAPE = (60, 110, 140)  # k, j, i on the model grid
LUNG_CENTRES = ((45.0, 80.0, 60.0), (45.0, 80.0, 150.0))  # mm (k, j, i)
GGO = (45.0, 70.0, 60.0)  # a 12 mm ground-glass nodule in the right lung, missed
FOUND = (45.0, 100.0, 150.0)  # a 12 mm solid nodule in the left lung, outlined


def _distance_mm(centre, scale=(1.0, 1.0, 1.0)) -> np.ndarray:
    k, j, i = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    c = np.asarray(centre)
    return np.sqrt(
        ((k * SPACING - c[0]) / scale[0]) ** 2
        + ((j * SPACING - c[1]) / scale[1]) ** 2
        + ((i * SPACING - c[2]) / scale[2]) ** 2
    )


def _tube(j_mm: float, k_mm: float, radius: float, i_range: tuple[float, float]) -> np.ndarray:
    """A tube along i (a vessel, a small airway seen whole)."""
    k, j, i = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    across = (k * SPACING - k_mm) ** 2 + (j * SPACING - j_mm) ** 2 <= radius**2
    along = (i * SPACING >= i_range[0]) & (i * SPACING <= i_range[1])
    return np.broadcast_to(across & along, SHAPE)


def _scene(*, noise_hu: float = 15.0, ggo_hu: float | None = -600.0, core_hu=None,
           seed: int = 5, extra=None):  # fmt: skip
    """A chest: soft tissue (40 HU) in air, two lungs (-860 HU, denser towards the back),
    a missed ground-glass nodule, an outlined solid one (its candidate in the mask), a
    vessel and a small airway seen whole (-600 HU, as dense as ground glass) running
    from the mediastinum out into each lung."""
    body = _distance_mm((45.0, 82.0, 105.0), (1e6, 70.0, 100.0)) <= 1.0
    hu = np.where(body, 40.0, -1000.0)
    lungs = np.zeros(SHAPE, bool)
    for centre in LUNG_CENTRES:
        lungs |= _distance_mm(centre, (40.0, 45.0, 36.0)) <= 1.0
    j_mm = np.arange(SHAPE[1])[None, :, None] * SPACING
    hu = np.where(lungs, -880.0 + 0.4 * (j_mm - 40.0), hu)
    ggo = _distance_mm(GGO) <= 6.0
    if ggo_hu is not None:
        hu[ggo] = ggo_hu
    if core_hu is not None:
        hu[_distance_mm(GGO) <= 3.0] = core_hu
    found = _distance_mm(FOUND) <= 6.0
    hu[found] = 30.0
    hu[_tube(95.0, 30.0, 2.0, (70.0, 140.0)) & (lungs | ~body)] = 40.0  # a vessel
    hu[_tube(55.0, 60.0, 3.5, (90.0, 185.0)) & lungs] = -600.0  # a small airway, blurred
    if extra is not None:
        hu[extra & lungs] = -600.0
    hu = ndimage.gaussian_filter(hu, 0.7)
    rng = np.random.default_rng(seed)
    hu = hu + ndimage.gaussian_filter(rng.normal(0.0, noise_hu * 2.0, SHAPE), 0.8)
    image = Volume(hu.astype(np.float32), (SPACING,) * 3, (0.0, 0.0, 0.0))
    probabilities = np.zeros((5, *SHAPE), dtype=np.float16)
    probabilities[1][lungs] = 0.95
    probabilities[3][found] = 0.9
    mask = np.zeros(SHAPE, dtype=np.uint16)
    mask[found] = 1
    where = np.argwhere(found)
    bbox = tuple((int(a), int(b) + 1) for a, b in zip(where.min(0), where.max(0), strict=True))
    candidates = (
        LesionCandidate(label_value=1, organ="lung", n_voxels=int(found.sum()),
                        volume_ml=float(found.sum() * SPACING**3 / 1000), confidence=0.9,
                        mean_probability=0.9, bbox_kji=bbox),  # type: ignore[arg-type]
    )  # fmt: skip
    post = PostprocessResult(mask=image.with_array(mask, kind="label"), candidates=candidates)
    return image, probabilities, post, ggo


def _added(result: PostprocessResult) -> list[LesionCandidate]:
    return [c for c in result.candidates if c.label_value != 1]


@pytest.mark.parametrize("noise_hu", [8.0, 30.0])
def test_a_ground_glass_nodule_the_network_missed_is_added_and_nothing_else(noise_hu):
    image, probabilities, post, ggo = _scene(noise_hu=noise_hu)

    result, record = lung_faint_candidates(post=post, probabilities=probabilities, image=image)

    assert record.name == "lung_second_reader"
    added = _added(result)
    # Not the outlined nodule again, not the vessel, not the airway as dense as the nodule.
    assert len(added) == 1, record.details["regions"]
    lesion = added[0]
    assert lesion.organ == "lung" and lesion.confidence < 0.1
    region = result.mask.array == lesion.label_value
    assert region[ggo].mean() > 0.7 and region.sum() < 1.6 * ggo.sum()
    assert record.details["added_labels"] == [lesion.label_value]
    airway = [r for r in record.details["regions"] if not r["round"]]
    assert airway and all(
        r["elongation"] > 1.6 or r["inscribed_mm"] < 4.5 or r["fullness"] > 2.6 for r in airway
    )


def test_a_part_solid_nodule_is_added_whole():
    image, probabilities, post, ggo = _scene(core_hu=20.0)

    result, record = lung_faint_candidates(post=post, probabilities=probabilities, image=image)

    added = _added(result)
    assert len(added) == 1, record.details["regions"]
    region = result.mask.array == added[0].label_value
    assert region[ggo].mean() > 0.8  # the solid core with its ground glass


@pytest.mark.parametrize("noise_hu", [8.0, 30.0])
def test_a_solid_nodule_is_cut_to_its_own_edge(noise_hu):
    # The faint level (100 HU over the lung) lies near the foot of a solid nodule's
    # blurred edge; its region is cut half-way up its own step.
    image, probabilities, post, ball = _scene(ggo_hu=30.0, noise_hu=noise_hu)

    result, record = lung_faint_candidates(post=post, probabilities=probabilities, image=image)

    added = _added(result)
    assert len(added) == 1, record.details["regions"]
    region = result.mask.array == added[0].label_value
    # The half-way level of a blurred ball lies a little inside its edge; the faint
    # level's region is 1.9 times the ball.
    assert region[ball].mean() > 0.8
    assert 0.8 < region.sum() / ball.sum() < 1.2
    (solid,) = [r["solid"] for r in record.details["regions"] if "solid" in r]
    assert solid["core_hu"] > 0.0 and solid["edge_mm"] <= 3.0


def test_a_flat_band_of_dependent_density_and_a_lung_without_a_nodule_add_nothing():
    # A band 6 mm thick along the back of the right lung: as dense as ground glass and
    # thick enough to hold the opening's ball, but flat.
    k, j, i = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    band = np.broadcast_to((j * SPACING >= 112.0) & (j * SPACING <= 118.0) & (i * SPACING < 100.0),
                           SHAPE)  # fmt: skip
    image, probabilities, post, _ = _scene(ggo_hu=None, extra=band)

    result, record = lung_faint_candidates(post=post, probabilities=probabilities, image=image)

    assert _added(result) == [], record.details["regions"]
    assert any(not r["round"] for r in record.details["regions"])  # the band, judged


def test_airways_crossing_each_other_are_not_a_nodule():
    # Three short airways crossing at one point: the region holds a ball as wide as a
    # nodule's where they meet and its moments are round, but it is mostly branches.
    k, j, i = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    d = (k * SPACING - 45.0, j * SPACING - 95.0, i * SPACING - 60.0)
    crossing = np.zeros(SHAPE, bool)
    for axis in range(3):
        across = sum(d[a] ** 2 for a in range(3) if a != axis) <= 4.5**2
        crossing |= np.broadcast_to(across & (np.abs(d[axis]) <= 16.0), SHAPE)
    image, probabilities, post, _ = _scene(ggo_hu=None, extra=crossing)

    result, record = lung_faint_candidates(post=post, probabilities=probabilities, image=image)

    assert _added(result) == [], record.details["regions"]
    judged = [r for r in record.details["regions"] if r["inscribed_mm"] >= 4.5]
    assert judged and all(r["elongation"] <= 1.6 and r["fullness"] > 2.6 for r in judged)


def test_a_nodule_touching_a_network_candidate_is_left_to_the_network():
    image, probabilities, post, ggo = _scene()
    mask = post.mask.array.copy()
    mask[_distance_mm(GGO) <= 2.0] = 2
    post = PostprocessResult(mask=post.mask.with_array(mask), candidates=post.candidates)

    result, _ = lung_faint_candidates(post=post, probabilities=probabilities, image=image)

    assert _added(result) == []


def test_turned_off_or_without_lungs_it_reads_nothing():
    image, probabilities, post, _ = _scene()

    result, record = lung_faint_candidates(
        post=post, probabilities=probabilities, image=image,
        settings=LungReaderSettings(enabled=False),
    )  # fmt: skip
    assert _added(result) == [] and record.details["skipped"] == "turned off"

    body = _distance_mm((45.0, 82.0, 105.0), (1e6, 70.0, 100.0)) <= 1.0
    abdomen = image.with_array(np.where(body, 40.0, -1000.0).astype(np.float32))
    result, record = lung_faint_candidates(post=post, probabilities=probabilities, image=abdomen)
    assert _added(result) == [] and record.details["skipped"] == "no lungs of min_lung_ml"


def test_the_added_labels_start_at_first_label():
    image, probabilities, post, _ = _scene()

    result, record = lung_faint_candidates(
        post=post, probabilities=probabilities, image=image, first_label=40
    )

    assert record.details["added_labels"] == [40]
    assert (result.mask.array == 40).any()
