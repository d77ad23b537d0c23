"""Lesion identities across studies: assignment, gating, registration, new/resolved/merge/split."""

import itertools
import math

import numpy as np
import pytest

from analytics.lesions.core.identities import (
    LesionObservation,
    TrackedLesion,
    fragments_combine,
    lesion_label,
)
from analytics.lesions.core.matching import (
    GATE_MIN_MM,
    equivalent_radius_mm,
    lesions_match,
    mask_points_lps,
    match_gate_mm,
)
from imaging.core.geometry.volume import Volume


def sphere_ml(diameter_mm: float) -> float:
    return math.pi * diameter_mm**3 / 6000.0


def uids():
    counter = itertools.count(1)
    return lambda: f"2.25.{next(counter)}"


def obs(key, organ, centre, volume_ml, **kw):
    return LesionObservation(
        key=key, organ=organ, centroid_lps_mm=centre, volume_ml=volume_ml, **kw
    )


def tracked(uid, organ, centre, volume_ml, label=None, **kw):
    return TrackedLesion(
        lesion_uid=uid,
        label=label or f"{organ.capitalize()} {uid}",
        organ=organ,
        centroid_baseline_mm=centre,
        volume_ml=volume_ml,
        **kw,
    )


def rigid(angle_deg: float, axis, shift_mm) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = np.deg2rad(angle_deg)
    matrix = np.eye(4)
    matrix[:3, :3] = np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * (k @ k)
    matrix[:3, 3] = shift_mm
    return matrix


def apply(matrix: np.ndarray, point) -> tuple[float, float, float]:
    return tuple(matrix[:3, :3] @ np.asarray(point, float) + matrix[:3, 3])


# --------------------------------------------------------------------------- baseline
def test_baseline_study_makes_every_lesion_new_with_labels_and_tracking_uids():
    result = lesions_match(
        previous=[],
        current=[
            obs("a", "liver", (-60, 20, -150), sphere_ml(15)),
            obs("b", "liver", (-80, 0, -140), sphere_ml(30)),
            obs("c", "lung", (-90, 10, -60), sphere_ml(12)),  # x < 0: patient's right
            obs("d", "lung", (95, 0, -50), sphere_ml(8)),  # x > 0: patient's left
        ],
        uid_factory=uids(),
    )
    labels = {a.observation_keys[0]: a.label for a in result.assignments}
    assert labels == {"b": "Liver 1", "a": "Liver 2", "c": "Right lung 1", "d": "Left lung 1"}
    assert {a.status for a in result.assignments} == {"new"}
    assert sorted(a.lesion_uid for a in result.assignments) == [f"2.25.{i}" for i in range(1, 5)]
    assert result.lesion_uid_of("b") == result.assignments[0].lesion_uid
    assert len(result.identities) == 4 and not result.merges and not result.splits


def test_default_uid_factory_makes_dicom_uids():
    result = lesions_match(previous=[], current=[obs("a", "liver", (0, 0, 0), 1.0)])
    uid = result.assignments[0].lesion_uid
    assert uid.replace(".", "").isdigit() and len(uid) <= 64


@pytest.mark.parametrize(
    ("organ", "x", "existing", "midline", "expected"),
    [
        ("liver", -50.0, (), 0.0, "Liver 1"),
        ("liver", -50.0, ("Liver 1", "Liver 3", "Right lung 4"), 0.0, "Liver 4"),
        ("lung", -80.0, (), 0.0, "Right lung 1"),
        ("lung", 80.0, ("Right lung 1", "Right lung 2"), 0.0, "Left lung 1"),
        ("lung", 10.0, (), 20.0, "Right lung 1"),  # right of a body midline at x = 20 mm
        ("Kidney", 70.0, ("Left kidney 1",), 0.0, "Left kidney 2"),
        ("lymph_node", 0.0, (), 0.0, "Lymph node 1"),
    ],
)
def test_lesion_label(organ, x, existing, midline, expected):
    assert (
        lesion_label(
            organ=organ,
            centroid_baseline_mm=(x, 0.0, 0.0),
            existing_labels=existing,
            midline_x_mm=midline,
        )
        == expected
    )


