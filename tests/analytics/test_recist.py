"""RECIST 1.1 rules, table-driven from Eisenhauer et al. 2009 (no database)."""

import datetime as dt
import math

import pandas as pd
import pytest

from analytics.lesions.core.assess import recist_assess
from analytics.lesions.core.readings import (
    LesionReading,
    StudyReading,
    timeline_from_measurements,
)
from analytics.lesions.core.recist import (
    is_measurable,
    nadir,
    non_target_progression,
    non_target_response,
    overall_response,
    pct_change,
    sphere_diameter_mm,
    sum_of_diameters,
    target_partial_response,
    target_progression,
    target_response,
    targets_select,
)

NAN = math.nan


def lesion(uid, organ="liver", ld=20.0, volume=NAN, is_target=None):
    return LesionReading(
        lesion_uid=uid, organ=organ, longest_diameter_mm=ld, volume_ml=volume, is_target=is_target
    )


def study(day, *lesions, nt_pd=None):
    return StudyReading(
        study_uid=f"S{day}",
        study_date=dt.date(2024, 1, 1) + dt.timedelta(days=day),
        lesions=tuple(lesions),
        non_target_unequivocal_progression=nt_pd,
    )


def sphere_ml(d):
    return math.pi * d**3 / 6000.0


# --------------------------------------------------------------------------- 3.1.1
@pytest.mark.parametrize(
    ("ld", "slice_mm", "expected"),
    [
        (9.9, None, False),
        (10.0, None, True),  # exactly 10 mm is measurable
        (25.0, None, True),
        (0.0, None, False),
        (NAN, None, False),
        (10.0, 5.0, True),  # up to 5 mm slices the minimum stays 10 mm
        (11.9, 6.0, False),  # thicker slices: twice the slice thickness
        (12.0, 6.0, True),
    ],
)
def test_is_measurable(ld, slice_mm, expected):
    assert is_measurable(longest_diameter_mm=ld, slice_thickness_mm=slice_mm) is expected


# --------------------------------------------------------------------------- 4.2
@pytest.mark.parametrize(
    ("lesions", "expected"),
    [
        pytest.param(
            [lesion("a", "liver", 30), lesion("b", "liver", 40), lesion("c", "liver", 35)],
            ("b", "c"),
            id="more than 2 in one organ: the 2 largest",
        ),
        pytest.param(
            [lesion("a", "liver", 9.9), lesion("b", "lung", 10.0), lesion("c", "lung", 8.0)],
            ("b",),
            id="under 10 mm is not a target; exactly 10 mm is",
        ),
        pytest.param(
            [
                lesion("l1", "liver", 50),
                lesion("l2", "liver", 45),
                lesion("l3", "liver", 44),
                lesion("p1", "lung", 30),
                lesion("p2", "lung", 29),
                lesion("p3", "lung", 28),
                lesion("b1", "bone", 20),
            ],
            ("l1", "l2", "p1", "p2", "b1"),
            id="more than 5 in all: at most 5, at most 2 per organ",
        ),
        pytest.param(
            [
                lesion("l1", "liver", 50),
                lesion("l2", "liver", 45),
                lesion("p1", "lung", 40),
                lesion("p2", "lung", 38),
                lesion("b1", "bone", 30),
                lesion("a1", "adrenal", 12),
                lesion("k1", "kidney", 11),
            ],
            ("l1", "p1", "b1", "a1", "k1"),
            id="five organs: each organ represented before a second lesion of any",
        ),
        pytest.param(
            [
                lesion("z", "liver", 20, volume=3.0),
                lesion("y", "liver", 20, volume=4.0),
                lesion("x", "liver", 20, volume=4.0),
            ],
            ("x", "y"),
            id="ties: larger volume, then smaller uid",
        ),
        pytest.param([lesion("a", "liver", 5)], (), id="nothing measurable"),
    ],
)
def test_targets_select(lesions, expected):
    assert targets_select(lesions=lesions) == expected


# --------------------------------------------------------------------------- sums and changes
@pytest.mark.parametrize(
    ("diameters", "expected"),
    [([10.0, 20.0, 0.0], 30.0), ([], 0.0), ([12.5, NAN, 3.0], 15.5)],
)
def test_sum_of_diameters(diameters, expected):
    assert sum_of_diameters(diameters) == expected


