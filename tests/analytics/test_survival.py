"""Risk models and their metrics, checked against published and hand-computed answers (no database)."""

import datetime as dt
import sys

import joblib
import numpy as np
import pandas as pd
import pytest
from lifelines.datasets import load_lung
from sklearn.metrics import roc_auc_score

from analytics.risk.core.estimators import cox_fit, horizon_ipcw_weights
from analytics.risk.core.features import DemographicFeatures, LabFeatures, feature_table_build
from analytics.risk.core.metrics import (
    calibration_by_decile,
    harrell_c,
    integrated_brier_score,
    time_dependent_auc,
)
from analytics.risk.core.outcomes import landmark_outcomes, landmarks_from_baseline
from analytics.risk.core.survival import (
    library_versions,
    risk_model_fit,
    risk_model_load,
    risk_model_save,
    table_fingerprint,
    tier_thresholds,
)
from analytics.risk.core.validation import cross_validate
from imaging.core.synthetic.cohort import cohort_simulate

FAST_GBM = {"max_iter": 40, "learning_rate": 0.1}


def lung() -> pd.DataFrame:
    """NCCTG lung cancer data as R's coxph sees it: complete cases of time, status, age, sex, ph.ecog."""
    data = load_lung()[["time", "status", "age", "sex", "ph.ecog"]].dropna()
    assert len(data) == 227  # R: n= 227, number of events= 164 (1 observation deleted)
    assert int(data["status"].sum()) == 164
    return data


# R 4.x, survival 3.x: coxph(Surv(time, status) ~ age + sex + ph.ecog, data = lung)
R_COEFFICIENTS = {"age": 0.01107, "sex": -0.55261, "ph.ecog": 0.46373}
R_CONCORDANCE = 0.637


def test_cox_fit_reproduces_r_survival_on_the_lung_data():
    model = cox_fit(df=lung(), duration_col="time", event_col="status", penalizer=0.0, l1_ratio=0.0)
    for name, expected in R_COEFFICIENTS.items():
        assert model.coefficients[name] == pytest.approx(expected, abs=1e-3)
    assert model.concordance == pytest.approx(R_CONCORDANCE, abs=1e-3)


def test_the_risk_model_pipeline_reproduces_r_survival_on_the_lung_data():
    data = lung()
    model = risk_model_fit(
        kind="cox",
        df=data,
        features=["age", "sex", "ph.ecog"],
        duration_col="time",
        event_col="status",
        penalizer=0.0,
    )
    for name, expected in R_COEFFICIENTS.items():
        assert model.estimator.coefficients[name] == pytest.approx(expected, abs=1e-3)
    c = harrell_c(durations=data["time"], events=data["status"], scores=model.score(data))
    assert c == pytest.approx(R_CONCORDANCE, abs=1e-3)


def test_linear_predictor_is_lifelines_log_partial_hazard():
    data = lung()
    model = cox_fit(df=data, duration_col="time", event_col="status", penalizer=0.1)
    expected = model.fitter.predict_log_partial_hazard(data[["age", "sex", "ph.ecog"]])
    assert model.linear_predictor(data) == pytest.approx(expected.to_numpy())


def test_penalty_shrinks_coefficients():
    plain = cox_fit(df=lung(), duration_col="time", event_col="status", penalizer=0.0)
    shrunk = cox_fit(df=lung(), duration_col="time", event_col="status", penalizer=1.0)
    assert np.abs(shrunk.coefficients).sum() < np.abs(plain.coefficients).sum()


# --------------------------------------------------------------------------------------
# Metrics with known answers
# --------------------------------------------------------------------------------------
def test_harrell_c_known_answers():
    rng = np.random.default_rng(1)
    times = rng.exponential(100, 2000)
    events = rng.random(2000) < 0.7
    assert harrell_c(durations=times, events=events, scores=-times) == pytest.approx(1.0)
    assert harrell_c(durations=times, events=events, scores=times) == pytest.approx(0.0)
    assert harrell_c(durations=times, events=events, scores=rng.random(2000)) == pytest.approx(
        0.5, abs=0.03
    )
    assert harrell_c(durations=times, events=events, scores=np.zeros(2000)) == pytest.approx(0.5)


