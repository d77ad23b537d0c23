"""Fitting risk models on the database's patients, storing them, and scoring every patient.

The arithmetic is all in `analytics.risk.core` (features, models, metrics, validation);
this module chooses the landmarks, maps rows onto `RiskModelVersion` and `RiskScore`,
and keeps the artifacts.

Landmark policy (`LandmarkPolicy`)
----------------------------------
Training rows are taken at *landmarks*, dates at which the model will later be asked for
a risk. The default policy, ``studies``, puts one at every date on which a patient had a
CT study with lesion measurements or a response assessment: that is when new imaging
is known and a score would be looked at, and it is what `risk_scores_compute` scores
(the patient's latest data). A patient with no assessed CT study gets one landmark at
their baseline (first CT study, else first lab). Several landmarks of one patient are
stacked (a landmark "supermodel"); cross-validation splits by patient, so no patient is
in a training and a test fold at once. Only landmarks on or before today count.

``baseline`` puts one landmark per patient at baseline + ``offset_days`` (classic
landmark analysis at a fixed time since the first CT study, else first lab).

Features at a landmark see nothing after it, and outcomes count from it forwards
(`analytics.risk.core.features.landmark_outcomes`: a patient who already progressed, or
whose follow-up ended, by the landmark gives no row there).

Scoring (`risk_scores_compute`)
-------------------------------
Every living patient with a CT study or a lab is scored at the date of their latest
data (`current_landmarks`), with features held inside the range the model was fitted on
(`features_clip`); the explanation says which values were moved and notes a patient
who had already progressed (the PFS model's training rows stop at progression). A
patient left out (dead, nothing to score from) loses the version's scores, and one
scored at an earlier landmark than before (data withdrawn) loses those at later ones
(`scores_superseded_delete`): the worklist never ranks anyone by a stale score. Dates
of lab times and "today" are both taken in the current time zone (``TIME_ZONE``).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import pandas as pd
from django.db import transaction
from django.utils import timezone

from analytics.models import RiskModelVersion, RiskScore, models_dir
from analytics.risk.core.estimators import DEFAULT_HORIZON_DAYS
from analytics.risk.core.features import (
    DEMOGRAPHIC_COLUMNS,
    IMAGING_COLUMNS,
    LAB_COLUMNS,
    feature_table_build,
)
from analytics.risk.core.outcomes import landmark_outcomes
from analytics.risk.core.survival import (
    RiskModel,
    library_versions,
    risk_model_fit,
    risk_model_load,
    risk_model_save,
    table_fingerprint,
)
from analytics.risk.core.validation import (
    EVAL_TIMES_DAYS,
    CrossValidationResult,
    cross_validate,
)
from analytics.risk.score_notes import (
    feature_ranges,
    features_clip,
    features_missing,
    latest_on_or_before,
    score_notes,
)
from analytics.risk.selectors import FeatureInputs, dates_by_patient, feature_inputs_load
from analytics.risk.superseded import scores_superseded_delete
from patients.models import Patient
from radtrack.provenance import json_safe

__all__ = [
    "DEFAULT_PENALIZER",
    "FEATURES",
    "MIN_EVENTS",
    "LandmarkPolicy",
    "RiskModelFitError",
    "TooFewEvents",
    "TrainingTable",
    "current_landmarks",
    "risk_model_fit_and_store",
    "risk_scores_compute",
    "training_landmarks",
    "training_table_build",
]

FEATURES: tuple[str, ...] = (*IMAGING_COLUMNS, *LAB_COLUMNS, *DEMOGRAPHIC_COLUMNS)
# Fewer outcome events than this cannot support a model of a dozen or more features
# with any stability (the usual rule of thumb asks for ten events per feature; this is
# the floor below which RadTrack refuses to fit at all).
MIN_EVENTS = 10
DEFAULT_PENALIZER = 0.1

Progress = Callable[[str], None]


class RiskModelFitError(Exception):
    """The data cannot give a model (too few events, patients or usable features)."""


class TooFewEvents(RiskModelFitError):
    """Fewer patients with an outcome event than `MIN_EVENTS` (or than folds) in the
    training rows; ``events`` counts those patients."""

    def __init__(self, message: str, *, events: int, needed: int) -> None:
        super().__init__(message)
        self.events = events
        self.needed = needed


@dataclass(frozen=True)
class LandmarkPolicy:
    """Where training landmarks go (module docstring): ``studies`` or ``baseline``."""

    kind: Literal["studies", "baseline"] = "studies"
    offset_days: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("studies", "baseline"):
            raise ValueError(f"landmark policy must be 'studies' or 'baseline', not {self.kind!r}")

    def describe(self) -> str:
        if self.kind == "studies":
            return "every assessed CT study date (baseline if none)"
        return f"baseline + {self.offset_days} days"


# --------------------------------------------------------------------------------------
# Landmarks
# --------------------------------------------------------------------------------------
def _patient_pks(mrns: list[str] | None) -> dict[str, int]:
    """Primary keys by MRN, of these patients (None: everyone's, without an IN list of
    every MRN, which could pass SQLite's limit on bound parameters)."""
    patients = Patient.objects.all()
    if mrns is not None:
        patients = patients.filter(patient_id__in=mrns)
    return dict(patients.values_list("patient_id", "pk"))


def _first_progressions(
    inputs: FeatureInputs, model_version: RiskModelVersion
) -> dict[str, dt.date]:
    """Each patient's first progression date, for a PFS model only (else empty).

    Only the PFS model's training rows stop at progression, so only its scores need
    the note that the patient had already progressed.
    """
    if model_version.parameters.get("endpoint", "pfs") != "pfs":
        return {}
    progressions = inputs.events[inputs.events["kind"] == "progression"]
    return {pid: min(dates) for pid, dates in dates_by_patient(progressions, "date").items()}


def _baselines(inputs: FeatureInputs) -> dict[str, dt.date]:
    """First CT study date, else first lab date (local), per patient."""
    studies = dates_by_patient(inputs.studies, "study_date")
    labs = dates_by_patient(inputs.labs, "observed_at")
    out = {pid: min(labs[pid]) for pid in labs}
    out.update({pid: min(dates) for pid, dates in studies.items()})
    return out


def training_landmarks(
    inputs: FeatureInputs, policy: LandmarkPolicy, *, today: dt.date | None = None
) -> pd.DataFrame:
    """``patient_id, landmark_date`` rows under ``policy``, none after ``today``."""
    today = today or timezone.localdate()
    baselines = _baselines(inputs)
    rows: set[tuple[str, dt.date]] = set()
    if policy.kind == "studies":
        assessed = dates_by_patient(inputs.measurements, "study_date")
        for pid, dates in dates_by_patient(inputs.responses, "study_date").items():
            assessed.setdefault(pid, []).extend(dates)
        for pid, baseline in baselines.items():
            rows.update((pid, d) for d in (assessed.get(pid) or [baseline]))
    else:
        offset = dt.timedelta(days=policy.offset_days)
        rows.update((pid, baseline + offset) for pid, baseline in baselines.items())
    return pd.DataFrame(
        sorted((pid, d) for pid, d in rows if d <= today),
        columns=["patient_id", "landmark_date"],
    )


def current_landmarks(
    inputs: FeatureInputs, *, landmark_date: dt.date | None = None, today: dt.date | None = None
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Each patient's scoring landmark, and why the others get none.

    The landmark is ``landmark_date`` when given, else the date of the patient's latest
    data (CT study or lab), never after today. Left out: patients with no CT study and
    no lab (nothing to score) and patients who died on or before ``landmark_date`` (when
    given) or today: a worklist has no use for their risk (`risk_scores_compute` removes
    their scores).
    """
    today = today or timezone.localdate()
    studies = dates_by_patient(inputs.studies, "study_date")
    labs = dates_by_patient(inputs.labs, "observed_at")
    deaths = {
        pid: min(d)
        for pid, d in dates_by_patient(
            inputs.events[inputs.events["kind"] == "death"], "date"
        ).items()
    }
    rows, skipped = [], {}
    for pid in inputs.patients["patient_id"].astype(str):
        dates = [d for d in (*studies.get(pid, ()), *labs.get(pid, ())) if d <= today]
        if not dates:
            skipped[pid] = "no CT study or lab result to score from"
            continue
        landmark = landmark_date or max(dates)
        if pid in deaths and deaths[pid] <= (landmark_date or today):
            skipped[pid] = f"died on {deaths[pid]:%Y-%m-%d}"
            continue
        rows.append((pid, landmark))
    return pd.DataFrame(rows, columns=["patient_id", "landmark_date"]), skipped


# --------------------------------------------------------------------------------------
# Training table
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainingTable:
    """Features and outcomes per (patient, landmark), and the landmarks left out and why."""

    table: pd.DataFrame  # patient_id, landmark_date, FEATURES..., duration_days, event
    excluded: dict[tuple[str, dt.date], str]

    @property
    def n_events(self) -> int:
        """Landmark rows that end in an event: a patient counts at each landmark before it."""
        return int(self.table["event"].sum()) if not self.table.empty else 0

    @property
    def n_event_patients(self) -> int:
        """Patients with an outcome event: what `MIN_EVENTS` asks for."""
        if self.table.empty:
            return 0
        return int(self.table.loc[self.table["event"].astype(bool), "patient_id"].nunique())

    @property
    def n_patients(self) -> int:
        return int(self.table["patient_id"].nunique()) if not self.table.empty else 0

    @property
    def fingerprint(self) -> str:
        return table_fingerprint(self.table)


def training_table_build(
    *,
    inputs: FeatureInputs,
    policy: LandmarkPolicy = LandmarkPolicy(),
    endpoint: str = "pfs",
    lookback_days: float = 365.0,
    today: dt.date | None = None,
) -> TrainingTable:
    """Features at every landmark of ``policy`` joined to the outcome after it."""
    landmarks = training_landmarks(inputs, policy, today=today)
    outcomes = landmark_outcomes(events=inputs.events, landmarks=landmarks, endpoint=endpoint)
    eligible = outcomes.table.loc[:, ["patient_id", "landmark_date"]]
    features = feature_table_build(
        landmarks=eligible, blocks=inputs.blocks(lookback_days=lookback_days)
    )
    table = features.merge(outcomes.table, on=["patient_id", "landmark_date"], how="inner")
    table = table.loc[:, ["patient_id", "landmark_date", *FEATURES, "duration_days", "event"]]
    table = table.sort_values(["patient_id", "landmark_date"]).reset_index(drop=True)
    return TrainingTable(table=table, excluded=outcomes.excluded)


# --------------------------------------------------------------------------------------
# Fit and store
# --------------------------------------------------------------------------------------
def risk_model_fit_and_store(
    *,
    kind: Literal["cox", "gbm"] = "cox",
    policy: LandmarkPolicy = LandmarkPolicy(),
    endpoint: Literal["pfs", "os"] = "pfs",
    penalizer: float = DEFAULT_PENALIZER,
    folds: int = 5,
    seed: int = 0,
    horizon_days: float = DEFAULT_HORIZON_DAYS,
    name: str = "",
    today: dt.date | None = None,
    progress: Progress | None = None,
    inputs: FeatureInputs | None = None,
) -> RiskModelVersion:
    """Cross-validate, fit on every row, save the artifact and record a `RiskModelVersion`.

    ``inputs``: every patient's model inputs, when the caller has already loaded them
    (`feature_inputs_load`); else they are loaded here.

    Raises `TooFewEvents` when fewer than `MIN_EVENTS` patients (or than ``folds``) have
    an outcome event in the training rows, and `RiskModelFitError` when the data cannot
    give a model for another reason (too few patients for the folds, no usable feature,
    a fold without an event by the horizon for the GBM).
    """
    say = progress or (lambda _message: None)
    if kind not in ("cox", "gbm"):
        raise ValueError(f"kind must be 'cox' or 'gbm', not {kind!r}")
    if inputs is None:
        say("loading patients, labs, events and measurements")
        inputs = feature_inputs_load()
    say(f"building features at landmarks ({policy.describe()})")
    training = training_table_build(inputs=inputs, policy=policy, endpoint=endpoint, today=today)
    _events_enough_check(training, endpoint=endpoint, needed=max(MIN_EVENTS, folds))
    fit = _cross_validate_and_fit(
        training.table,
        kind=kind,
        penalizer=penalizer,
        folds=folds,
        seed=seed,
        horizon_days=horizon_days,
        say=say,
    )
    relative = f"{kind}-{training.fingerprint[:12]}-{uuid.uuid4().hex[:12]}.joblib"
    path = risk_model_save(fit.model, models_dir() / relative)
    try:
        with transaction.atomic():
            return RiskModelVersion.objects.create(
                name=name or f"{kind}-{endpoint}-{timezone.now():%Y%m%d-%H%M%S}",
                kind=kind,
                artifact_path=relative,
                features=list(FEATURES),
                training_fingerprint=training.fingerprint,
                n_training_rows=len(training.table),
                parameters=json_safe(
                    _version_parameters(
                        fit, training, policy=policy, endpoint=endpoint, folds=folds, seed=seed
                    )
                ),
                metrics=json_safe(_version_metrics(fit, training)),
                tier_thresholds=json_safe(fit.model.tiers.as_dict() if fit.model.tiers else {}),
                library_versions=library_versions(),
            )
    except Exception:
        path.unlink(missing_ok=True)
        raise


def _events_enough_check(training: TrainingTable, *, endpoint: str, needed: int) -> None:
    """`TooFewEvents` when fewer than ``needed`` patients of ``training`` have an outcome
    event. Patients, not rows: under the ``studies`` policy one progression ends every
    landmark row before it, and those rows carry one patient's information."""
    events = training.n_event_patients
    if events >= needed:
        return
    raise TooFewEvents(
        f"only {events} outcome event{'s' if events != 1 else ''}, one per patient "
        f"({'progression or death' if endpoint == 'pfs' else 'death'} after a landmark; "
        f"{training.n_events} of {len(training.table)} landmark rows of "
        f"{training.n_patients} patients end in one); "
        f"at least {needed} are needed to fit and cross-validate a model",
        events=events,
        needed=needed,
    )


@dataclass(frozen=True)
class _FittedModel:
    """The cross-validation of a model kind on the training rows, and the final model."""

    cv: CrossValidationResult
    model: RiskModel
    horizon_days: float


def _cross_validate_and_fit(
    table: pd.DataFrame,
    *,
    kind: Literal["cox", "gbm"],
    penalizer: float,
    folds: int,
    seed: int,
    horizon_days: float,
    say: Progress,
) -> _FittedModel:
    """Cross-validate by patient, then fit on every row; `RiskModelFitError` if either fails."""
    features = list(FEATURES)
    fit_options: dict[str, Any] = {"penalizer": penalizer} if kind == "cox" else {}
    try:
        say(f"cross-validating {kind} over {folds} folds by patient")
        cv = cross_validate(
            kind=kind,
            df=table,
            features=features,
            n_splits=folds,
            random_state=seed,
            horizon_days=horizon_days,
            **fit_options,
        )
        say(f"fitting the final {kind} model on {len(table)} rows")
        model = risk_model_fit(
            kind=kind,
            df=table,
            features=features,
            horizon_days=horizon_days,
            random_state=seed,
            **fit_options,
        )
    except ValueError as exc:
        raise RiskModelFitError(str(exc)) from exc
    # Kept in the artifact, so that scoring can hold new values inside what it was fitted on.
    model.parameters["feature_ranges"] = feature_ranges(table, model.imputer.inputs)
    return _FittedModel(cv=cv, model=model, horizon_days=horizon_days)


def _version_metrics(fit: _FittedModel, training: TrainingTable) -> dict[str, Any]:
    """`RiskModelVersion.metrics`: cross-validated metrics, calibration and row counts."""
    return {
        **fit.cv.metrics,
        "n_rows": len(training.table),
        "n_patients": training.n_patients,
        "n_events": training.n_events,
        "n_event_patients": training.n_event_patients,
        "eval_times_days": list(EVAL_TIMES_DAYS),
        "horizon_days": fit.horizon_days,
        "calibration": fit.cv.calibration.to_dict("records"),
        "folds": fit.cv.fold_metrics.to_dict("records"),
    }


def _version_parameters(
    fit: _FittedModel,
    training: TrainingTable,
    *,
    policy: LandmarkPolicy,
    endpoint: str,
    folds: int,
    seed: int,
) -> dict[str, Any]:
    """`RiskModelVersion.parameters`: how the rows were chosen and the model was fitted."""
    excluded_reasons: dict[str, int] = {}
    for reason in training.excluded.values():
        excluded_reasons[reason] = excluded_reasons.get(reason, 0) + 1
    return {
        "endpoint": endpoint,
        "landmark_policy": asdict(policy),
        "landmarks": policy.describe(),
        "folds": folds,
        "seed": seed,
        "horizon_days": fit.horizon_days,
        "model": fit.model.parameters,
        "design_columns": fit.model.imputer.feature_names_out,
        "dropped_features": fit.model.imputer.dropped,
        "landmarks_excluded": excluded_reasons,
    }


# --------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------
def risk_scores_compute(
    *,
    model_version: RiskModelVersion,
    landmark_date: dt.date | None = None,
    today: dt.date | None = None,
    patient_ids: list[str] | None = None,
    inputs: FeatureInputs | None = None,
) -> int:
    """Score every patient at their current landmark (`current_landmarks`); return how many.

    ``patient_ids`` (MRNs) limits the scoring to those patients (None: everyone);
    ``inputs`` are their model inputs when the caller has loaded them already
    (`feature_inputs_load`, as ``fit_risk_model`` does).

    One `RiskScore` per patient with the score, its tier (thresholds from the training
    rows) and the explanation (`_score_rows`). It is keyed by (patient, model version,
    landmark date), so recomputing replaces the row of the same key instead of adding one.

    In the same transaction, the scores the new ones supersede go
    (`scores_superseded_delete`): every score of this version of a patient left out
    (dead, nothing to score from), who must not be ranked by a stale risk; and, scoring
    at the current landmark (no ``landmark_date``), the scores at later landmarks, which
    rest on data withdrawn since. The latest score is then the one just computed.
    """
    model = risk_model_load(model_version.artifact_file)
    if inputs is not None and patient_ids is not None:
        raise ValueError("give the patients to score as inputs or as patient_ids, not both")
    if inputs is None:
        inputs = feature_inputs_load(patient_ids=patient_ids)
    landmarks, skipped = current_landmarks(inputs, landmark_date=landmark_date, today=today)
    mrns = inputs.patients["patient_id"].astype(str).tolist()
    pks = _patient_pks(mrns if patient_ids is not None else None)
    current: dict[int, dt.date | None] = {pks[pid]: None for pid in skipped if pid in pks}
    if landmark_date is None:
        current.update(
            (pks[pid], landmark)
            for pid, landmark in zip(
                landmarks["patient_id"], landmarks["landmark_date"], strict=True
            )
        )
    rows = [] if landmarks.empty else _score_rows(model, model_version, inputs, landmarks, pks)
    with transaction.atomic():
        scores_superseded_delete(model_version, current)
        # Also rewrites these patients' `LatestRiskScore` (the worklist's order), inside
        # this transaction: see `RiskScoreQuerySet`.
        RiskScore.objects.bulk_create(
            rows,
            batch_size=500,
            update_conflicts=True,
            unique_fields=["patient", "model_version", "landmark_date"],
            update_fields=["score", "tier", "explanation", "computed_at"],
        )
    return len(rows)


def _score_rows(
    model: RiskModel,
    model_version: RiskModelVersion,
    inputs: FeatureInputs,
    landmarks: pd.DataFrame,
    pks: Mapping[str, int],
) -> list[RiskScore]:
    """The (unsaved) `RiskScore` of each landmark row: the score, its tier and the
    explanation, every feature's push on the score, largest first, the raw values held
    inside the training range (`features_clip`), and notes (e.g. that the patient had
    already progressed, while the PFS model was fitted on patients who had not)."""
    raw = feature_table_build(landmarks=landmarks, blocks=inputs.blocks())
    features, moved = features_clip(raw, model.parameters.get("feature_ranges", {}))
    scores = model.score(features)
    tiers = model.tier(scores)
    explanations = model.explain(features)
    missing = features_missing(features, model.imputer.inputs)
    progressed = _first_progressions(inputs, model_version)
    imaged = dates_by_patient(inputs.measurements, "study_date")
    now = timezone.now()
    return [
        RiskScore(
            patient_id=pks[pid],
            model_version=model_version,
            score=float(score),
            tier=tier,
            explanation=json_safe(
                {
                    **explanation.as_dict(),
                    "landmark_date": landmark,
                    "model_kind": model.kind,
                    "outside_training_range": outside,
                    "notes": score_notes(
                        pid,
                        landmark,
                        progressed,
                        outside,
                        gaps,
                        imaging_from=latest_on_or_before(imaged.get(pid, ()), landmark),
                    ),  # fmt: skip
                }
            ),
            landmark_date=landmark,
            computed_at=now,
        )
        for pid, landmark, score, tier, explanation, outside, gaps in zip(
            features["patient_id"],
            features["landmark_date"],
            scores,
            tiers,
            explanations,
            moved,
            missing,
            strict=True,
        )
    ]
