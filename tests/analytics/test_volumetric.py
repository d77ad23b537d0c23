"""Volumetric response, burden, growth rate and doubling time (no database)."""

import dataclasses
import datetime as dt
import math

import pandas as pd
import pytest

from analytics.layouts import EXPORT_RESPONSE_COLUMNS
from analytics.lesions.core.readings import LesionReading, StudyReading
from analytics.lesions.core.volumetric import (
    REPEATABILITY_PCT,
    VOLUME_PD_PCT,
    VOLUME_PR_PCT,
    growth_rate_per_day,
    responses_table_build,
    total_tumour_burden_ml,
    volume_doubling_time,
    volume_partial_response,
    volume_progression,
    volume_response,
    volumetric_assess,
    within_measurement_noise,
)
from analytics.risk.core.features import ImagingFeatures

NAN = math.nan


def test_thresholds_are_the_sphere_equivalents_of_recist_exactly():
    # Not rounded either way: 1.2^3 - 1 and 0.7^3 - 1 as they are.
    assert math.isclose(VOLUME_PD_PCT, 72.8, abs_tol=1e-9)
    assert math.isclose(VOLUME_PR_PCT, -65.7, abs_tol=1e-9)
    assert REPEATABILITY_PCT == 25.0


@pytest.mark.parametrize(
    ("nadir_ml", "now_ml", "expected"),
    [
        pytest.param(10.0, 17.28, True, id="exactly +72.8%"),
        pytest.param(10.0, 17.27, False, id="+72.7%"),
        pytest.param(10.0, 17.3, True, id="+73%"),
        pytest.param(0.05, 0.09, False, id="+80% but a 4.6 -> 5.6 mm sphere: the floor"),
        pytest.param(0.0, 0.1, True, id="from nothing to a 5.8 mm sphere"),
        pytest.param(0.0, 0.06, False, id="from nothing to a 4.9 mm sphere"),
        pytest.param(0.0, 0.0, False, id="nothing either time"),
        pytest.param(5.0, 2.0, False, id="shrinking"),
        pytest.param(5.0, NAN, False, id="not measured"),
    ],
)
def test_volume_progression_at_72_8_percent_and_5_mm_over_nadir(nadir_ml, now_ml, expected):
    assert volume_progression(volume_ml=now_ml, nadir_ml=nadir_ml) is expected


@pytest.mark.parametrize(
    ("baseline_ml", "now_ml", "expected"),
    [
        pytest.param(10.0, 3.43, True, id="exactly -65.7%"),
        pytest.param(10.0, 3.44, False, id="-65.6%"),
        pytest.param(10.0, 3.5, False, id="-65% is not enough"),
        pytest.param(10.0, 0.0, True, id="all gone"),
        pytest.param(10.0, 12.0, False, id="growing"),
    ],
)
def test_volume_partial_response_at_65_7_percent_below_baseline(baseline_ml, now_ml, expected):
    assert volume_partial_response(volume_ml=now_ml, baseline_ml=baseline_ml) is expected


@pytest.mark.parametrize(
    ("baseline_ml", "nadir_ml", "now_ml", "expected"),
    [
        pytest.param(10.0, 10.0, 0.0, "CR", id="nothing left"),
        pytest.param(10.0, 10.0, 3.43, "PR", id="exactly -65.7%"),
        pytest.param(10.0, 10.0, 3.5, "SD", id="-65%: not PR"),
        pytest.param(10.0, 10.0, 8.0, "SD", id="-20%"),
        pytest.param(10.0, 10.0, 17.28, "PD", id="exactly +72.8%"),
        pytest.param(100.0, 20.0, 34.6, "PD", id="PD after a nadir wins over -65.4% from baseline"),
        pytest.param(
            10.0, 2.0, 3.46, "SD", id="+73% from a small nadir but the sphere grows 3.2 mm"
        ),
        pytest.param(10.0, 2.0, 3.4, "PR", id="+70% from nadir: continued PR"),
        pytest.param(10.0, 10.0, NAN, "NE", id="not measured"),
        pytest.param(0.0, 0.0, 0.0, "NE", id="nothing at baseline, nothing now: not a CR"),
        pytest.param(0.0, 0.0, 0.05, "NE", id="nothing at baseline, a 4.6 mm sphere now"),
        pytest.param(0.0, 0.0, 2.0, "PD", id="nothing at baseline, 2 ml now"),
        pytest.param(0.05, 0.05, 0.09, "SD", id="0.05 -> 0.09 ml is not PD"),
    ],
)
def test_volume_response(baseline_ml, nadir_ml, now_ml, expected):
    assert volume_response(volume_ml=now_ml, baseline_ml=baseline_ml, nadir_ml=nadir_ml) == expected