@pytest.mark.parametrize(
    ("value", "reference", "expected"),
    [
        (12.0, 10.0, 20.0),
        (7.0, 10.0, -30.0),
        (0.0, 10.0, -100.0),
        (0.0, 0.0, 0.0),
        (5.0, 0.0, math.inf),
    ],
)
def test_pct_change(value, reference, expected):
    assert pct_change(value=value, reference=reference) == pytest.approx(expected)


def test_pct_change_of_unknown_is_unknown():
    assert math.isnan(pct_change(value=NAN, reference=10.0))


@pytest.mark.parametrize(
    ("sums", "expected"),
    [([50.0, 40.0, 45.0], 40.0), ([30.0, 35.0], 30.0), ([30.0, NAN, 20.0], 20.0)],
)
def test_nadir_is_the_smallest_sum_including_baseline(sums, expected):
    assert nadir(sums) == expected


def test_nadir_needs_a_baseline():
    with pytest.raises(ValueError):
        nadir([])


# --------------------------------------------------------------------------- 4.3.1
@pytest.mark.parametrize(
    ("nadir_mm", "sum_mm", "expected"),
    [
        (25.0, 30.0, True),  # exactly +20% and exactly +5 mm
        (10.0, 12.0, False),  # +20% but only +2 mm
        (50.0, 59.0, False),  # +9 mm but +18%
        (50.0, 60.0, True),
        (100.0, 119.9, False),
        (0.0, 5.0, True),  # from nothing: +5 mm decides
        (0.0, 4.0, False),
        (40.0, 30.0, False),
    ],
)
def test_target_progression_needs_20_percent_and_5_mm_over_nadir(nadir_mm, sum_mm, expected):
    assert target_progression(sum_mm=sum_mm, nadir_sum_mm=nadir_mm) is expected


@pytest.mark.parametrize(
    ("baseline", "now", "expected"),
    [(50.0, 35.0, True), (50.0, 35.1, False), (100.0, 0.0, True), (100.0, 71.0, False)],
)
def test_target_partial_response_is_30_percent_below_baseline(baseline, now, expected):
    assert target_partial_response(sum_mm=now, baseline_sum_mm=baseline) is expected


@pytest.mark.parametrize(
    ("baseline", "nadir_mm", "now", "missing", "expected"),
    [
        pytest.param(60, 60, 0, 0, "CR", id="all targets gone"),
        pytest.param(50, 50, 35, 0, "PR", id="exactly -30% from baseline"),
        pytest.param(50, 50, 36, 0, "SD", id="-28%"),
        pytest.param(50, 50, 60, 0, "PD", id="exactly +20% and +10 mm"),
        pytest.param(100, 60, 72, 0, "PD", id="growth after a nadir, still below baseline"),
        pytest.param(100, 50, 65, 0, "PD", id="PD wins over -35% from baseline"),
        pytest.param(20, 12, 15, 0, "SD", id="growth after a nadir: +25% but only +3 mm"),
        pytest.param(100, 60, 70, 0, "PR", id="+16.7% from nadir: continued PR"),
        pytest.param(30, 0, 4, 0, "PR", id="after CR a 4 mm lesion: not +5 mm"),
        pytest.param(30, 0, 5, 0, "PD", id="after CR +5 mm"),
        pytest.param(50, 40, 30, 1, "NE", id="a target not evaluated"),
        pytest.param(50, 40, 80, 1, "PD", id="not all evaluated but PD already"),
    ],
)
def test_target_response(baseline, nadir_mm, now, missing, expected):
    assert (
        target_response(
            sum_mm=now, baseline_sum_mm=baseline, nadir_sum_mm=nadir_mm, not_evaluated=missing
        )
        == expected
    )


# --------------------------------------------------------------------------- 4.3.3 / 4.3.4
@pytest.mark.parametrize(
    ("nadir_ml", "now_ml", "expected"),
    [
        (10.0, 17.3, True),  # +73%, sphere diameter 26.7 -> 32.1 mm
        (10.0, 17.0, False),  # +70%
        (0.1, 0.2, False),  # +100% but the sphere grows 5.8 -> 7.3 mm only
        (0.0, sphere_ml(5.0), True),  # appeared from nothing to a 5 mm sphere
        (0.0, sphere_ml(4.0), False),
        (10.0, NAN, False),
    ],
)
def test_non_target_progression(nadir_ml, now_ml, expected):
    assert non_target_progression(volume_ml=now_ml, nadir_volume_ml=nadir_ml) is expected