# --------------------------------------------------------------------------- gating
@pytest.mark.parametrize(
    ("diameter_before_mm", "diameter_now_mm", "gate_mm"),
    [
        (5.0, 5.0, GATE_MIN_MM),  # 1.5 x (2.5 + 2.5) = 7.5 < 10
        (8.0, 6.0, 10.5),  # 1.5 x (4 + 3)
        (30.0, 30.0, 45.0),
        (0.0, 20.0, 15.0),  # a resolved lesion's own size is unknown: only the other counts
    ],
)
def test_match_gate_is_size_aware(diameter_before_mm, diameter_now_mm, gate_mm):
    gate = match_gate_mm(
        volume_before_ml=sphere_ml(diameter_before_mm), volume_now_ml=sphere_ml(diameter_now_mm)
    )
    assert gate == pytest.approx(max(gate_mm, GATE_MIN_MM))


@pytest.mark.parametrize(
    ("diameter_mm", "moved_mm", "linked"),
    [
        (5.0, 9.0, True),
        (5.0, 11.0, False),  # small lesion: 10 mm floor
        (30.0, 40.0, True),
        (30.0, 50.0, False),  # large lesion: 1.5 x (15 + 15) = 45 mm
    ],
)
def test_link_or_not_by_distance_relative_to_size(diameter_mm, moved_mm, linked):
    volume = sphere_ml(diameter_mm)
    result = lesions_match(
        previous=[tracked("L1", "liver", (0, 0, 0), volume)],
        current=[obs("x", "liver", (moved_mm, 0, 0), volume)],
        uid_factory=uids(),
    )
    statuses = sorted(a.status for a in result.assignments)
    assert statuses == (["tracked"] if linked else ["new", "resolved"])


def test_organs_must_agree():
    result = lesions_match(
        previous=[tracked("L1", "liver", (0, 0, 0), 2.0)],
        current=[obs("x", "lung", (1, 0, 0), 2.0)],
        uid_factory=uids(),
    )
    assert [a.status for a in result.assignments] == ["resolved", "new"]


def test_assignment_is_optimal_not_greedy():
    # Greedy nearest-first would give A the closer X (4.5 mm) and leave B 12 mm from Y,
    # beyond the 10 mm gate: the optimal assignment links both.
    small = sphere_ml(5)
    result = lesions_match(
        previous=[tracked("A", "liver", (0, 0, 0), small), tracked("B", "liver", (8, 0, 0), small)],
        current=[obs("X", "liver", (4.5, 0, 0), small), obs("Y", "liver", (-4, 0, 0), small)],
        uid_factory=uids(),
    )
    assert result.lesion_uid_of("Y") == "A" and result.lesion_uid_of("X") == "B"
    assert [a.status for a in result.assignments] == ["tracked", "tracked"]


# --------------------------------------------------------------------------- registration
def test_rotated_and_shifted_follow_up_links_through_the_registration():
    # Two liver lesions 25 mm apart along x and a follow-up shifted by 25 mm along x:
    # without registration lesion A's follow-up position is lesion B's baseline position.
    pose = rigid(8.0, (0.2, 0.1, 1.0), (25.0, -12.0, 6.0))
    baseline = {"A": (-70.0, 10.0, -140.0), "B": (-45.0, 10.0, -140.0), "C": (90.0, 5.0, -60.0)}
    organs = {"A": "liver", "B": "liver", "C": "lung"}
    volumes = {"A": sphere_ml(12), "B": sphere_ml(14), "C": sphere_ml(9)}
    previous = [tracked(k, organs[k], baseline[k], volumes[k]) for k in baseline]
    rng = np.random.default_rng(3)
    growth = {"A": 1.6, "B": 0.5, "C": 1.1}
    current = [
        obs(
            f"seg{k}",
            organs[k],
            np.asarray(apply(pose, baseline[k])) + rng.normal(0, 1.0, 3),
            volumes[k] * growth[k],
        )
        for k in ("C", "B", "A")
    ]
    for to_baseline in (np.linalg.inv(pose), lambda p: (p - pose[:3, 3]) @ pose[:3, :3]):
        result = lesions_match(previous=previous, current=current, to_baseline=to_baseline)
        assert {k: result.lesion_uid_of(f"seg{k}") for k in baseline} == {k: k for k in baseline}
        assert all(a.distance_mm < 4.0 for a in result.tracked)
        assert len(result.tracked) == 3 and not result.new and not result.resolved
    unregistered = lesions_match(previous=previous, current=current, uid_factory=uids())
    assert unregistered.lesion_uid_of("segA") != "A"