def test_total_tumour_burden_skips_unmeasured():
    assert total_tumour_burden_ml([1.5, 0.0, NAN, 2.5]) == 4.0
    assert total_tumour_burden_ml([]) == 0.0


@pytest.mark.parametrize(
    ("v1", "v2", "expected"),
    [
        (1.0, 1.24, True),
        (1.0, 1.25, False),  # exactly +25% is a real change
        (1.0, 0.8, True),
        (1.0, 0.75, False),
        (0.0, 1.0, False),
    ],
)
def test_within_measurement_noise(v1, v2, expected):
    assert within_measurement_noise(volume1_ml=v1, volume2_ml=v2) is expected


@pytest.mark.parametrize(
    ("v1", "v2", "days", "vdt", "rate", "noise", "note"),
    [
        pytest.param(1.0, 2.0, 100, 100.0, math.log(2) / 100, False, "growing", id="doubles"),
        pytest.param(1.0, 8.0, 90, 30.0, math.log(8) / 90, False, "growing", id="three doublings"),
        pytest.param(2.0, 1.0, 100, -100.0, -math.log(2) / 100, False, "halving", id="halves"),
        pytest.param(1.0, 1.0, 60, math.inf, 0.0, True, "no change", id="identical"),
        pytest.param(
            1.0,
            1.1,
            60,
            60 * math.log(2) / math.log(1.1),
            math.log(1.1) / 60,
            True,
            "variability",
            id="inside the noise",
        ),  # fmt: skip
        pytest.param(0.0, 1.0, 60, NAN, NAN, False, "appeared", id="V1 = 0"),
        pytest.param(1.0, 0.0, 60, NAN, NAN, False, "disappeared", id="V2 = 0"),
        pytest.param(1.0, 2.0, 0, NAN, NAN, False, "no time", id="same day"),
        pytest.param(NAN, 2.0, 30, NAN, NAN, False, "not measured", id="unknown"),
    ],
)
def test_volume_doubling_time(v1, v2, days, vdt, rate, noise, note):
    result = volume_doubling_time(volume1_ml=v1, volume2_ml=v2, interval_days=days)
    if math.isnan(vdt):
        assert math.isnan(result.days) and math.isnan(result.growth_rate_per_day)
    else:
        assert result.days == pytest.approx(vdt)
        assert result.growth_rate_per_day == pytest.approx(rate)
    assert result.within_noise is noise
    assert note in result.note


def test_growth_rate_rejects_a_negative_interval():
    with pytest.raises(ValueError):
        growth_rate_per_day(volume1_ml=1.0, volume2_ml=2.0, interval_days=-1)


def reading(uid, volume, ld=NAN):
    return LesionReading(lesion_uid=uid, organ="liver", longest_diameter_mm=ld, volume_ml=volume)


def study(day, *lesions):
    return StudyReading(f"S{day}", dt.date(2024, 1, 1) + dt.timedelta(days=day), tuple(lesions))


def test_volumetric_timeline_response_nadir_new_lesion_and_doubling_time():
    timeline = [
        study(0, reading("a", 8.0), reading("b", 2.0)),  # 10
        study(60, reading("a", 2.5), reading("b", 0.5)),  # 3: -70% PR
        study(120, reading("a", 2.8), reading("b", 0.6)),  # 3.4: -66%, +13% from nadir: PR
        study(180, reading("a", 7.0), reading("b", 0.6)),  # 7.6: +153%, 17.9 -> 24.4 mm: PD
        study(240, reading("a", 1.0), reading("b", 0.0), reading("n", 0.05)),  # new: PD
    ]
    rows = volumetric_assess(timeline=timeline)
    assert [r.burden_response for r in rows] == [None, "PR", "PR", "PD", "PR"]
    assert [r.category for r in rows] == [None, "PR", "PR", "PD", "PD"]
    assert [r.total_volume_ml for r in rows] == pytest.approx([10.0, 3.0, 3.4, 7.6, 1.05])
    assert rows[3].nadir_volume_ml == 3.0 and rows[3].pct_change_nadir == pytest.approx(
        100 * 4.6 / 3
    )
    assert rows[4].new_lesions and not rows[3].new_lesions
    assert rows[2].doubling_time.days == pytest.approx(60 * math.log(2) / math.log(3.4 / 3))
    assert rows[1].doubling_time.days < 0  # shrinking: halving time

    lesion_b = {c.lesion_uid: c for c in rows[4].lesions}["b"]
    assert lesion_b.category == "CR" and lesion_b.doubling_time.note == "disappeared"
    lesion_n = {c.lesion_uid: c for c in rows[4].lesions}["n"]
    assert lesion_n.category is None and lesion_n.reference_ml == 0.05
    lesion_a = {c.lesion_uid: c for c in rows[3].lesions}["a"]
    assert lesion_a.nadir_ml == 2.5 and lesion_a.category == "PD"  # +180%, 16.8 -> 23.7 mm


