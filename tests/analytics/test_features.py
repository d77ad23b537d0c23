"""Landmark features: values, no look-ahead, outcomes and the missing-value policy (no database)."""

import datetime as dt
import math

import numpy as np
import pandas as pd
import pytest

from analytics.risk.core.features import (
    DEMOGRAPHIC_COLUMNS,
    DOUBLING_TIME_CAP_DAYS,
    IMAGING_COLUMNS,
    LAB_COLUMNS,
    DemographicFeatures,
    ImagingFeatures,
    LabFeatures,
    feature_table_build,
    volume_doubling_time_days,
)
from analytics.risk.core.imputation import MissingValueImputer
from analytics.risk.core.outcomes import landmark_outcomes, landmarks_from_baseline
from imaging.core.synthetic.cohort import cohort_simulate

LANDMARK = dt.date(2024, 6, 30)


def at(day: str, hour: int = 9) -> pd.Timestamp:
    return pd.Timestamp(f"{day} {hour:02d}:00", tz="UTC")


def labs_frame(rows):
    return pd.DataFrame(rows, columns=["patient_id", "loinc_code", "value", "observed_at"])


def measurements_frame(rows):
    return pd.DataFrame(
        rows, columns=["patient_id", "study_date", "lesion_uid", "organ", "volume_ml"]
    )


LABS = labs_frame(
    [
        ("A", "2039-6", 2.0, at("2024-05-01")),
        ("A", "2039-6", 3.0, at("2024-05-31")),
        ("A", "2039-6", 5.0, at("2024-06-30", 23)),  # on the landmark day: counts
        ("A", "1751-7", 4.0, at("2024-06-01")),
        ("A", "2532-0", 900.0, at("2023-01-01")),  # beyond the 365-day look-back
        ("B", "718-7", 12.0, at("2024-06-10")),
    ]
)
MEASUREMENTS = measurements_frame(
    [
        ("A", "2024-01-10", "L1", "lung", 10.0),
        ("A", "2024-01-10", "L2", "liver", 4.0),
        ("A", "2024-03-10", "L1", "lung", 5.0),
        ("A", "2024-03-10", "L2", "liver", 0.0),
        ("A", "2024-05-09", "L1", "lung", 10.0),
        ("A", "2024-05-09", "L2", "liver", 0.0),
        ("A", "2024-05-09", "L3", "liver", 2.0),
    ]
)
RESPONSES = pd.DataFrame(
    [("A", "2024-03-10", "PR"), ("A", "2024-05-09", "PD")],
    columns=["patient_id", "study_date", "recist_response"],
)
PATIENTS = pd.DataFrame(
    [("A", dt.date(1960, 6, 30), "F"), ("B", None, "O")],
    columns=["patient_id", "birth_date", "sex"],
)


def build(labs=LABS, measurements=MEASUREMENTS, responses=RESPONSES, landmark=LANDMARK):
    landmarks = pd.DataFrame({"patient_id": ["A", "B"], "landmark_date": [landmark, landmark]})
    blocks = [
        LabFeatures(labs),
        DemographicFeatures(PATIENTS),
        ImagingFeatures(measurements, responses),
    ]
    return feature_table_build(landmarks=landmarks, blocks=blocks).set_index("patient_id")


def test_lab_features():
    row = build().loc["A"]
    assert row["cea_latest"] == 5.0
    # Least squares through (0, 2), (30, 3), (60.58, 5): about 1.47 per 30 days.
    days = np.array([0, 30, (at("2024-06-30", 23) - at("2024-05-01")).total_seconds() / 86400])
    expected = np.polyfit(days, [2, 3, 5], 1)[0] * 30
    assert row["cea_slope_per_30d"] == pytest.approx(expected)
    assert row["albumin_latest"] == 4.0
    assert math.isnan(row["albumin_slope_per_30d"])  # one value: no slope
    assert math.isnan(row["ldh_latest"])  # only a lab older than the look-back window
    assert build().loc["B", "hemoglobin_latest"] == 12.0


