"""A first study whose anatomy contradicts its header left-right, with no baseline to
compare with: a mirrored header and a patient with situs inversus (or dextrocardia)
under a correct header look the same, and the finding says so for the reviewer."""

from __future__ import annotations

from imaging.core.registration.orientation import (
    SITUS_ALTERNATIVE,
    orientation_check,
    orientation_standardise,
    volume_flip_header,
)
from tests.imaging.core.test_anatomy import trunk_volume


def test_a_situs_inversus_baseline_is_flagged_naming_situs_inversus():
    # The liver truly on the left, the heart on the right, the header right.
    study = trunk_volume(mirrored=True, seed=7)

    result = orientation_standardise(volume=study, baseline=None)

    assert result.needs_review
    assert "situs inversus" in result.check.finding and "dextrocardia" in result.check.finding
    assert any("situs inversus" in reason for reason in result.check.reasons)
    # What the pipeline stores (the run's step record and its review flag) says it too.
    assert SITUS_ALTERNATIVE in result.record.details["finding"]
    assert any("situs inversus" in r for r in result.record.details["reasons"])


def test_a_mirrored_header_without_baseline_names_the_same_alternative():
    wrong = volume_flip_header(volume=trunk_volume(seed=5), flips=(-1, 1, 1))

    check = orientation_check(volume=wrong)

    assert check.flips == (-1, 1, 1) and check.needs_review
    assert "left-right flipped" in check.finding and SITUS_ALTERNATIVE in check.finding


def test_other_axes_and_correct_headers_say_nothing_of_situs():
    head_foot = orientation_check(
        volume=volume_flip_header(volume=trunk_volume(seed=5), flips=(1, 1, -1))
    )
    assert head_foot.flips == (1, 1, -1)
    assert "situs" not in head_foot.finding
    assert not any("situs" in reason for reason in head_foot.reasons)
    correct = orientation_check(volume=trunk_volume(seed=3))
    assert not correct.needs_review and "situs" not in correct.finding


def test_a_baseline_that_settles_left_right_leaves_situs_unnamed():
    baseline = trunk_volume(seed=1)
    wrong = volume_flip_header(volume=trunk_volume(seed=6), flips=(-1, 1, 1))

    check = orientation_check(volume=wrong, baseline=baseline)

    assert check.flips == (-1, 1, 1) and check.baseline.preferred == "LR"
    assert "situs" not in check.finding