def test_time_dependent_auc_without_censoring_is_the_plain_auc():
    rng = np.random.default_rng(2)
    times = rng.exponential(300, 400)
    marker = -np.log(times) + rng.normal(0, 1, 400)
    events = np.ones(400, bool)
    auc = time_dependent_auc(durations=times, events=events, risk=marker, times=[182.0, 365.0])
    for t, value in zip([182.0, 365.0], auc, strict=True):
        assert value == pytest.approx(roc_auc_score(times <= t, marker))
    perfect = time_dependent_auc(durations=times, events=events, risk=-times, times=[182.0])
    assert perfect[0] == pytest.approx(1.0)


def test_time_dependent_auc_weights_cases_by_inverse_censoring_probability():
    # (T, event): censoring at 3 leaves G = 2/3 from then on, so the case at T=5 weighs 1.5.
    durations = [2.0, 3.0, 5.0, 8.0]
    events = [True, False, True, False]
    marker = [0.3, 0.0, 0.9, 0.5]  # at t=6 cases are T=2 (below the control) and T=5 (above)
    auc = time_dependent_auc(durations=durations, events=events, risk=marker, times=[6.0])
    assert auc[0] == pytest.approx((1 * 0 + 1.5 * 1) / (1 + 1.5))  # 0.6; unweighted would be 0.5


def test_time_dependent_auc_is_nan_where_not_estimable():
    auc = time_dependent_auc(
        durations=[10.0, 20.0, 30.0], events=[True, True, False], risk=[3, 2, 1], times=[5.0, 365.0]
    )
    assert np.isnan(auc).all()


def test_integrated_brier_score_against_a_hand_computed_example():
    durations = np.array([2.0, 3.0, 5.0, 8.0])
    events = np.array([True, False, True, False])
    survival = np.array([[0.2, 0.1], [0.7, 0.5], [0.6, 0.3], [0.9, 0.8]])  # at t = 4, 6
    # G (Kaplan-Meier of censoring): 1 before 3, 2/3 from 3 on.
    # BS(4) = [0.2^2/1 + 0 + (1-0.6)^2/(2/3) + (1-0.9)^2/(2/3)] / 4 = 0.07375
    # BS(6) = [0.1^2/1 + 0 + 0.3^2/(2/3) + (1-0.8)^2/(2/3)] / 4 = 0.05125
    # IBS = trapezoid over [4, 6] / 2 = 0.0625
    ibs = integrated_brier_score(
        durations=durations, events=events, survival=survival, times=[4.0, 6.0]
    )
    assert ibs == pytest.approx(0.0625)


def test_integrated_brier_score_of_uninformative_and_perfect_predictions():
    rng = np.random.default_rng(3)
    times = rng.exponential(100, 500) + 1
    events = np.ones(500, bool)
    grid = np.linspace(20, 150, 30)
    half = integrated_brier_score(
        durations=times, events=events, survival=np.full((500, 30), 0.5), times=grid
    )
    assert half == pytest.approx(0.25)
    perfect = (times[:, None] > grid[None, :]).astype(float)
    assert integrated_brier_score(
        durations=times, events=events, survival=perfect, times=grid
    ) == pytest.approx(0.0)


def test_calibration_by_decile_of_true_probabilities():
    rng = np.random.default_rng(4)
    rate = np.exp(rng.normal(np.log(1 / 400), 0.8, 5000))
    times = rng.exponential(1 / rate)
    predicted = 1 - np.exp(-rate * 365)
    table = calibration_by_decile(
        durations=times, events=np.ones(5000, bool), risk=predicted, horizon_days=365
    )
    assert list(table["group"]) == list(range(1, 11)) and table["n"].sum() == 5000
    assert table["mean_predicted"].is_monotonic_increasing
    assert np.abs(table["observed"] - table["mean_predicted"]).max() < 0.06
    shuffled = calibration_by_decile(
        durations=times,
        events=np.ones(5000, bool),
        risk=rng.permutation(predicted),
        horizon_days=365,
    )
    assert np.abs(shuffled["observed"] - shuffled["mean_predicted"]).max() > 0.1


def test_ipcw_weights_for_event_by_horizon():
    label, weight = horizon_ipcw_weights(
        durations=np.array([100, 200, 300, 400, 500.0]),
        events=np.array([True, False, True, False, True]),
        horizon_days=365,
    )
    assert label.tolist() == [1, 0, 1, 0, 0]
    assert weight[1] == 0  # censored before the horizon: status unknown
    # G = 1 before 200, 3/4 from 200 (censoring at 200 among 4 at risk), 3/8 from 400.
    raw = np.array([1, 0, 4 / 3, 4 / 3, 4 / 3])
    assert weight == pytest.approx(raw / raw[raw > 0].mean())