def test_demographics():
    table = build()
    assert table.loc["A", "age_years"] == pytest.approx(64.0, abs=0.01)
    assert table.loc["A", "sex_male"] == 0.0
    assert math.isnan(table.loc["B", "age_years"]) and math.isnan(table.loc["B", "sex_male"])


def test_imaging_features():
    row = build().loc["A"]
    assert row["total_burden_ml"] == 12.0
    assert row["burden_ratio_to_nadir"] == pytest.approx(12.1 / 5.1)
    assert row["new_lesions"] == 1.0  # L3
    assert row["organs_involved"] == 2.0
    # L1 doubled (5 -> 10 ml) in 60 days; L3 was not there before.
    assert row["fastest_doubling_time_days"] == pytest.approx(60.0)
    assert row["last_recist_ordinal"] == 3.0
    logs = np.log(np.array([14.0, 5.0, 12.0]) + 0.1)
    assert row["burden_log_slope_per_30d"] == pytest.approx(
        np.polyfit([0, 60, 120], logs, 1)[0] * 30
    )
    assert all(math.isnan(build().loc["B", c]) for c in IMAGING_COLUMNS)  # no CT study


def test_volume_doubling_time():
    assert volume_doubling_time_days(volume1_ml=1, volume2_ml=2, interval_days=90) == pytest.approx(
        90
    )
    assert volume_doubling_time_days(volume1_ml=1, volume2_ml=8, interval_days=90) == pytest.approx(
        30
    )
    assert (
        volume_doubling_time_days(volume1_ml=2, volume2_ml=1, interval_days=90)
        == DOUBLING_TIME_CAP_DAYS
    )
    assert math.isnan(volume_doubling_time_days(volume1_ml=0, volume2_ml=1, interval_days=90))


def test_columns_are_the_documented_ones():
    table = build()
    assert list(table.columns) == [
        "landmark_date",
        *LAB_COLUMNS,
        *DEMOGRAPHIC_COLUMNS,
        *IMAGING_COLUMNS,
    ]
    assert {"cea_latest", "ldh_slope_per_30d", "hemoglobin_latest", "crp_latest"} <= set(
        LAB_COLUMNS
    )


def test_nothing_after_the_landmark_changes_the_features():
    before = build()
    later_labs = pd.concat(
        [
            LABS,
            labs_frame(
                [
                    (
                        "A",
                        "2039-6",
                        99.0,
                        at("2024-07-01", 0),
                    ),  # first instant after the landmark day
                    ("A", "1751-7", 1.0, at("2024-08-01")),
                    ("B", "2532-0", 5000.0, at("2024-07-15")),
                ]
            ),
        ]
    )
    later_measurements = pd.concat(
        [
            MEASUREMENTS,
            measurements_frame(
                [
                    ("A", "2024-07-01", "L1", "lung", 100.0),
                    ("A", "2024-07-01", "L4", "bone", 9.0),
                    ("B", "2024-08-01", "L1", "lung", 3.0),
                ]
            ),
        ]
    )
    later_responses = pd.concat(
        [RESPONSES, pd.DataFrame([("A", "2024-07-01", "CR")], columns=RESPONSES.columns)]
    )
    after = build(later_labs, later_measurements, later_responses)
    pd.testing.assert_frame_equal(before, after)
    # ... and moving the landmark forward does see them.
    moved = build(later_labs, later_measurements, later_responses, landmark=dt.date(2024, 7, 1))
    assert moved.loc["A", "cea_latest"] == 99.0
    assert moved.loc["A", "last_recist_ordinal"] == 0.0


def test_no_look_ahead_on_a_simulated_cohort():

    cohort = cohort_simulate(n_patients=6, n_timepoints=4, seed=3)
    labs = labs_frame(
        [(lab.patient_id, lab.test.loinc_code, lab.value, lab.observed_at) for p in cohort.patients for lab in p.labs]
    )  # fmt: skip
    landmarks = landmarks_from_baseline(
        {p.patient_id: p.baseline_date for p in cohort.patients}, offset_days=120
    )
    cutoffs = dict(zip(landmarks["patient_id"], landmarks["landmark_date"], strict=True))
    known = labs[
        [
            ts < pd.Timestamp(cutoffs[pid] + dt.timedelta(days=1), tz="UTC")
            for pid, ts in zip(labs["patient_id"], labs["observed_at"], strict=True)
        ]
    ]
    assert 0 < len(known) < len(labs)
    full = feature_table_build(landmarks=landmarks, blocks=[LabFeatures(labs)])
    truncated = feature_table_build(landmarks=landmarks, blocks=[LabFeatures(known)])
    pd.testing.assert_frame_equal(full, truncated)
    assert full["cea_latest"].notna().all()


