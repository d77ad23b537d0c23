"""The whole-table feature blocks give the values the row-by-row ones gave (no database).

`tests/analytics/features_rowwise.py` keeps the row-by-row implementation the blocks
replaced; on a generated cohort, roughened with the cases real data has (same-day
studies, resolved lesions, lesions not found at a study or measured by hand without a
volume, tied and lone labs, censored labs, unknown sex, landmarks before any data or for
patients with none), every feature must come out the same: NaN where it was NaN,
bit for bit for every value that is not a least-squares slope, and slopes to 1e-9
(``np.polyfit`` solved them by SVD; the blocks use the centred normal equation, which
differs only in the last bits of rounding).
"""

import datetime as dt
import math

import numpy as np
import pandas as pd
import pytest

from analytics.lesions.core.volumetric import responses_table_build
from analytics.risk.core import features
from analytics.risk.core.features import DEMOGRAPHIC_COLUMNS, IMAGING_COLUMNS, LAB_COLUMNS
from analytics.risk.core.outcomes import landmark_outcomes
from imaging.core.synthetic.cohort import cohort_simulate
from imaging.core.synthetic.lesion_shape import equivalent_diameter_mm
from tests.analytics import features_rowwise as rowwise

FEATURES = [*LAB_COLUMNS, *DEMOGRAPHIC_COLUMNS, *IMAGING_COLUMNS]
SLOPES = [c for c in FEATURES if "slope" in c]


