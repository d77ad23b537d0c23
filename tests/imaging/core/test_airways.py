"""Airway walls told from nodules (`segmentation.airways.airway_walls_filter`)."""

from __future__ import annotations

import numpy as np
import pytest

from imaging.core.geometry.preprocess import volume_resample
from imaging.core.geometry.volume import Volume
from imaging.core.segmentation.airways import AirwaySettings, airway_walls_filter
from imaging.core.segmentation.postprocess import LesionCandidate

SPACING = (0.8, 0.8, 1.0)  # x, y, z (mm)
SHAPE = (90, 100, 100)  # k, j, i
LUNG_HU, TISSUE_HU, AIR_HU = -860.0, 40.0, -1000.0


def _grid_mm():
    k, j, i = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    return k * SPACING[2], j * SPACING[1], i * SPACING[0]


def _bronchus(array, z, y, x, *, axis: str, centre, lumen_mm: float, wall_mm: float = 1.3):
    """A straight airway along ``axis`` through ``centre`` (mm: x, y, z): air inside a wall."""
    cx, cy, cz = centre
    across = {"x": (y - cy) ** 2 + (z - cz) ** 2, "z": (x - cx) ** 2 + (y - cy) ** 2}[axis]
    array[np.broadcast_to(across <= (lumen_mm + wall_mm) ** 2, array.shape)] = TISSUE_HU
    array[np.broadcast_to(across <= lumen_mm**2, array.shape)] = AIR_HU