# --------------------------------------------------------------------------------------
# Fitting, tiers, explanations, cross-validation
# --------------------------------------------------------------------------------------
def simulated(n=240, seed=0, landmarks_per_patient=1):
    """Exponential survival with log hazard 0.9 x1 - 0.6 x2 (x3 has no effect); some x2 missing."""
    rng = np.random.default_rng(seed)
    x1, x2, x3 = rng.normal(size=(3, n))
    hazard = np.exp(0.9 * x1 - 0.6 * x2) / 300
    t = rng.exponential(1 / hazard)
    c = rng.uniform(150, 900, n)
    x2 = np.where(rng.random(n) < 0.15, np.nan, x2)
    frame = pd.DataFrame(
        {
            "patient_id": [f"P{i:03d}" for i in range(n)],
            "x1": x1,
            "x2": x2,
            "x3": x3,
            "duration_days": np.ceil(np.minimum(t, c)),
            "event": t <= c,
        }
    )
    if landmarks_per_patient > 1:
        frame = pd.concat([frame] * landmarks_per_patient, ignore_index=True)
    return frame


def test_tier_thresholds_are_training_tertiles():
    thresholds = tier_thresholds(np.arange(1, 10, dtype=float))
    assert (thresholds.low_below, thresholds.high_from) == pytest.approx((11 / 3, 19 / 3))
    assert [thresholds.tier(s) for s in (1, 3.6, 4, 6.3, 6.4, 9)] == [
        "low", "low", "intermediate", "intermediate", "high", "high"
    ]  # fmt: skip
    model = risk_model_fit(kind="cox", df=simulated(), features=["x1", "x2", "x3"])
    tiers = pd.Series(model.tier(model.score(simulated())))
    assert tiers.value_counts().to_dict() == pytest.approx(
        {"low": 80, "intermediate": 80, "high": 80}, abs=1
    )


def test_cox_explanation_adds_up_to_the_score_and_points_the_right_way():
    data = simulated()
    model = risk_model_fit(kind="cox", df=data, features=["x1", "x2", "x3"])
    rows = data.iloc[:20]
    for explanation, score in zip(model.explain(rows), model.score(rows), strict=True):
        total = sum(c.contribution for c in explanation.contributions)
        assert total == pytest.approx(score) and explanation.score == pytest.approx(score)
        assert [abs(c.contribution) for c in explanation.contributions] == sorted(
            (abs(c.contribution) for c in explanation.contributions), reverse=True
        )
    mean_x1 = model.estimator.means["x1"]
    high = pd.DataFrame({"x1": [mean_x1 + 2], "x2": [np.nan], "x3": [0.0]})
    explanation = model.explain(high, top=2)[0]
    by_name = {c.feature: c for c in explanation.contributions}
    assert explanation.contributions[0].feature == "x1"
    assert (
        by_name["x1"].contribution == pytest.approx(2 * model.estimator.coefficients["x1"])
        and by_name["x1"].contribution > 0
    )
    assert len(explanation.contributions) == 2
    full = model.explain(high)[0].as_dict()
    assert {c["feature"]: c["value"] for c in full["contributions"]}["x2"] is None


def test_gbm_explanation_ranks_the_driving_feature_first():
    data = simulated(n=400, seed=5)
    model = risk_model_fit(kind="gbm", df=data, features=["x1", "x2", "x3"], gbm_params=FAST_GBM)
    explanations = model.explain(data.iloc[:100])
    mean_abs = {
        name: np.mean([abs(next(c.contribution for c in e.contributions if c.feature == name)) for e in explanations])
        for name in ("x1", "x3")
    }  # fmt: skip
    assert mean_abs["x1"] > 2 * mean_abs["x3"]
    risk = model.score(data.iloc[:5])
    assert ((risk >= 0) & (risk <= 1)).all()


@pytest.mark.parametrize("kind", ["cox", "gbm"])
def test_cross_validation_is_patient_level_and_finds_the_signal(kind):
    data = simulated(n=200, seed=7, landmarks_per_patient=2)
    result = cross_validate(
        kind=kind,
        df=data,
        features=["x1", "x2", "x3"],
        n_splits=4,
        **({"gbm_params": FAST_GBM} if kind == "gbm" else {}),
    )
    folds_per_patient = result.oof.groupby(data["patient_id"])["fold"].nunique()
    assert (folds_per_patient == 1).all()
    assert result.oof["score"].notna().all()
    assert len(result.fold_metrics) == 4
    m = result.metrics
    assert 0.65 < m["c_index"] < 0.9 and 0.65 < m["c_index_pooled"] < 0.9
    assert 0.65 < m["auc_182d"] <= 1 and 0.65 < m["auc_365d"] <= 1
    assert 0 < m["ibs"] < 0.25
    assert len(result.calibration) == 10