def test_volumetric_unread_lesion_makes_the_total_unknown():
    timeline = [study(0, reading("a", 8.0), reading("b", 2.0)), study(60, reading("a", 2.0))]
    rows = volumetric_assess(timeline=timeline)
    assert math.isnan(rows[1].total_volume_ml) and rows[1].category == "NE"


def measurement_rows():
    columns = [
        "patient_id", "study_instance_uid", "study_date", "lesion_uid", "lesion_label", "organ",
        "status", "volume_ml", "longest_diameter_mm", "short_axis_mm", "centroid_x_mm",
        "centroid_y_mm", "centroid_z_mm", "is_target", "review_state",
    ]  # fmt: skip
    rows = [
        ("P1", "1.1", "2024-01-01", "A", "Liver 1", "liver", "new", 14.1, 30.0, 25.0, -60, 0, -100, True, ""),
        ("P1", "1.1", "2024-01-01", "B", "Right lung 1", "lung", "new", 0.27, 8.0, 7.0, -80, 0, -50, False, ""),
        ("P1", "1.2", "2024-03-01", "A", "Liver 1", "liver", "tracked", 4.2, 20.0, 17.0, -61, 1, -100, True, ""),
        ("P1", "1.2", "2024-03-01", "B", "Right lung 1", "lung", "resolved", 0.0, 0.0, 0.0, -80, 0, -50, False, ""),
        ("P1", "1.3", "2024-05-01", "A", "Liver 1", "liver", "tracked", 4.5, 20.5, 17.0, -61, 1, -100, True, ""),
        ("P1", "1.3", "2024-05-01", "B", "Right lung 1", "lung", "resolved", 0.0, 0.0, 0.0, -80, 0, -50, False, ""),
        ("P1", "1.3", "2024-05-01", "C", "Liver 2", "liver", "new", 0.1, 6.0, 5.0, -30, 20, -120, False, ""),
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def test_responses_table_has_the_export_layout_and_feeds_imaging_features():
    table = responses_table_build(measurements=measurement_rows())
    assert tuple(table.columns) == (*EXPORT_RESPONSE_COLUMNS, "response_note")
    assert table["study_instance_uid"].tolist() == ["1.1", "1.2", "1.3"]
    assert table["sum_diameters_mm"].tolist() == [30.0, 20.0, 20.5]
    assert table["recist_response"].tolist() == [None, "PR", "PD"]
    assert table["volumetric_response"].tolist() == [None, "PR", "PD"]
    assert table["new_lesions"].tolist() == [False, False, True]
    assert table["total_volume_ml"].tolist() == pytest.approx([14.37, 4.2, 4.6])

    measurements = measurement_rows()
    measurements["study_date"] = pd.to_datetime(measurements["study_date"]).dt.date
    features = ImagingFeatures(measurements=measurements, responses=table).compute(
        "P1", dt.date(2024, 3, 15)
    )
    assert features["last_recist_ordinal"] == 1.0  # PR


def test_a_lesion_measured_with_its_layer_at_some_studies_only_is_compared_without_it():
    def layered(uid, volume, core):
        return dataclasses.replace(reading(uid, volume), volume_core_ml=core)

    mixed = [study(0, layered("a", 9.0, 3.0)), study(60, reading("a", 3.1))]
    everywhere = [study(0, layered("a", 9.0, 3.0)), study(60, layered("a", 9.3, 3.1))]

    # Read as measured, 9.0 -> 3.1 ml would be a partial response; the layer was not seen.
    assert [r.total_volume_ml for r in volumetric_assess(timeline=mixed)] == [3.0, 3.1]
    assert volumetric_assess(timeline=mixed)[1].category == "SD"
    assert [r.total_volume_ml for r in volumetric_assess(timeline=everywhere)] == [9.0, 9.3]