def assert_same_features(before: pd.DataFrame, after: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(
        before.drop(columns=SLOPES), after.drop(columns=SLOPES), check_exact=True
    )
    for column in SLOPES:
        old, new = before[column].to_numpy(float), after[column].to_numpy(float)
        assert np.array_equal(np.isnan(old), np.isnan(new)), column
        np.testing.assert_allclose(new, old, rtol=1e-9, atol=1e-9, err_msg=column)


def _measurements(cohort, rng: np.random.Generator) -> pd.DataFrame:
    """Every lesion at every study it is present or resolved at, with repeat-scan noise;
    now and then a lesion not found (no volume, no diameter), measured by hand (a
    diameter, no volume) or cut by the scan's edge (no sizes, ``not_assessable``), as the
    risk selector gives them."""
    rows = []
    for p in cohort.patients:
        for k, study in enumerate(p.studies):
            for lesion in p.lesions:
                state = lesion.status(study.day)
                if state == "not_yet_present":
                    continue
                volume = lesion.volume_ml(study.day) * float(np.exp(rng.normal(0.0, 0.1)))
                volume = 0.0 if state == "resolved" else volume
                diameter = equivalent_diameter_mm(volume)
                chance, state = rng.random(), "confirmed"
                if k > 0 and chance < 0.05:  # not found: neither present nor gone
                    volume = diameter = math.nan
                elif chance > 0.97:  # measured by hand: a diameter, no volume
                    volume, diameter = math.nan, max(diameter, 6.0)
                elif chance > 0.95 and volume > 0:  # cut by the scan's edge: there, no size
                    volume, diameter, state = math.nan, math.nan, "not_assessable"
                uid = study.study_instance_uid
                # Some patients' last study is split in two studies of the same date, each
                # holding some of the lesions (a chest CT and an abdomen CT on one day).
                if k == len(p.studies) - 1 and p.patient_id.endswith(("1", "4")):
                    uid = uid + (".2" if lesion.organ == "liver" else "")
                rows.append(
                    (p.patient_id, uid, study.study_date, lesion.tracking_uid,
                     lesion.lesion_id, lesion.organ, "tracked", volume,
                     diameter, 0.8 * diameter,
                     None, None, None, None, "accepted", state)
                )  # fmt: skip
    return pd.DataFrame(
        rows,
        columns=[
            "patient_id", "study_instance_uid", "study_date", "lesion_uid", "lesion_label",
            "organ", "status", "volume_ml", "longest_diameter_mm", "short_axis_mm",
            "centroid_x_mm", "centroid_y_mm", "centroid_z_mm", "is_target", "review_state",
            "finding_state",
        ],
    )  # fmt: skip


def _labs(cohort, rng: np.random.Generator) -> pd.DataFrame:
    """The cohort's labs, a quarter dropped (lone values), some twice at one time (ties)."""
    rows = [
        (lab.patient_id, lab.test.loinc_code, lab.value, lab.observed_at)
        for p in cohort.patients
        for lab in p.labs
    ]
    labs = pd.DataFrame(rows, columns=["patient_id", "loinc_code", "value", "observed_at"])
    labs = labs[rng.random(len(labs)) > 0.25]
    # Censored results ("< 0.5", "> 1000"): bounds, never read as exact values.
    labs = labs.assign(comparator=rng.choice(["", "<", ">="], size=len(labs), p=[0.9, 0.07, 0.03]))
    ties = labs.sample(frac=0.05, random_state=1).assign(value=lambda t: t["value"] * 1.3)
    unknown = labs.head(5).assign(loinc_code="99999-9")  # not a test RadTrack models
    return pd.concat([labs, ties, unknown], ignore_index=True)


@pytest.fixture(scope="module")
def inputs():
    cohort = cohort_simulate(n_patients=40, n_timepoints=5, seed=11)
    rng = np.random.default_rng(5)
    measurements = _measurements(cohort, rng)
    responses = responses_table_build(measurements=measurements)
    # Responses as a radiologist may leave them: not evaluable, blank, missing.
    responses.loc[responses.index[::7], "recist_response"] = "NE"
    responses.loc[responses.index[3::11], "recist_response"] = None
    patients = pd.DataFrame(
        [(p.patient_id, p.birth_date, p.sex) for p in cohort.patients],
        columns=["patient_id", "birth_date", "sex"],
    )
    patients.loc[::6, "sex"] = "O"
    patients.loc[1::9, "sex"] = ""
    patients.loc[2::7, "birth_date"] = None
    events = pd.DataFrame(
        [(e.patient_id, e.kind, e.date) for p in cohort.patients for e in p.events],
        columns=["patient_id", "kind", "date"],
    )
    labs = _labs(cohort, rng)
    baselines = {p.patient_id: p.baseline_date for p in cohort.patients}
    landmarks = pd.concat(
        [
            measurements.loc[:, ["patient_id", "study_date"]].drop_duplicates(),
            labs.iloc[::6].assign(study_date=lambda t: t["observed_at"].dt.date),
            pd.DataFrame(
                [
                    (pid, day + dt.timedelta(days=offset))
                    for pid, day in baselines.items()
                    for offset in (-30, 0, 45, 100, 1500)
                ]
                + [("NO-DATA", dt.date(2022, 1, 1))],
                columns=["patient_id", "study_date"],
            ),  # fmt: skip
        ]
    ).loc[:, ["patient_id", "study_date"]]
    landmarks = landmarks.rename(columns={"study_date": "landmark_date"}).reset_index(drop=True)
    return {
        "labs": labs,
        "patients": patients,
        "measurements": measurements,
        "responses": responses,
        "events": events,
        "landmarks": landmarks,
    }


def both_tables(inputs, *, lookback_days=365.0, landmarks=None):
    landmarks = inputs["landmarks"] if landmarks is None else landmarks
    tables = []
    for module in (rowwise, features):
        blocks = [
            module.LabFeatures(inputs["labs"], lookback_days=lookback_days),
            module.DemographicFeatures(inputs["patients"]),
            module.ImagingFeatures(inputs["measurements"], inputs["responses"]),
        ]
        tables.append(module.feature_table_build(landmarks=landmarks, blocks=blocks))
    return tables


def test_the_cohort_covers_the_cases(inputs):
    before, _ = both_tables(inputs)
    assert len(before) > 500
    for column in FEATURES:  # every feature both present and missing somewhere
        values = before[column]
        assert values.notna().any() and values.isna().any(), column
    assert (before["fastest_doubling_time_days"] < features.DOUBLING_TIME_CAP_DAYS).any()
    assert (before["new_lesions"] > 0).any() and (before["burden_ratio_to_nadir"] > 1).any()
    # What is not known is exercised: a study's burden unknown while the study is there,
    # an organ count unknown, and censored labs that change latest values and slopes.
    at_a_study = before["new_lesions"].notna()
    assert (at_a_study & before["total_burden_ml"].isna()).any()
    assert (at_a_study & before["organs_involved"].isna()).any()
    exact = features.feature_table_build(
        landmarks=inputs["landmarks"],
        blocks=[features.LabFeatures(inputs["labs"].drop(columns=["comparator"]))],
    )
    for suffix in ("latest", "slope_per_30d"):
        columns = [c for c in LAB_COLUMNS if c.endswith(suffix)]
        assert (before[columns].isna() & exact[columns].notna()).any().any(), suffix


@pytest.mark.parametrize("lookback_days", [365.0, 90.0])
def test_same_features_as_row_by_row(inputs, lookback_days):
    before, after = both_tables(inputs, lookback_days=lookback_days)
    assert_same_features(before, after)


def test_same_features_for_landmarks_given_as_timestamps_or_text(inputs):
    landmarks = inputs["landmarks"].iloc[::5]
    as_text = landmarks.assign(landmark_date=landmarks["landmark_date"].astype(str))
    as_stamps = landmarks.assign(landmark_date=pd.to_datetime(landmarks["landmark_date"]))
    reference, _ = both_tables(inputs, landmarks=landmarks)
    for variant in (as_text, as_stamps):
        before, after = both_tables(inputs, landmarks=variant)
        assert_same_features(reference, before)
        assert_same_features(before, after)


def test_one_row_compute_matches_the_table(inputs):
    blocks = [
        features.LabFeatures(inputs["labs"]),
        features.DemographicFeatures(inputs["patients"]),
        features.ImagingFeatures(inputs["measurements"], inputs["responses"]),
    ]
    table = features.feature_table_build(landmarks=inputs["landmarks"], blocks=blocks)
    for i in (0, 17, len(table) - 1):
        row = table.iloc[i]
        for block in blocks:
            values = block.compute(row["patient_id"], row["landmark_date"])
            for column in block.columns:
                expected = row[column]
                assert (math.isnan(values[column]) and math.isnan(expected)) or (
                    values[column] == expected
                ), column


def test_empty_inputs(inputs):
    landmarks = inputs["landmarks"].iloc[:20]
    empty = {
        "labs": inputs["labs"].iloc[:0],
        "patients": inputs["patients"].iloc[:0],
        "measurements": inputs["measurements"].iloc[:0],
        "responses": None,
    }
    before, after = both_tables(empty, landmarks=landmarks)
    assert_same_features(before, after)
    assert after[FEATURES].isna().all().all()
    none = features.feature_table_build(
        landmarks=landmarks.iloc[:0],
        blocks=[
            features.ImagingFeatures(inputs["measurements"]),
            features.LabFeatures(inputs["labs"]),
        ],
    )
    assert none.empty and list(none.columns) == [
        "patient_id",
        "landmark_date",
        *IMAGING_COLUMNS,
        *LAB_COLUMNS,
    ]


@pytest.mark.parametrize("endpoint", ["pfs", "os"])
def test_same_outcomes_as_row_by_row(inputs, endpoint):
    landmarks = inputs["landmarks"]
    before = rowwise.landmark_outcomes(
        events=inputs["events"], landmarks=landmarks, endpoint=endpoint
    )
    after = landmark_outcomes(events=inputs["events"], landmarks=landmarks, endpoint=endpoint)
    pd.testing.assert_frame_equal(before.table, after.table, check_exact=True)
    assert before.excluded == after.excluded and len(after.excluded) > 0


def test_a_lesion_measured_twice_on_one_date_counts_with_its_mean_volume():
    # Two studies on 2024-03-01 both measured L1 (4 and 6 ml: 5 on average); it was
    # 2.5 ml 60 days before, so it doubled in 60 days. (Row by row, this raised.)
    measurements = pd.DataFrame(
        [("A", "2024-01-01", "L1", "liver", 2.5), ("A", "2024-03-01", "L1", "liver", 4.0),
         ("A", "2024-03-01", "L1", "liver", 6.0), ("A", "2024-03-01", "L2", "lung", 1.0)],
        columns=["patient_id", "study_date", "lesion_uid", "organ", "volume_ml"],
    )  # fmt: skip
    row = features.ImagingFeatures(measurements).compute("A", dt.date(2024, 3, 1))
    assert row["fastest_doubling_time_days"] == pytest.approx(60.0)
    assert row["total_burden_ml"] == 11.0  # the burden sums every row of the date, as before
    assert row["new_lesions"] == 1.0 and row["organs_involved"] == 2.0


def test_a_landmark_without_a_date_is_a_clear_error(inputs):
    landmarks = pd.DataFrame(
        {"patient_id": ["A", "B"], "landmark_date": [dt.date(2024, 1, 1), None]}
    )
    with pytest.raises(ValueError, match="landmark_date is missing in 1 of 2"):
        features.feature_table_build(
            landmarks=landmarks, blocks=[features.LabFeatures(inputs["labs"])]
        )