def test_sphere_diameter():
    assert sphere_diameter_mm(sphere_ml(12.0)) == pytest.approx(12.0)


@pytest.mark.parametrize(
    ("n_baseline", "present", "missing", "unequivocal", "expected"),
    [
        (0, 0, 0, False, None),
        (3, 0, 0, False, "CR"),
        (3, 1, 0, False, "non-CR/non-PD"),
        (3, 1, 1, False, "NE"),
        (3, 1, 1, True, "PD"),
        (3, 0, 0, True, "PD"),
    ],
)
def test_non_target_response(n_baseline, present, missing, unequivocal, expected):
    assert (
        non_target_response(
            n_baseline=n_baseline,
            n_present=present,
            n_not_evaluated=missing,
            unequivocal_progression=unequivocal,
        )
        == expected
    )


# --------------------------------------------------------------------------- 4.4.1 Tables 1 and 2
@pytest.mark.parametrize(
    ("target", "non_target", "new", "expected"),
    [
        # Table 1
        ("CR", "CR", False, "CR"),
        ("CR", None, False, "CR"),  # no non-target disease
        ("CR", "non-CR/non-PD", False, "PR"),
        ("CR", "NE", False, "PR"),
        ("PR", "non-CR/non-PD", False, "PR"),
        ("PR", "NE", False, "PR"),
        ("SD", "non-CR/non-PD", False, "SD"),
        ("SD", "NE", False, "SD"),
        ("NE", "non-CR/non-PD", False, "NE"),
        ("PD", "CR", False, "PD"),
        ("CR", "PD", False, "PD"),
        ("PR", "non-CR/non-PD", True, "PD"),  # a new lesion with shrinking targets
        ("CR", "CR", True, "PD"),
        # Table 2: non-target disease only
        (None, "CR", False, "CR"),
        (None, "non-CR/non-PD", False, "non-CR/non-PD"),
        (None, "NE", False, "NE"),
        (None, "PD", False, "PD"),
        (None, "CR", True, "PD"),
        (None, None, False, "NE"),
    ],
)
def test_overall_response(target, non_target, new, expected):
    assert overall_response(target=target, non_target=non_target, new_lesions=new) == expected


# --------------------------------------------------------------------------- whole timelines
def test_timeline_new_lesion_with_shrinking_targets_is_pd():
    timeline = [
        study(0, lesion("a", "liver", 40), lesion("b", "lung", 20)),
        study(60, lesion("a", "liver", 20), lesion("b", "lung", 10), lesion("n", "liver", 6)),
    ]
    base, follow = recist_assess(timeline=timeline)
    assert base.is_baseline and base.category is None and base.sum_diameters_mm == 60.0
    assert base.target_uids == ("a", "b")
    assert follow.target_response == "PR" and follow.pct_change_baseline == pytest.approx(-50.0)
    assert follow.new_lesions and follow.new_lesions_first_seen == 1
    assert follow.category == "PD"


def test_timeline_growth_after_nadir_and_changes_from_nadir():
    timeline = [
        study(0, lesion("a", ld=30), lesion("b", ld=20)),  # 50
        study(60, lesion("a", ld=18), lesion("b", ld=12)),  # 30: -40% PR
        study(120, lesion("a", ld=21), lesion("b", ld=13)),  # 34: +13% SD-from-nadir, PR
        study(180, lesion("a", ld=23), lesion("b", ld=13)),  # 36: +20%, +6 mm: PD
    ]
    rows = recist_assess(timeline=timeline)
    assert [r.category for r in rows] == [None, "PR", "PR", "PD"]
    assert [r.nadir_sum_mm for r in rows] == [50.0, 50.0, 30.0, 30.0]
    assert rows[3].pct_change_nadir == pytest.approx(20.0)
    assert rows[3].pct_change_baseline == pytest.approx(-28.0)


def test_timeline_all_targets_gone():
    small = lesion("s", ld=6, volume=sphere_ml(6))  # non-measurable: a non-target
    timeline = [
        study(0, lesion("a", ld=30), small),
        study(60, lesion("a", ld=0, volume=0.0), small),
        study(120, lesion("a", ld=0, volume=0.0), lesion("s", ld=0, volume=0.0)),
    ]
    rows = recist_assess(timeline=timeline)
    assert rows[0].non_target_uids == ("s",)
    assert [r.target_response for r in rows[1:]] == ["CR", "CR"]
    assert [r.non_target_response for r in rows[1:]] == ["non-CR/non-PD", "CR"]
    assert [r.category for r in rows[1:]] == ["PR", "CR"]


