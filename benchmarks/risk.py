"""Risk models on a simulated cohort: cross-validated C-index against the oracle, and fit time.

A synthetic cohort (`imaging.core.synthetic.cohort.cohort_simulate`; no images are rendered)
gives, per patient, labs, age and sex, progression/death/censoring events, every
lesion's true volume at every CT study, and the hidden true risk (log relative hazard).
The imaging tables are laid out as ``export_measurements`` rows from the true volumes
(longest diameter: the equivalent-sphere diameter; a resolved lesion keeps a row with
volume 0; ``--volume-noise`` adds repeat-scan variability), and RECIST/volumetric
responses come from them through `analytics.lesions.core.volumetric.responses_table_build`.

The training table is built exactly as ``manage.py fit_risk_model`` builds it
(`analytics.risk.services.training_table_build`: the same features, PFS outcomes from each
landmark), under each landmark policy asked for:

- ``studies`` (the command's default): a landmark at every assessed CT study date. The
  true risk is each patient's *baseline* log hazard and stays fixed, while a later
  landmark also sees the tumour regrowing once progression has begun biologically, so
  a model can beat this "oracle" here;
- ``baseline``: one landmark per patient at the first CT study, where the true risk is
  the log relative hazard of progression onset (detection follows it at the next
  study), so the oracle is close to the best any model can do.

Then, per policy and cohort size:

- ``cox`` and ``gbm``: Harrell's C of the out-of-fold scores, mean over the folds of
  `analytics.risk.core.validation.cross_validate` (patient-level folds);
- ``oracle``: Harrell's C of the true risk on the same test rows, fold by fold, then the
  mean: what a model that knew each patient's hidden risk would reach;
- target: each model within 0.03 of the oracle;
- fit time: one `risk_model_fit` on every row (the final model the command stores), and
  the whole cross-validation, in seconds; also how long building the responses table
  and the training table (landmarks, outcomes, features) took.

``--reference N`` first builds the feature table of the first N patients' landmarks
twice, row by row (`tests/analytics/features_rowwise.py`, the implementation the
whole-table blocks replaced) and with the blocks, checks the values are the same and
prints the speed-up (target >= 50x). ``--end-to-end`` times ``manage.py fit_risk_model``
instead, on a fresh database holding the largest cohort (`benchmarks/risk_end_to_end.py`;
SQLite, or PostgreSQL with ``--database-url``), stage by stage (target <= 120 s).

The cohort is simulated once for the largest size and cached under
``var/benchmarks/risk/``; smaller sizes are its first patients (a patient does not
change when the cohort grows).

    .venv/bin/python benchmarks/risk.py                       # 100, 1,000, 10,000 patients
    .venv/bin/python benchmarks/risk.py --landmarks baseline  # one policy only
    .venv/bin/python benchmarks/risk.py --sizes 100 1000      # a quicker look
    .venv/bin/python benchmarks/risk.py --jobs 2              # simulate on two processes
    .venv/bin/python benchmarks/risk.py --sizes 10000 --reference 1000 --end-to-end

Exits 1 when a model misses the target at the largest size under any policy, or a
``--reference`` or ``--end-to-end`` target is missed.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "radtrack.settings")
os.environ.setdefault("DJANGO_SECRET_KEY", "benchmark-only-no-requests-served")

import django  # noqa: E402 - the repository root is on the path now

django.setup()  # analytics.risk.services imports models; no database is touched

from analytics.lesions.core.volumetric import responses_table_build  # noqa: E402
from analytics.risk.core import features as features_module  # noqa: E402
from analytics.risk.core.metrics import harrell_c  # noqa: E402
from analytics.risk.core.survival import risk_model_fit  # noqa: E402
from analytics.risk.core.validation import cross_validate  # noqa: E402
from analytics.risk.selectors import (  # noqa: E402
    EVENT_COLUMNS,
    LAB_COLUMNS,
    MEASUREMENT_COLUMNS,
    PATIENT_COLUMNS,
    STUDY_COLUMNS,
    FeatureInputs,
)
from analytics.risk.services import (  # noqa: E402
    DEFAULT_PENALIZER,
    FEATURES,
    LandmarkPolicy,
    training_landmarks,
    training_table_build,
)
from imaging.core.synthetic.cohort import patient_simulate  # noqa: E402
from imaging.core.synthetic.lesion_shape import equivalent_diameter_mm  # noqa: E402
from imaging.core.synthetic.simulated import SimulatedPatient  # noqa: E402

TARGET_GAP = 0.03
END_TO_END_TARGET_S = 120.0
REFERENCE_TARGET = 50.0
CACHE = ROOT / "var" / "benchmarks" / "risk"
TODAY = pd.Timestamp("2035-01-01").date()  # after every simulated follow-up


# --------------------------------------------------------------------------------------
# Simulation -> tables
# --------------------------------------------------------------------------------------
def _patient_tables(
    seed: int, index: int, timepoints: int, volume_noise: float
) -> dict[str, list[tuple]]:
    """One patient's rows for every input table, and its true risk."""
    p: SimulatedPatient = patient_simulate(
        seed=seed, index=index, n_timepoints=timepoints, size="small"
    )
    rng = np.random.default_rng([seed, index, 99])
    labs = [
        (p.patient_id, lab.test.loinc_code, lab.value, lab.test.unit, lab.observed_at)
        for lab in p.labs
    ]
    measurements = []
    for study in p.studies:
        for lesion in p.lesions:
            state = lesion.status(study.day)
            if state == "not_yet_present":
                continue
            volume = lesion.volume_ml(study.day)
            if volume > 0 and volume_noise > 0:
                volume *= float(np.exp(rng.normal(0.0, volume_noise)))
            diameter = equivalent_diameter_mm(volume)
            status = "resolved" if state == "resolved" else "tracked"
            if state == "present" and lesion.onset_day > 0 and study.day - lesion.onset_day < 120:
                status = "new"
            measurements.append(
                (p.patient_id, study.study_instance_uid, study.study_date, lesion.tracking_uid,
                 lesion.lesion_id, lesion.organ, status, volume, diameter, 0.8 * diameter,
                 None, None, None, None, "accepted")
            )  # fmt: skip
    return {
        "labs": labs,
        "patients": [(p.patient_id, p.birth_date, p.sex)],
        "events": [(e.patient_id, e.kind, e.date) for e in p.events],
        "studies": [(p.patient_id, s.study_instance_uid, s.study_date) for s in p.studies],
        "measurements": measurements,
        "truth": [(p.patient_id, p.true_risk)],
    }