def _ball(z, y, x, centre, radius):
    cx, cy, cz = centre
    return (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= radius**2


def _case(noise_hu: float = 15.0):
    """A lung with an airway along x at (y 20, z 25), another along z at (x 60, y 60), a
    solid nodule, a cavitating nodule and a nodule against the second airway's wall.

    Candidates: 1, a 10 mm stretch of the first airway's wall and lumen (as the network
    outlines a ring); 2, the solid nodule; 3, the cavitating nodule; 4, the nodule beside
    the airway with the stretch of wall it touches; 5, the second airway's end cap."""
    z, y, x = _grid_mm()
    array = np.full(SHAPE, LUNG_HU, np.float32)
    _bronchus(array, z, y, x, axis="x", centre=(0.0, 20.0, 25.0), lumen_mm=2.5)
    _bronchus(array, z, y, x, axis="z", centre=(60.0, 60.0, 0.0), lumen_mm=2.0)
    solid, cavity_ball = (20.0, 60.0, 45.0), (50.0, 25.0, 65.0)
    array[_ball(z, y, x, solid, 5.0)] = TISSUE_HU
    array[_ball(z, y, x, cavity_ball, 7.0)] = TISSUE_HU
    array[_ball(z, y, x, cavity_ball, 3.0)] = AIR_HU
    beside = (68.5, 60.0, 45.0)  # against the second airway's wall (at x 63.3)
    array[_ball(z, y, x, beside, 5.5)] = TISSUE_HU
    # The second airway ends at z 70 (its cap of wall).
    cap = (z > 70.0) & ((x - 60.0) ** 2 + (y - 60.0) ** 2 <= 3.3**2)
    array[np.broadcast_to(cap & (z <= 71.3), SHAPE)] = TISSUE_HU
    array[np.broadcast_to(cap & (z > 71.3), SHAPE)] = LUNG_HU
    rng = np.random.default_rng(3)
    study = Volume(array + rng.normal(0, noise_hu, SHAPE).astype(np.float32), SPACING, (0, 0, 0))

    labels = np.zeros(SHAPE, np.uint16)
    ring = ((y - 20.0) ** 2 + (z - 25.0) ** 2 <= 4.5**2) & (np.abs(x - 40.0) <= 5.0)
    labels[ring] = 1
    labels[_ball(z, y, x, solid, 6.0)] = 2
    labels[_ball(z, y, x, cavity_ball, 8.0)] = 3
    # The nodule with 24 mm of the airway it touches (what a network outlines as one).
    labels[((x - 60.0) ** 2 + (y - 60.0) ** 2 <= 4.0**2) & (np.abs(z - 55.0) <= 12.0)] = 4
    labels[_ball(z, y, x, beside, 6.5)] = 4
    labels[((x - 60.0) ** 2 + (y - 60.0) ** 2 <= 4.0**2) & (np.abs(z - 68.0) <= 4.0)] = 5
    grid = volume_resample(volume=study, spacing_mm=(1.5, 1.5, 1.5))
    mask = volume_resample(
        volume=study.with_array(labels, kind="label"), spacing_mm=(1.5, 1.5, 1.5)
    )
    assert mask.array.shape == grid.array.shape
    candidates = tuple(
        LesionCandidate(
            label_value=v, organ="lung", n_voxels=int((mask.array == v).sum()),
            volume_ml=float((mask.array == v).sum() * 1.5**3 / 1000), confidence=1.0,
            mean_probability=0.9, bbox_kji=((0, 1), (0, 1), (0, 1)),
        )
        for v in (1, 2, 3, 4, 5)
    )  # fmt: skip
    return study, mask, candidates


def test_an_airway_wall_is_dropped_and_nodules_beside_air_are_kept():
    study, mask, candidates = _case()

    kept_mask, kept, record = airway_walls_filter(
        study=study, candidate_mask=mask, candidates=candidates
    )

    judged = record.details["with_lumen"]
    assert sorted(c.label_value for c in kept) == [2, 3, 4], judged
    assert set(np.unique(kept_mask.array)) == {0, 2, 3, 4}
    assert record.name == "postprocess_airway_walls"
    assert record.details["looked_at"] == 5 and record.details["removed"] == 2
    for dropped in ("1", "5"):
        assert judged[dropped]["airway"]
        assert judged[dropped]["wall_share"] >= AirwaySettings().min_wall_share
    # The solid nodule has no air by it and the cavity is closed: no lumen found.
    assert "2" not in judged and "3" not in judged
    # The nodule against the airway, outlined with its wall: the wall is most of the
    # candidate, but a nodule is left without it.
    beside = judged["4"]
    assert beside["wall_share"] >= AirwaySettings().min_wall_share and not beside["airway"]
    assert beside["piece_ml"] >= 0.8
    assert beside["piece_dot_hu"] >= AirwaySettings().min_piece_dot_hu


def test_a_liver_candidate_and_a_large_mass_are_not_looked_at():
    study, mask, candidates = _case()
    relabelled = tuple(
        c if c.label_value != 1 else LesionCandidate(**{**vars(c), "organ": "liver"})
        for c in candidates
    )

    largest = max(candidates, key=lambda c: c.volume_ml)

    _, kept, record = airway_walls_filter(
        study=study, candidate_mask=mask, candidates=relabelled,
        settings=AirwaySettings(max_volume_ml=largest.volume_ml - 1e-6),
    )  # fmt: skip

    assert {1, largest.label_value} <= {c.label_value for c in kept}
    assert record.details["looked_at"] == 3
    assert set(record.details["with_lumen"]) <= {"2", "3", "4", "5"} - {str(largest.label_value)}


def test_an_airway_blurred_into_the_lung_is_kept_not_guessed():
    # A wall the noise breaks (thin, faint): rays escape, no lumen, nothing dropped.
    study, mask, candidates = _case(noise_hu=15.0)
    faint = study.array.copy()
    faint[(faint > -500) & (faint < 200)] = -560.0  # every wall and nodule near the lung
    _, kept, record = airway_walls_filter(
        study=study.with_array(faint), candidate_mask=mask, candidates=candidates
    )

    assert len(kept) == 5 and record.details["removed"] == 0


@pytest.mark.parametrize("noise_hu", [8.0, 30.0])
def test_the_verdicts_hold_over_noise(noise_hu):
    study, mask, candidates = _case(noise_hu=noise_hu)

    _, kept, record = airway_walls_filter(study=study, candidate_mask=mask, candidates=candidates)

    assert sorted(c.label_value for c in kept) == [2, 3, 4], record.details["with_lumen"]