def test_updated_identities_carry_the_baseline_frame_position_forward():
    pose = rigid(5.0, (0, 0, 1), (10.0, 0.0, 0.0))
    previous = [tracked("A", "liver", (-60.0, 0.0, -100.0), 2.0)]
    current = [obs("a", "liver", apply(pose, (-58.0, 0.0, -100.0)), 3.0)]
    result = lesions_match(previous=previous, current=current, to_baseline=np.linalg.inv(pose))
    (identity,) = result.identities
    assert identity.centroid_baseline_mm == pytest.approx((-58.0, 0.0, -100.0))
    assert identity.volume_ml == 3.0 and not identity.resolved


def test_rejects_a_bad_transform_and_duplicate_keys():
    with pytest.raises(ValueError, match="4x4"):
        lesions_match(
            previous=[], current=[obs("a", "liver", (0, 0, 0), 1.0)], to_baseline=np.eye(3)
        )
    with pytest.raises(ValueError, match="unique"):
        lesions_match(
            previous=[],
            current=[obs("a", "liver", (0, 0, 0), 1.0), obs("a", "liver", (50, 0, 0), 1.0)],
        )


# --------------------------------------------------------------------------- new and resolved
def test_new_and_resolved_lesions_and_a_reappearance():
    previous = [
        tracked("A", "liver", (-60, 0, -120), 4.0, label="Liver 1"),
        tracked("B", "liver", (-90, 30, -160), 0.5, label="Liver 2"),
    ]
    first = lesions_match(
        previous=previous,
        current=[
            obs("a", "liver", (-61, 1, -120), 3.0),
            obs("n", "liver", (-40, -40, -180), 0.1),  # far from anything known
        ],
        uid_factory=uids(),
    )
    status = {a.lesion_uid: a.status for a in first.assignments}
    assert status == {"A": "tracked", "B": "resolved", "2.25.1": "new"}
    assert first.new[0].label == "Liver 3"
    resolved = next(i for i in first.identities if i.lesion_uid == "B")
    assert resolved.resolved and resolved.volume_ml == 0.5  # keeps its size for the gate

    # B comes back where it was: the same identity, not a new lesion.
    second = lesions_match(
        previous=first.identities,
        current=[obs("b", "liver", (-89, 31, -161), 0.3)],
        uid_factory=uids(),
    )
    b = next(a for a in second.assignments if a.lesion_uid == "B")
    assert b.status == "tracked" and b.reappeared
    assert not second.new


# --------------------------------------------------------------------------- merges and splits
def test_two_lesions_that_coalesce_are_a_merge():
    # Two 16 mm lesions 18 mm apart grow into one lesion between them.
    r = sphere_ml(16)
    result = lesions_match(
        previous=[tracked("A", "liver", (-9, 0, 0), r), tracked("B", "liver", (9, 0, 0), r)],
        current=[obs("m", "liver", (0.5, 0, 0), 2.4 * r)],
        uid_factory=uids(),
    )
    (merge,) = result.merges
    assert merge.observation_key == "m" and set(merge.lesion_uids) == {"A", "B"}
    kept = merge.kept_uid
    gone = ({"A", "B"} - {kept}).pop()
    by_uid = {a.lesion_uid: a for a in result.assignments}
    assert by_uid[kept].status == "tracked" and by_uid[gone].status == "merged"
    assert by_uid[gone].merged_into == kept
    assert not result.new and not result.resolved


def test_a_lesion_gone_is_not_merged_into_a_neighbour_that_grows_into_its_place():
    # B (15 mm) is gone at the first follow-up; its neighbour C, 16 mm away, grows from
    # 12 to 20 mm by the second. C's sphere now reaches where B was: C grew, B did not
    # merge into it (a merge would give the gone target C's size).
    previous = [
        tracked("B", "liver", (-50, 0, 0), sphere_ml(15), label="Liver 1"),
        tracked("C", "liver", (-50, 16, 0), sphere_ml(12), label="Liver 2"),
    ]
    first = lesions_match(
        previous=previous, current=[obs("c1", "liver", (-50, 16, 0), sphere_ml(12))],
        uid_factory=uids(),
    )  # fmt: skip
    assert {a.lesion_uid: a.status for a in first.assignments} == {"B": "resolved", "C": "tracked"}

    second = lesions_match(
        previous=first.identities, current=[obs("c2", "liver", (-50, 16, 0), sphere_ml(20))],
        uid_factory=uids(),
    )  # fmt: skip

    status = {a.lesion_uid: (a.status, a.merged_into) for a in second.assignments}
    assert status == {"B": ("resolved", ""), "C": ("tracked", "")}
    assert not second.merges