def cohort_tables(
    *, n: int, seed: int, timepoints: int, volume_noise: float, jobs: int
) -> dict[str, pd.DataFrame]:
    """Tables of the first ``n`` patients, from the cache when it holds them."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"cohort-seed{seed}-t{timepoints}-noise{volume_noise:g}-n{n}.pkl"
    if path.exists():
        with path.open("rb") as f:
            return pickle.load(f)
    rows: dict[str, list[tuple]] = {
        k: [] for k in ("labs", "patients", "events", "studies", "measurements", "truth")
    }
    args = [(seed, i, timepoints, volume_noise) for i in range(n)]
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            parts = list(pool.map(_patient_tables, *zip(*args, strict=True), chunksize=50))
    else:
        parts = [_patient_tables(*a) for a in args]
    for part in parts:
        for key, values in part.items():
            rows[key].extend(values)
    tables = {
        "labs": pd.DataFrame(rows["labs"], columns=list(LAB_COLUMNS)),
        "patients": pd.DataFrame(rows["patients"], columns=list(PATIENT_COLUMNS)),
        "events": pd.DataFrame(rows["events"], columns=list(EVENT_COLUMNS)),
        "studies": pd.DataFrame(rows["studies"], columns=list(STUDY_COLUMNS)),
        "measurements": pd.DataFrame(rows["measurements"], columns=list(MEASUREMENT_COLUMNS)),
        "truth": pd.DataFrame(rows["truth"], columns=["patient_id", "true_risk"]),
    }
    tables["labs"]["observed_at"] = pd.to_datetime(tables["labs"]["observed_at"], utc=True)
    with path.open("wb") as f:
        pickle.dump(tables, f)
    return tables


def first_patients(tables: dict[str, pd.DataFrame], n: int) -> dict[str, pd.DataFrame]:
    keep = set(tables["patients"]["patient_id"].iloc[:n])
    return {k: t[t["patient_id"].isin(keep)].reset_index(drop=True) for k, t in tables.items()}


# --------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------
@dataclass
class Row:
    landmarks: str
    n_patients: int
    n_rows: int
    n_events: int
    seconds_responses: float
    seconds_features: float
    oracle_c: float
    model_c: dict[str, float]
    model_c_sd: dict[str, float]
    cv_seconds: dict[str, float]
    fit_seconds: dict[str, float]


def feature_inputs(tables: dict[str, pd.DataFrame]) -> FeatureInputs:
    """The tables as `fit_risk_model` reads them, responses built from the measurements."""
    return FeatureInputs(
        labs=tables["labs"],
        patients=tables["patients"],
        events=tables["events"],
        studies=tables["studies"],
        measurements=tables["measurements"],
        responses=responses_table_build(measurements=tables["measurements"]),
    )


def reference_report(tables: dict[str, pd.DataFrame], *, n: int) -> bool:
    """Row-by-row features (the implementation they replaced) against the blocks, on the
    landmarks of the first ``n`` patients (``studies`` policy); True when >= 50x faster
    and the same values (`tests/analytics/test_features_vectorised.py`)."""
    from tests.analytics import features_rowwise as rowwise
    from tests.analytics.test_features_vectorised import assert_same_features

    inputs = feature_inputs(first_patients(tables, n))
    landmarks = training_landmarks(inputs, LandmarkPolicy("studies"), today=TODAY)
    seconds, built = {}, {}
    for name, module in (("row by row", rowwise), ("blocks", features_module)):
        started = time.perf_counter()
        blocks = [
            module.LabFeatures(inputs.labs),
            module.DemographicFeatures(inputs.patients),
            module.ImagingFeatures(inputs.measurements, inputs.responses),
        ]
        built[name] = module.feature_table_build(landmarks=landmarks, blocks=blocks)
        seconds[name] = time.perf_counter() - started
    assert_same_features(built["row by row"], built["blocks"])
    speedup = seconds["row by row"] / seconds["blocks"]
    rows = len(landmarks)
    for name, value in seconds.items():
        print(
            f"  features, {name}: {rows} rows in {value:.2f} s ({1000 * value / rows:.3f} ms/row)"
        )
    print(f"  same values; {speedup:.0f}x faster (target >= {REFERENCE_TARGET:.0f}x)", flush=True)
    return speedup >= REFERENCE_TARGET


def measure(
    tables: dict[str, pd.DataFrame],
    *,
    landmarks: str,
    folds: int,
    seed: int,
    penalizer: float,
    models: list[str],
) -> Row:
    started = time.perf_counter()
    inputs = feature_inputs(tables)
    seconds_responses = time.perf_counter() - started
    started = time.perf_counter()
    training = training_table_build(inputs=inputs, policy=LandmarkPolicy(landmarks), today=TODAY)
    seconds_features = time.perf_counter() - started
    table = training.table
    truth = tables["truth"].set_index("patient_id")["true_risk"]
    true_risk = table["patient_id"].map(truth).to_numpy(float)
    durations = table["duration_days"].to_numpy(float)
    events = table["event"].to_numpy(bool)

    model_c, model_sd, cv_seconds, fit_seconds, oracle = {}, {}, {}, {}, []
    for kind in models:
        options = {"penalizer": penalizer} if kind == "cox" else {}
        t0 = time.perf_counter()
        cv = cross_validate(
            kind=kind, df=table, features=list(FEATURES), n_splits=folds, random_state=seed,
            **options,
        )  # fmt: skip
        cv_seconds[kind] = time.perf_counter() - t0
        model_c[kind] = cv.metrics["c_index"]
        model_sd[kind] = cv.metrics["c_index_sd"]
        if not oracle:  # the folds depend on the seed and the rows only: same for each model
            for fold in sorted(cv.oof["fold"].unique()):
                mask = (cv.oof["fold"] == fold).to_numpy()
                oracle.append(
                    harrell_c(
                        durations=durations[mask], events=events[mask], scores=true_risk[mask]
                    )
                )
        t0 = time.perf_counter()
        risk_model_fit(kind=kind, df=table, features=list(FEATURES), random_state=seed, **options)
        fit_seconds[kind] = time.perf_counter() - t0
    return Row(
        landmarks=landmarks,
        n_patients=int(tables["patients"].shape[0]),
        n_rows=len(table),
        n_events=training.n_events,
        seconds_responses=seconds_responses,
        seconds_features=seconds_features,
        oracle_c=float(np.mean(oracle)),
        model_c=model_c,
        model_c_sd=model_sd,
        cv_seconds=cv_seconds,
        fit_seconds=fit_seconds,
    )


def end_to_end_report(args: argparse.Namespace, *, n: int) -> int:
    """``fit_risk_model`` end to end at ``n`` patients, per model kind; exits 1 over the target."""
    from risk_end_to_end import end_to_end_run

    cohort_path = CACHE / (
        f"cohort-seed{args.seed}-t{args.timepoints}-noise{args.volume_noise:g}-n{n}.pkl"
    )
    result = end_to_end_run(
        cohort_path=cohort_path, n_patients=n, kinds=args.models, database_url=args.database_url
    )
    database = "PostgreSQL" if args.database_url else "SQLite"
    counts = ", ".join(f"{v} {k}" for k, v in result["counts"].items())
    print(f"database ({database}) filled in {result['filled_s']:.0f} s: {counts}")
    met = True
    for run in result["runs"]:
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in run["stages"].items())
        print(f"  fit_risk_model --model {run['kind']}: {run['seconds']:.1f} s ({stages})")
        print(f"    {run['rows']}; {run['scores']} scores stored in all")
        met = met and run["seconds"] <= END_TO_END_TARGET_S
    verdict = "met" if met else "MISSED"
    print(
        f"target: fit_risk_model end to end <= {END_TO_END_TARGET_S:.0f} s at {n} patients: {verdict}"
    )
    return 0 if met else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--timepoints", type=int, default=6)
    parser.add_argument("--seed", type=int, default=20240)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--penalizer", type=float, default=None, help="Cox penalty")
    parser.add_argument("--models", nargs="+", default=["cox", "gbm"], choices=["cox", "gbm"])
    parser.add_argument(
        "--landmarks",
        nargs="+",
        default=["studies", "baseline"],
        choices=["studies", "baseline"],
        help="landmark policies to measure (analytics.risk.services.LandmarkPolicy)",
    )
    parser.add_argument(
        "--volume-noise",
        type=float,
        default=0.0,
        help="SD of log volume added to each true lesion volume (0: the exact truth)",
    )
    parser.add_argument("--jobs", type=int, default=1, help="processes for the simulation")
    parser.add_argument(
        "--end-to-end",
        action="store_true",
        help="instead of comparing models: time manage.py fit_risk_model on a database "
        "holding the largest cohort (benchmarks/risk_end_to_end.py)",
    )
    parser.add_argument("--database-url", help="PostgreSQL URL for --end-to-end (default SQLite)")
    parser.add_argument(
        "--reference",
        type=int,
        default=0,
        metavar="N",
        help="first time the row-by-row features against the blocks on N patients",
    )
    args = parser.parse_args(argv)
    if args.penalizer is None:
        args.penalizer = DEFAULT_PENALIZER

    sizes = sorted(set(args.sizes))
    t0 = time.perf_counter()
    everyone = cohort_tables(
        n=sizes[-1],
        seed=args.seed,
        timepoints=args.timepoints,
        volume_noise=args.volume_noise,
        jobs=args.jobs,
    )
    print(
        f"cohort: {sizes[-1]} patients, {args.timepoints} timepoints, seed {args.seed}, "
        f"volume noise {args.volume_noise:g} (simulated or read from cache in "
        f"{time.perf_counter() - t0:.0f} s)",
        flush=True,
    )
    fast_enough = True
    if args.reference:
        fast_enough = reference_report(everyone, n=args.reference)
    if args.end_to_end:
        return max(end_to_end_report(args, n=sizes[-1]), 0 if fast_enough else 1)
    rows = []
    for landmarks in args.landmarks:
        for n in sizes:
            row = measure(
                first_patients(everyone, n),
                landmarks=landmarks,
                folds=args.folds,
                seed=args.seed,
                penalizer=args.penalizer,
                models=args.models,
            )
            rows.append(row)
            summary = ", ".join(
                f"{k} C {row.model_c[k]:.3f} (cv {row.cv_seconds[k]:.0f} s)" for k in args.models
            )
            print(
                f"  {landmarks}, {n} patients: {row.n_rows} rows, {row.n_events} events, "
                f"features {row.seconds_features:.1f} s, oracle C {row.oracle_c:.3f}, {summary}",
                flush=True,
            )
    met = tables_print(rows, models=args.models, folds=args.folds, largest=sizes[-1])
    return 0 if met and fast_enough else 1


def tables_print(rows: list[Row], *, models: list[str], folds: int, largest: int) -> bool:
    """The C-index and time tables; True when every model is within the target at ``largest``."""
    print()
    print(f"Cross-validated C-index of PFS ({folds} folds by patient)")
    header = f"{'landmarks':>9} {'patients':>8} {'rows':>6} {'events':>6} {'oracle':>7}"
    for kind in models:
        header += f" {kind + ' C':>14} {'gap':>6}"
    print(header)
    met = True
    for row in rows:
        line = (
            f"{row.landmarks:>9} {row.n_patients:>8} {row.n_rows:>6} {row.n_events:>6} "
            f"{row.oracle_c:>7.3f}"
        )
        for kind in models:
            gap = row.oracle_c - row.model_c[kind]
            line += f" {row.model_c[kind]:>7.3f} ± {row.model_c_sd[kind]:.3f} {gap:>6.3f}"
            if row.n_patients == largest and gap > TARGET_GAP:
                met = False
        print(line)
    print()
    print(
        "Time (s): responses = RECIST/volumetric table from the measurements; features = "
        "landmarks, outcomes and feature table; fit = one fit on every row; cv = all folds"
    )
    header = f"{'landmarks':>9} {'patients':>8} {'responses':>9} {'features':>9}"
    for kind in models:
        header += f" {kind + ' fit':>9} {kind + ' cv':>9}"
    print(header)
    for row in rows:
        line = (
            f"{row.landmarks:>9} {row.n_patients:>8} {row.seconds_responses:>9.1f} "
            f"{row.seconds_features:>9.2f}"
        )
        for kind in models:
            line += f" {row.fit_seconds[kind]:>9.2f} {row.cv_seconds[kind]:>9.1f}"
        print(line)
    print()
    verdict = "met" if met else "MISSED"
    print(
        f"target: each model's C-index within {TARGET_GAP} of the oracle at "
        f"{largest} patients: {verdict}"
    )
    return met


if __name__ == "__main__":
    sys.exit(main())