def test_landmark_outcomes():
    events = pd.DataFrame(
        [
            ("A", "progression", "2024-09-29"),
            ("A", "death", "2025-01-01"),
            ("B", "censor", "2024-12-31"),
            ("B", "censor", "2024-08-01"),
            ("C", "progression", "2024-06-30"),
            ("C", "death", "2024-10-01"),
            ("D", "death", "2024-06-01"),
            ("E", "progression", "2024-08-01"),
        ],
        columns=["patient_id", "kind", "date"],
    )
    landmarks = pd.DataFrame({"patient_id": list("ABCDE"), "landmark_date": [LANDMARK] * 5})
    pfs = landmark_outcomes(events=events, landmarks=landmarks, endpoint="pfs")
    table = pfs.table.set_index("patient_id")
    assert table.loc["A", ["duration_days", "event"]].tolist() == [91.0, True]
    assert table.loc["B", ["duration_days", "event"]].tolist() == [184.0, False]  # latest censor
    assert set(pfs.excluded.values()) == {
        "progressed on or before the landmark",
        "follow-up ended on or before the landmark",
        "no death or censor (last follow-up) date",
    }
    os_table = landmark_outcomes(events=events, landmarks=landmarks, endpoint="os").table.set_index(
        "patient_id"
    )
    assert os_table.loc["A", ["duration_days", "event"]].tolist() == [185.0, True]
    assert os_table.loc["C", ["duration_days", "event"]].tolist() == [93.0, True]


def test_imputer_uses_training_rows_only_and_adds_indicators():
    train = pd.DataFrame(
        {
            "x": [1.0, 2.0, np.nan, 10.0],
            "complete": [1.0, 2.0, 3.0, 4.0],
            "empty": [np.nan] * 4,
            "constant": [5.0] * 4,
            "flag": [1.0, np.nan, 1.0, np.nan],
        }
    )
    test = pd.DataFrame(
        {"x": [np.nan, 1000.0], "complete": [np.nan, 1.0], "empty": [1.0, 2.0], "constant": [7.0, 7.0], "flag": [1.0, np.nan]}
    )  # fmt: skip
    imputer = MissingValueImputer().fit(train)
    assert imputer.feature_names_out == ["x", "complete", "x_missing", "flag_missing"]
    assert set(imputer.dropped) == {"empty", "constant", "flag"}
    out = imputer.transform(test)
    assert out["x"].tolist() == [2.0, 1000.0]  # training median, not the test rows'
    assert out["x_missing"].tolist() == [1.0, 0.0]
    assert out["complete"].tolist() == [2.5, 1.0]  # missing only in test: median, no indicator
    assert out["flag_missing"].tolist() == [0.0, 1.0]
    assert imputer.source_of("x_missing") == "x" and imputer.source_of("x") == "x"


# -- what is not known is missing, never 0 ----------------------------------------------
def test_a_censored_lab_is_never_read_as_exact():
    cea = "2039-6"
    labs = pd.DataFrame(
        [("A", cea, 0.5, at("2024-04-01"), "<"), ("A", cea, 0.6, at("2024-05-01"), ""),
         ("B", cea, 4.0, at("2024-04-01"), ""), ("B", cea, 1000.0, at("2024-05-01"), ">")],
        columns=["patient_id", "loinc_code", "value", "observed_at", "comparator"],
    )  # fmt: skip
    block = LabFeatures(labs)
    a, b = block.compute("A", LANDMARK), block.compute("B", LANDMARK)
    # "< 0.5" then 0.6: the latest is exact; no trend through a bound.
    assert a["cea_latest"] == 0.6 and math.isnan(a["cea_slope_per_30d"])
    # 4 then "> 1000": the latest is not known (not the earlier 4), nor the trend.
    assert math.isnan(b["cea_latest"]) and math.isnan(b["cea_slope_per_30d"])
    exact = LabFeatures(labs.drop(columns=["comparator"])).compute("B", LANDMARK)
    assert exact["cea_latest"] == 1000.0 and exact["cea_slope_per_30d"] > 0


