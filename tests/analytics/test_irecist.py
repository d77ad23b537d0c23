"""iRECIST beside RECIST 1.1 (Seymour L et al., Lancet Oncol 2017;18:e143-e152, Table 2),
the best overall responses of both, and the landmark placement of a follow-up that
cannot be registered (no database)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from analytics.lesions.core.bor import BestResponseSettings, irecist_best_overall_response
from analytics.lesions.core.landmarks import landmark_placement, point_inside_volume
from analytics.lesions.core.patient import patient_responses_assess
from analytics.lesions.core.readings import LesionReading, StudyReading

START = dt.date(2024, 1, 1)


def study(day, *lesions, nt=None):
    readings = tuple(
        LesionReading(uid, organ, ld, volume_ml=float("nan")) for uid, organ, ld in lesions
    )
    return StudyReading(
        f"S{day}", START + dt.timedelta(days=day), readings, non_target_unequivocal_progression=nt
    )


def irecist(*studies):
    result = patient_responses_assess(timeline=list(studies), irecist=True)
    return [r.category for r in result.recist[1:]], [i.category for i in result.irecist[1:]], result


BASE = [("a", "liver", 40.0), ("b", "lung", 20.0)]  # sum 60


def test_progression_confirmed_at_the_next_assessment_4_to_8_weeks_later():
    recist, i, result = irecist(
        study(0, *BASE),
        study(56, ("a", "liver", 50.0), ("b", "lung", 25.0)),  # 75: +25%, +15 mm: PD
        study(98, ("a", "liver", 55.0), ("b", "lung", 26.0)),  # 81: a further +6 mm
    )
    assert recist == ["PD", "PD"] and i == ["iUPD", "iCPD"]
    assert "confirmed: the targets' sum grew a further 6.0 mm" in result.irecist[2].notes[0]


def test_unconfirmed_progression_followed_by_shrinkage_resets_the_bar():
    recist, i, result = irecist(
        study(0, *BASE),
        study(56, ("a", "liver", 50.0), ("b", "lung", 25.0)),  # PD -> iUPD
        study(98, ("a", "liver", 30.0), ("b", "lung", 10.0)),  # 40: -33% from baseline
        study(140, ("a", "liver", 42.0), ("b", "lung", 17.0)),  # 59: +48% from nadir 40: PD
    )
    assert recist == ["PD", "PR", "PD"]
    assert i == ["iUPD", "iPR", "iUPD"]  # reset, then a new iUPD needing its own confirmation
    assert "the bar is reset" in result.irecist[2].notes[0]


def test_no_further_increase_keeps_iupd():
    _, i, _ = irecist(
        study(0, *BASE),
        study(56, ("a", "liver", 50.0), ("b", "lung", 25.0)),
        study(98, ("a", "liver", 51.0), ("b", "lung", 25.0)),  # +1 mm only, still PD
    )
    assert i == ["iUPD", "iUPD"]


def test_an_assessment_under_4_weeks_after_iupd_does_not_confirm_it():
    _, i, result = irecist(
        study(0, *BASE),
        study(56, ("a", "liver", 50.0), ("b", "lung", 25.0)),
        study(76, ("a", "liver", 60.0), ("b", "lung", 30.0)),  # 20 days later, +15 mm
        study(100, ("a", "liver", 61.0), ("b", "lung", 30.0)),  # 44 days after the iUPD: +1 mm
    )
    assert i == ["iUPD", "iUPD", "iCPD"]  # sequential increases add up (16 mm)
    assert "under 4 weeks" in result.irecist[2].notes[0]


def test_new_lesions_are_sorted_into_new_targets_and_non_targets_and_another_one_confirms():
    recist, i, result = irecist(
        study(0, *BASE),
        study(56, *BASE, ("n1", "liver", 15.0), ("n2", "liver", 6.0)),  # new: iUPD
        study(98, *BASE, ("n1", "liver", 15.0), ("n2", "liver", 6.0), ("n3", "lung", 8.0)),
    )
    assert recist == ["PD", "PD"] and i == ["iUPD", "iCPD"]
    assert result.irecist[1].new_target_uids == ("n1",)
    assert result.irecist[1].new_non_target_uids == ("n2",)
    assert result.irecist[1].new_target_sum_mm == 15.0
    assert "1 more new lesion" in result.irecist[2].notes[0]


def test_new_target_lesions_growing_5_mm_confirm_and_shrinking_targets_reset():
    _, i, _ = irecist(
        study(0, *BASE),
        study(56, *BASE, ("n1", "liver", 15.0)),
        study(98, *BASE, ("n1", "liver", 21.0)),
    )
    assert i == ["iUPD", "iCPD"]
    _, i, _ = irecist(
        study(0, *BASE),
        study(56, *BASE, ("n1", "liver", 15.0)),
        study(98, ("a", "liver", 25.0), ("b", "lung", 15.0), ("n1", "liver", 15.0)),  # -33%
    )
    assert i == ["iUPD", "iPR"]  # the working group's scenario B


def test_icpd_ends_the_course_and_the_best_responses_read_side_by_side():
    recist, i, result = irecist(
        study(0, *BASE),
        study(56, ("a", "liver", 25.0), ("b", "lung", 15.0)),  # PR
        study(98, ("a", "liver", 24.0), ("b", "lung", 14.0)),  # PR confirmed
        study(140, ("a", "liver", 40.0), ("b", "lung", 22.0)),  # PD -> iUPD
        study(182, ("a", "liver", 46.0), ("b", "lung", 24.0)),  # +8 mm: iCPD
        study(224, ("a", "liver", 10.0), ("b", "lung", 5.0)),
    )
    assert recist[:4] == ["PR", "PR", "PD", "PD"]
    assert i == ["iPR", "iPR", "iUPD", "iCPD", "iCPD"]
    assert result.best.category == "PR" and result.best_irecist.category == "iPR"


def test_irecist_best_response_lets_iupd_be_followed_by_a_response():
    points = [
        (START + dt.timedelta(days=56), "iUPD"),
        (START + dt.timedelta(days=98), "iPR"),
        (START + dt.timedelta(days=140), "iPR"),
    ]
    best = irecist_best_overall_response(timepoints=points, baseline_date=START)
    assert best.category == "iPR"
    unconfirmed = irecist_best_overall_response(timepoints=points[:1], baseline_date=START)
    assert unconfirmed.category == "iUPD"
    settings = BestResponseSettings(min_sd_days=100)
    confirmed = irecist_best_overall_response(
        timepoints=[points[0], (START + dt.timedelta(days=98), "iCPD")],
        baseline_date=START,
        settings=settings,
    )
    assert confirmed.category == "iCPD"


# --------------------------------------------------------------------------- landmarks
BASELINE = {
    "body_centroid_lps_mm": (0.0, 10.0, 0.0),
    "body_volume_ml": 30000.0,
    "lung_centroid_lps_mm": (0.0, 5.0, 60.0),
    "lung_volume_ml": 4000.0,
    "lung_base_s_mm": -40.0,
    "liver_centroid_lps_mm": (-60.0, 10.0, -90.0),
    "liver_volume_ml": 1500.0,
    "heart_centroid_lps_mm": None,
    "spine_centroid_lps_mm": (0.0, 80.0, 0.0),
}


def moved(shift, **changes):
    out = dict(BASELINE)
    for key in (
        "body_centroid_lps_mm",
        "lung_centroid_lps_mm",
        "liver_centroid_lps_mm",
        "spine_centroid_lps_mm",
    ):
        out[key] = tuple(np.asarray(BASELINE[key]) + shift)
    out["lung_base_s_mm"] = BASELINE["lung_base_s_mm"] + shift[2]
    out.update(changes)
    return out


def test_a_follow_up_is_placed_by_shared_landmarks():
    shift = np.array([12.0, -7.0, 30.0])
    placement = landmark_placement(baseline=BASELINE, follow_up=moved(shift))
    assert placement.to_baseline[:3, 3] == pytest.approx(-shift)
    assert "head-foot from the liver's centroid" in placement.basis


def test_a_partly_scanned_organ_is_not_a_head_foot_landmark():
    # The follow-up covers the abdomen only: lungs and body cut short, the liver whole.
    follow = moved(np.array([0.0, 0.0, 20.0]), lung_volume_ml=300.0, body_volume_ml=12000.0)
    placement = landmark_placement(baseline=BASELINE, follow_up=follow)
    assert placement.to_baseline[2, 3] == pytest.approx(-20.0)
    follow = dict(follow, liver_volume_ml=500.0)  # the liver cut short too: no landmark
    assert landmark_placement(baseline=BASELINE, follow_up=follow) is None
    assert landmark_placement(baseline=None, follow_up=BASELINE) is None


@pytest.mark.parametrize(
    ("point", "expected"),
    [((0.0, 0.0, 0.0), True), ((0.0, 0.0, 60.0), False), ((0.0, 0.0, -1.5), False)],
)
def test_point_inside_a_stored_volume(point, expected):
    geometry = {
        "shape_ijk": [10, 10, 20],
        "spacing_mm": [1.0, 1.0, 2.5],
        "origin_mm": [-5.0, -5.0, -1.0],
        "direction": [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
    }
    assert point_inside_volume(point_lps_mm=point, geometry=geometry) is expected
    assert point_inside_volume(point_lps_mm=point, geometry=None) is None