def test_timeline_missing_target_is_ne_and_not_a_nadir():
    timeline = [
        study(0, lesion("a", ld=30), lesion("b", ld=20)),
        study(60, lesion("a", ld=10)),  # b not read: partial sum 10 is not a nadir
        study(120, lesion("a", ld=25), lesion("b", ld=19)),
    ]
    rows = recist_assess(timeline=timeline)
    assert rows[1].category == "NE" and math.isnan(rows[1].pct_change_baseline)
    assert rows[2].nadir_sum_mm == 50.0 and rows[2].category == "SD"


def test_timeline_reappearing_baseline_lesion_is_not_new():
    timeline = [
        study(0, lesion("a", ld=30), lesion("s", ld=6)),
        study(60, lesion("a", ld=30), lesion("s", ld=0, volume=0.0)),
        study(120, lesion("a", ld=30), lesion("s", ld=4)),
        study(180, lesion("a", ld=30), lesion("s", ld=6)),
    ]
    rows = recist_assess(timeline=timeline)
    assert not rows[2].new_lesions and not rows[3].new_lesions
    assert rows[2].category == "SD"
    # Back by 5 mm or more (sphere of the non-target volume) from a nadir of nothing: with
    # measurable disease that is for a radiologist to call (RECIST 1.1 section 4.3.4).
    assert rows[3].non_target_response == "non-CR/non-PD" and rows[3].category == "SD"
    assert rows[3].possible_non_target_progression and rows[3].attention
    assert any("possible non-target progression" in n for n in rows[3].notes)


def test_timeline_radiologist_targets_and_non_target_verdict_win():
    timeline = [
        study(0, lesion("a", ld=40, is_target=False), lesion("b", ld=15, is_target=True)),
        study(60, lesion("a", ld=40), lesion("b", ld=15), nt_pd=True),
    ]
    rows = recist_assess(timeline=timeline)
    assert rows[0].target_uids == ("b",) and rows[0].non_target_uids == ("a",)
    assert rows[1].target_response == "SD" and rows[1].non_target_response == "PD"
    assert rows[1].category == "PD"


def test_timeline_non_target_volume_growth_with_targets_is_possible_progression_only():
    timeline = [
        study(0, lesion("a", ld=30), lesion("s", ld=8, volume=2.0)),
        study(60, lesion("a", ld=30), lesion("s", ld=9, volume=1.5)),
        study(120, lesion("a", ld=30), lesion("s", ld=12, volume=2.7)),  # +80% of 1.5, +4.1 mm
        study(180, lesion("a", ld=30), lesion("s", ld=14, volume=4.0)),  # +167%, +5.5 mm
    ]
    rows = recist_assess(timeline=timeline)
    assert [r.non_target_response for r in rows[1:]] == ["non-CR/non-PD"] * 3
    assert [r.possible_non_target_progression for r in rows[1:]] == [False, False, True]
    assert rows[3].category == "SD"
    # The radiologist's verdict decides.
    timeline[3] = study(180, lesion("a", ld=30), lesion("s", ld=14, volume=4.0), nt_pd=True)
    assert recist_assess(timeline=timeline)[3].category == "PD"
    timeline[3] = study(180, lesion("a", ld=30), lesion("s", ld=14, volume=4.0), nt_pd=False)
    rows = recist_assess(timeline=timeline)
    assert rows[3].category == "SD" and not rows[3].possible_non_target_progression


def test_timeline_non_target_volume_growth_without_targets_is_progression():
    timeline = [
        study(0, lesion("s", ld=8, volume=2.0)),
        study(60, lesion("s", ld=9, volume=1.5)),
        study(120, lesion("s", ld=12, volume=2.7)),  # +80% of 1.5, but only +4.1 mm
        study(180, lesion("s", ld=14, volume=4.0)),  # +167%, +5.5 mm
    ]
    rows = recist_assess(timeline=timeline)
    assert [r.category for r in rows[1:]] == ["non-CR/non-PD", "non-CR/non-PD", "PD"]
    assert not any(r.possible_non_target_progression for r in rows)