def test_a_lesion_that_breaks_up_is_a_split_with_diameters_added():
    previous = [tracked("A", "liver", (0, 0, 0), sphere_ml(24))]
    current = [
        obs("f1", "liver", (-8, 0, 0), sphere_ml(14), longest_diameter_mm=15.0),
        obs("f2", "liver", (9, 1, 0), sphere_ml(12), longest_diameter_mm=13.0),
    ]
    result = lesions_match(previous=previous, current=current, uid_factory=uids())
    (split,) = result.splits
    assert split.lesion_uid == "A" and sorted(split.observation_keys) == ["f1", "f2"]
    (a,) = result.assignments
    assert a.status == "tracked" and len(a.observation_keys) == 2
    assert result.lesion_uid_of("f1") == result.lesion_uid_of("f2") == "A"
    (identity,) = result.identities
    assert identity.volume_ml == pytest.approx(sphere_ml(14) + sphere_ml(12))
    combined = fragments_combine(current)
    assert combined.longest_diameter_mm == 28.0  # RECIST 1.1 4.3.2: fragments add up
    assert combined.volume_ml == pytest.approx(identity.volume_ml)


def test_a_separate_lesion_far_away_is_not_a_split():
    previous = [tracked("A", "liver", (0, 0, 0), sphere_ml(20))]
    current = [
        obs("a", "liver", (1, 0, 0), sphere_ml(20)),
        obs("n", "liver", (40, 0, 0), sphere_ml(6)),
    ]
    result = lesions_match(previous=previous, current=current, uid_factory=uids())
    assert not result.splits and [a.status for a in result.assignments] == ["tracked", "new"]


# --------------------------------------------------------------------------- masks
def box(lo, hi, step=1.0):
    axes = [np.arange(a, b, step) for a, b in zip(lo, hi, strict=True)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)


def test_mask_overlap_links_an_unevenly_growing_lesion_beyond_the_distance_gate():
    before = box((-30, -3, -3), (10, 3, 3))  # elongated along x
    after = box((-5, -3, -3), (35, 3, 3))
    volume = len(before) / 1000.0
    previous = [tracked("A", "liver", before.mean(axis=0), volume, mask_points_baseline_mm=before)]
    moved = float(np.linalg.norm(after.mean(axis=0) - before.mean(axis=0)))
    assert moved > match_gate_mm(volume_before_ml=volume, volume_now_ml=volume)
    with_masks = lesions_match(
        previous=previous,
        current=[obs("a", "liver", after.mean(axis=0), volume, mask_points_lps_mm=after)],
        uid_factory=uids(),
    )
    assert [a.status for a in with_masks.assignments] == ["tracked"]
    assert 0.0 < with_masks.assignments[0].dice < 1.0
    without = lesions_match(
        previous=[tracked("A", "liver", before.mean(axis=0), volume)],
        current=[obs("a", "liver", after.mean(axis=0), volume)],
        uid_factory=uids(),
    )
    assert sorted(a.status for a in without.assignments) == ["new", "resolved"]


def test_mask_points_from_a_label_volume_are_lps_voxel_centres():
    array = np.zeros((4, 5, 6), dtype=np.uint8)
    array[1, 2, 3] = 1
    array[2, 2, 3] = 2
    direction = np.diag([-1.0, 1.0, 1.0])
    mask = Volume(array, (0.5, 0.8, 2.0), (10.0, 20.0, 30.0), direction, kind="label")
    assert mask_points_lps(mask=mask).shape == (2, 3)
    (point,) = mask_points_lps(mask=mask, label=2)
    assert point == pytest.approx((10.0 - 3 * 0.5, 20.0 + 2 * 0.8, 30.0 + 2 * 2.0))


def test_equivalent_radius():
    assert equivalent_radius_mm(sphere_ml(20)) == pytest.approx(10.0)
    assert equivalent_radius_mm(0.0) == 0.0 and equivalent_radius_mm(math.nan) == 0.0
