"""The finding-state rules one by one (no database): which findings count, which are
equivocal, which are not found, and a rejection's reach."""

import datetime as dt
import math

import pytest

from analytics.lesions.core.findings import (
    Sighting,
    finding_states,
    identity_rejection,
    low_confidence,
    new_lesion_small,
    node_normal,
    sighting_confirms,
)

NAN = math.nan
AT = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)


def seen(index, **changes):
    values = {
        "lesion_uid": "x",
        "study_index": index,
        "study_date": dt.date(2024, 1, 1) + dt.timedelta(days=60 * index),
        "organ": "liver",
        "found": True,
        "longest_diameter_mm": 15.0,
        "short_axis_mm": 12.0,
        "confidence": 0.95,
    }
    return Sighting(**{**values, **changes})


@pytest.mark.parametrize(
    ("organ", "ld", "sa", "thickness", "expected"),
    [
        ("liver", 9.9, 8.0, None, True),
        ("liver", 10.0, 8.0, None, False),
        ("liver", 11.0, 8.0, 6.0, True),  # twice a 6 mm slice: 12 mm
        ("liver", 12.0, 8.0, 6.0, False),
        ("lymph_node", 30.0, 14.9, None, True),  # a node 10 to 15 mm may not be disease
        ("lymph_node", 30.0, 15.0, None, False),
        ("liver", NAN, NAN, None, True),  # unknown size counts as small
    ],
)
def test_new_lesion_small(organ, ld, sa, thickness, expected):
    assert (
        new_lesion_small(
            organ=organ, longest_diameter_mm=ld, short_axis_mm=sa, slice_thickness_mm=thickness
        )
        is expected
    )


def test_node_normal_and_low_confidence_lines():
    assert node_normal(9.9) and not node_normal(10.0) and not node_normal(NAN)
    assert low_confidence(0.79) and not low_confidence(0.8) and not low_confidence(NAN)


def test_a_repeat_sighting_confirms_only_when_it_would_itself_be_unequivocal():
    assert sighting_confirms(seen(1))
    assert not sighting_confirms(seen(1, confidence=0.6))
    assert not sighting_confirms(seen(1, longest_diameter_mm=8.0))
    assert not sighting_confirms(seen(1, provisional=True))
    assert not sighting_confirms(seen(1, found=False))


def test_the_latest_decision_on_an_identity_stands():
    rejected = seen(0, review_state="rejected", reviewed_at=AT)
    accepted_later = seen(1, review_state="accepted", reviewed_at=AT + dt.timedelta(days=1))
    accepted_before = seen(1, review_state="accepted", reviewed_at=AT - dt.timedelta(days=1))
    assert identity_rejection([rejected, seen(1)]) is rejected
    assert identity_rejection([rejected, accepted_later]) is None
    assert identity_rejection([rejected, accepted_before]) is rejected
    assert identity_rejection([seen(0), seen(1)]) is None


def test_states_of_a_lesion_over_its_studies():
    states = finding_states(
        sightings=[
            seen(0),
            seen(1, found=False),
            seen(2, found=False, gone_confirmed=True),
            seen(3, found=False, too_small=True),
            seen(4, found=False, merged_into_label="Liver 2"),
        ]
    )
    assert [states[("x", i)].state for i in range(5)] == [
        "confirmed",
        "not_found",
        "confirmed",
        "confirmed",
        "confirmed",
    ]
    assert "confirmed gone by a radiologist" in states[("x", 2)].reason
    assert "counts 5 mm" in states[("x", 3)].reason
    assert "merged into Liver 2" in states[("x", 4)].reason


def test_a_new_lesion_measured_by_hand_is_confirmed_at_once():
    states = finding_states(sightings=[seen(1, by_hand=True, longest_diameter_mm=6.0)])
    assert states[("x", 1)].state == "confirmed"
    assert "measured by hand by a radiologist" in states[("x", 1)].reason


def test_a_new_lesion_not_found_after_it_was_confirmed_is_not_called_equivocal():
    # New at study 1 (absent at baseline), seen again at 2 (confirmed), not found at 3.
    baseline = seen(0, lesion_uid="y")
    confirmed = [seen(1), seen(2), seen(3, found=False)]
    states = finding_states(sightings=[baseline, *confirmed])
    assert states[("x", 2)].state == "confirmed"
    assert "equivocal" not in states[("x", 3)].reason
    assert "the time point is not evaluable" in states[("x", 3)].reason
    # Seen once only, then not found: it was only ever equivocal.
    once = finding_states(sightings=[baseline, seen(1), seen(2, found=False)])
    assert "an equivocal finding seen before" in once[("x", 2)].reason