def test_timeline_without_measurable_disease_uses_table_2():
    timeline = [
        study(0, lesion("s", ld=7, volume=0.2)),
        study(60, lesion("s", ld=6, volume=0.15)),
        study(120, lesion("s", ld=0, volume=0.0)),
    ]
    rows = recist_assess(timeline=timeline)
    assert rows[0].target_uids == ()
    assert [r.category for r in rows[1:]] == ["non-CR/non-PD", "CR"]
    assert math.isnan(rows[1].pct_change_baseline)


def test_timeline_from_measurements_reads_the_export_layout():
    frame = pd.DataFrame(
        [
            ("P1", "1.2.1", "2024-01-01", "L1", "Liver 1", "liver", "new", 10.0, 27.0, 20.0, True, "accepted"),
            ("P1", "1.2.1", "2024-01-01", "L2", "Right lung 1", "lung", "new", 0.5, 9.0, 8.0, False, ""),
            ("P1", "1.2.1", "2024-01-01", "FP", "Liver 2", "liver", "new", 1.0, 12.0, 10.0, False, "rejected"),
            ("P1", "1.2.2", "2024-03-01", "L1", "Liver 1", "liver", "tracked", 4.0, 18.0, 15.0, True, ""),
            ("P1", "1.2.2", "2024-03-01", "L2", "Right lung 1", "lung", "resolved", 0.0, 9.0, 0.0, False, ""),
        ],
        columns=[
            "patient_id", "study_instance_uid", "study_date", "lesion_uid", "lesion_label",
            "organ", "status", "volume_ml", "longest_diameter_mm", "short_axis_mm",
            "is_target", "review_state",
        ],
    )  # fmt: skip
    ((patient, timeline),) = timeline_from_measurements(frame).items()
    assert patient == "P1" and [s.study_uid for s in timeline] == ["1.2.1", "1.2.2"]
    assert [r.lesion_uid for r in timeline[0].lesions] == ["L1", "L2"]  # rejected dropped
    l2 = timeline[1].reading("L2")
    assert l2.longest_diameter_mm == 0.0 and not l2.present  # resolved reads as gone
    rows = recist_assess(timeline=timeline)
    assert rows[0].target_uids == ("L1",) and rows[1].category == "PR"


def test_timeline_from_measurements_keeps_dates_beyond_pandas_timestamps():
    """Study dates are calendar dates: one after 2262 (pandas' nanosecond limit), as a
    date object or as text, is read, not refused."""
    columns = ["patient_id", "study_instance_uid", "study_date", "lesion_uid", "lesion_label",
               "organ", "status", "volume_ml", "longest_diameter_mm", "short_axis_mm"]  # fmt: skip
    frame = pd.DataFrame(
        [
            ("P1", "1.2.1", dt.date(2274, 2, 9), "L1", "Liver 1", "liver", "new", 10.0, 27.0, 20.0),
            ("P1", "1.2.2", "2274-05-10", "L1", "Liver 1", "liver", "tracked", 4.0, 18.0, 15.0),
        ],
        columns=columns,
    )
    ((_, timeline),) = timeline_from_measurements(frame).items()
    assert [s.study_date for s in timeline] == [dt.date(2274, 2, 9), dt.date(2274, 5, 10)]


# --------------------------------------------------------------------------- nodes, lines
@pytest.mark.parametrize(
    ("short_axis", "expected"),
    [(15.0, True), (14.9, False), (NAN, False)],
)
def test_a_lymph_node_is_measurable_by_its_short_axis(short_axis, expected):
    # RECIST 1.1 section 3.1.1: 15 mm in short axis, whatever the longest diameter.
    assert (
        is_measurable(longest_diameter_mm=40.0, short_axis_mm=short_axis, is_node=True) is expected
    )


@pytest.mark.parametrize(
    ("nadir_ml", "now_ml", "expected"),
    [
        pytest.param(10.0, 17.28, True, id="exactly +72.8%"),
        pytest.param(10.0, 17.27, False, id="+72.7%: the line is not rounded to 73%"),
    ],
)
def test_non_target_yardstick_is_72_8_percent_exactly(nadir_ml, now_ml, expected):
    assert non_target_progression(volume_ml=now_ml, nadir_volume_ml=nadir_ml) is expected


def test_targets_select_counts_all_lymph_nodes_as_one_organ():
    nodes = [LesionReading(f"n{i}", "lymph_node", 30.0, short_axis_mm=20.0 - i) for i in range(3)]
    assert targets_select(lesions=nodes) == ("n0", "n1")  # two per organ, by short axis