def test_a_noise_feature_alone_scores_near_chance():
    data = simulated(n=300, seed=9)
    result = cross_validate(kind="cox", df=data, features=["x3"], n_splits=5)
    assert result.metrics["c_index"] == pytest.approx(0.5, abs=0.07)


def test_save_load_round_trip_and_provenance(tmp_path):
    data = simulated(n=120, seed=2)
    model = risk_model_fit(kind="cox", df=data, features=["x1", "x2", "x3"])
    loaded = risk_model_load(risk_model_save(model, tmp_path / "models" / "cox.joblib"))
    assert np.array_equal(loaded.score(data), model.score(data))
    assert loaded.tiers == model.tiers

    fingerprint = table_fingerprint(data)
    assert fingerprint == table_fingerprint(data.sample(frac=1, random_state=1)[data.columns[::-1]])
    changed = data.copy()
    changed.loc[0, "x1"] += 1e-6
    assert table_fingerprint(changed) != fingerprint
    assert {"lifelines", "scikit-learn", "scikit-survival"} <= set(library_versions())


def test_lab_features_of_the_synthetic_cohort_predict_progression():
    """End to end on the generator's cohort: labs at baseline -> PFS, cross-validated."""

    cohort = cohort_simulate(n_patients=120, n_timepoints=4, seed=11)
    labs = pd.DataFrame(
        [(lab.patient_id, lab.test.loinc_code, lab.value, lab.observed_at) for p in cohort.patients for lab in p.labs],
        columns=["patient_id", "loinc_code", "value", "observed_at"],
    )  # fmt: skip
    patients = pd.DataFrame(
        [(p.patient_id, p.birth_date, p.sex) for p in cohort.patients],
        columns=["patient_id", "birth_date", "sex"],
    )
    events = pd.DataFrame(
        [(e.patient_id, e.kind, e.date) for p in cohort.patients for e in p.events],
        columns=["patient_id", "kind", "date"],
    )
    landmarks = landmarks_from_baseline(
        {p.patient_id: p.baseline_date for p in cohort.patients}, offset_days=0
    )
    features = feature_table_build(
        landmarks=landmarks, blocks=[LabFeatures(labs), DemographicFeatures(patients)]
    )
    outcomes = landmark_outcomes(events=events, landmarks=landmarks, endpoint="pfs")
    table = features.merge(outcomes.table, on=["patient_id", "landmark_date"])
    names = [c for c in features.columns if c not in ("patient_id", "landmark_date")]
    assert isinstance(table["landmark_date"].iloc[0], dt.date)
    result = cross_validate(kind="cox", df=table, features=names, n_splits=4, penalizer=0.5)
    assert result.metrics["c_index"] > 0.6


def test_a_model_file_written_before_the_layout_move_still_loads(tmp_path):
    """Model files record their classes' module paths; those moved (analytics.core.* ->
    analytics.risk.core.*), and a fitted model must stay usable."""
    data = simulated(n=120, seed=2)
    model = risk_model_fit(kind="cox", df=data, features=["x1", "x2", "x3"])
    path = tmp_path / "old.joblib"
    joblib.dump(model, path, protocol=2)  # protocol 2 names classes as text lines
    raw = path.read_bytes()
    old = raw
    for new_module, old_module in (
        (b"analytics.risk.core.survival\n", b"analytics.core.survival\n"),
        (b"analytics.risk.core.estimators\n", b"analytics.core.survival\n"),
        (b"analytics.risk.core.features\n", b"analytics.core.features\n"),
        (b"analytics.risk.core.imputation\n", b"analytics.core.features\n"),
    ):
        old = old.replace(new_module, old_module)
    assert old != raw and b"analytics.risk.core" not in old
    path.write_bytes(old)
    loaded = risk_model_load(path)
    assert np.array_equal(loaded.score(data), model.score(data))
    assert "analytics.core.survival" not in sys.modules  # the aliases were temporary
    # Written after that move but before the imputer left analytics.risk.core.features:
    later = raw.replace(b"analytics.risk.core.imputation\n", b"analytics.risk.core.features\n")
    assert later != raw
    path.write_bytes(later)
    assert np.array_equal(risk_model_load(path).score(data), model.score(data))