def test_a_volume_not_known_makes_the_burden_not_known_never_smaller():
    rows = pd.DataFrame(
        [("A", "2024-01-01", "L1", "liver", 4.0, 20.0), ("A", "2024-01-01", "L2", "lung", 2.0, 15.0),
         # L2 not found at the follow-up: neither present nor gone
         ("A", "2024-03-01", "L1", "liver", 3.0, 18.0), ("A", "2024-03-01", "L2", "lung", np.nan, np.nan),
         ("A", "2024-05-01", "L1", "liver", 2.0, 16.0), ("A", "2024-05-01", "L2", "lung", 1.0, 12.0),
         # a node measured by hand (a diameter, no volume): present, volume not known
         ("A", "2024-05-01", "N1", "lymph_node", np.nan, 18.0)],
        columns=["patient_id", "study_date", "lesion_uid", "organ", "volume_ml",
                 "longest_diameter_mm"],
    )  # fmt: skip
    block = ImagingFeatures(rows)
    march = block.compute("A", dt.date(2024, 3, 1))
    for name in ("total_burden_ml", "burden_log_slope_per_30d", "burden_ratio_to_nadir"):
        assert math.isnan(march[name]), name  # not 3.0, as if L2 had gone
    assert math.isnan(march["organs_involved"])  # the lung: not known
    may = block.compute("A", dt.date(2024, 5, 1))
    assert math.isnan(may["total_burden_ml"])  # the node's volume is not known
    assert may["organs_involved"] == 3.0 and may["new_lesions"] == 1.0  # the node is there
    known = block.compute("A", dt.date(2024, 1, 1))
    assert known["total_burden_ml"] == 6.0 and known["organs_involved"] == 2.0
    # Without the node, May's burden is known and its nadir is January's known burden.
    may_without = ImagingFeatures(rows[rows["lesion_uid"] != "N1"]).compute(
        "A", dt.date(2024, 5, 1)
    )
    assert may_without["total_burden_ml"] == 3.0
    assert may_without["burden_ratio_to_nadir"] == pytest.approx((3.0 + 0.1) / (3.0 + 0.1))
    assert may_without["burden_log_slope_per_30d"] < 0  # over January and May only


def test_a_lesion_cut_by_the_scans_edge_is_there_its_size_not_known():
    rows = pd.DataFrame(
        [("A", "2024-01-01", "L1", "liver", 4.0, 20.0, "confirmed"),
         ("A", "2024-01-01", "L2", "lung", 2.0, 15.0, "confirmed"),
         # at the follow-up L2 is seen, cut by the last slice: no sizes
         ("A", "2024-03-01", "L1", "liver", 3.0, 18.0, "confirmed"),
         ("A", "2024-03-01", "L2", "lung", np.nan, np.nan, "not_assessable"),
         # and a new lesion first seen cut by the field of view
         ("A", "2024-03-01", "N1", "lymph_node", np.nan, np.nan, "not_assessable")],
        columns=["patient_id", "study_date", "lesion_uid", "organ", "volume_ml",
                 "longest_diameter_mm", "finding_state"],
    )  # fmt: skip
    march = ImagingFeatures(rows).compute("A", dt.date(2024, 3, 1))
    assert math.isnan(march["total_burden_ml"])  # not 3.0: L2's volume is not known
    assert march["organs_involved"] == 3.0  # the lung and the node are there
    assert march["new_lesions"] == 1.0
    # Without the state the same rows read as not found: the lung's involvement unknown.
    unknown = ImagingFeatures(rows.drop(columns=["finding_state"])).compute(
        "A", dt.date(2024, 3, 1)
    )
    assert math.isnan(unknown["organs_involved"]) and unknown["new_lesions"] == 0.0
