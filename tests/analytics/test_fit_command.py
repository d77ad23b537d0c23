"""``manage.py fit_risk_model`` on a generated cohort's EHR data and measurements."""

import io
import re

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from analytics.models import RiskModelVersion, RiskScore
from imaging.core.synthetic.cohort import cohort_simulate
from patients.models import ClinicalEvent
from tests.analytics.test_services import cohort_load

pytestmark = [
    pytest.mark.django_db,
    # Forty patients' exact (noise-free) volumes make some features nearly constant, and
    # lifelines warns about it; convergence is not what these tests are about.
    pytest.mark.filterwarnings("ignore::lifelines.exceptions.ConvergenceWarning"),
]


@pytest.fixture(scope="module")
def cohort():
    return cohort_simulate(n_patients=40, n_timepoints=4, seed=21)


def fit(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("fit_risk_model", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_fit_prints_cross_validated_figures_stores_a_version_and_scores(cohort, tmp_path):
    cohort_load(cohort, tmp_path)
    with CaptureQueriesContext(connection) as queries:
        out, err = fit("--model", "cox", "--folds", "3", "--penalizer", "1.0", "--seed", "2")
    # The patients' data are read once, for fitting and scoring alike.
    lab_reads = [q for q in queries if q["sql"].lstrip().upper().startswith("SELECT")
                 and "patients_labresult" in q["sql"]]  # fmt: skip
    assert len(lab_reads) == 1
    version = RiskModelVersion.objects.get()
    for label, key in [
        ("C-index (Harrell)", "c_index"),
        ("td-AUC at 6 months", "auc_182d"),
        ("td-AUC at 12 months", "auc_365d"),
        ("Integrated Brier", "ibs"),
    ]:
        line = next(line for line in out.splitlines() if label in line)
        assert f"{version.metrics[key]:.3f}" in line
    assert "3 folds by patient" in out
    assert "Calibration at 365 days, by decile" in out
    deciles = [
        line for line in out.splitlines() if re.match(r"^\s+\d+\s+\d+\s+[\d.]+\s+[\d.]+", line)
    ]
    assert len(deciles) == 10
    summary = out.strip().splitlines()[-1]
    assert summary.startswith(f"fit_risk_model: stored cox model version {version.pk}")
    assert version.training_fingerprint[:12] in summary
    n = RiskScore.objects.filter(model_version=version).count()
    assert n > 0 and f"scored {n} patients" in summary
    assert "cross-validating cox over 3 folds" in err
    assert version.parameters["seed"] == 2
    assert version.parameters["model"]["penalizer"] == 1.0


def test_gbm_and_the_baseline_landmark_policy(cohort, tmp_path):
    cohort_load(cohort, tmp_path, imaging=False)
    out, _ = fit("--model", "gbm", "--folds", "3", "--landmarks", "baseline", "--no-score")
    version = RiskModelVersion.objects.get()
    assert version.kind == "gbm"
    assert version.parameters["landmark_policy"] == {"kind": "baseline", "offset_days": 0}
    assert version.n_training_rows == len(cohort.patients)
    assert "scored 0 patients" in out
    assert not RiskScore.objects.exists()


def test_too_few_events_is_a_clear_error(cohort, tmp_path):
    cohort_load(cohort, tmp_path, imaging=False)
    ClinicalEvent.objects.exclude(kind="censor").delete()
    with pytest.raises(CommandError, match=r"cannot fit a cox model: only 0 outcome events"):
        fit("--folds", "3")
    assert not RiskModelVersion.objects.exists()


def test_usage_errors():
    with pytest.raises(CommandError, match="--folds"):
        fit("--folds", "1")
    with pytest.raises(CommandError, match="invalid choice"):
        fit("--model", "forest")
