"""Risk model versions and the scores they gave patients."""

from pathlib import Path

from django.conf import settings
from django.db import models
from django.utils import timezone


def models_dir() -> Path:
    """Where fitted model artifacts live: ``DATA_DIR / "models"``."""
    return Path(settings.DATA_DIR) / "models"


class RiskModelVersion(models.Model):
    """One fitted risk model: what it was fitted on, with what, and how well it did.

    Everything needed to trace a score back: the artifact (a `analytics.core.survival.
    RiskModel` written by ``risk_model_save``), the features in order, a SHA-256 of the
    training table, cross-validated metrics, tier thresholds and library versions.
    """

    class Kind(models.TextChoices):
        COX = "cox", "Cox proportional hazards (penalised)"
        GBM = "gbm", "Gradient boosting, risk at a horizon"

    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=8, choices=Kind.choices)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    artifact_path = models.CharField(
        max_length=500, help_text="model file, relative to DATA_DIR/models"
    )
    features = models.JSONField(default=list, help_text="feature columns, in order")
    training_fingerprint = models.CharField(
        max_length=64, help_text="SHA-256 of the training table (features and outcomes)"
    )
    n_training_rows = models.PositiveIntegerField(default=0)
    parameters = models.JSONField(
        default=dict, help_text="endpoint, landmark, horizon, penalty and other settings"
    )
    metrics = models.JSONField(
        default=dict,
        help_text="cross-validated C-index, time-dependent AUC, integrated Brier score, "
        "calibration by decile",
    )
    tier_thresholds = models.JSONField(
        default=dict, help_text="score cut-points from the training data (low_below, high_from)"
    )
    library_versions = models.JSONField(default=dict)

    class Meta:
        ordering = ["-created_at"]
        get_latest_by = "created_at"

    def __str__(self) -> str:
        return f"{self.name} ({self.kind}, {self.created_at:%Y-%m-%d})"

    @property
    def artifact_file(self) -> Path:
        return models_dir() / self.artifact_path


class RiskScore(models.Model):
    """A patient's risk from one model version at one landmark date, with its explanation."""

    class Tier(models.TextChoices):
        LOW = "low", "Low"
        INTERMEDIATE = "intermediate", "Intermediate"
        HIGH = "high", "High"

    patient = models.ForeignKey(
        "patients.Patient", on_delete=models.CASCADE, related_name="risk_scores"
    )
    model_version = models.ForeignKey(
        RiskModelVersion, on_delete=models.CASCADE, related_name="scores"
    )
    score = models.FloatField(help_text="higher is higher risk; scale depends on the model kind")
    tier = models.CharField(max_length=16, choices=Tier.choices)
    explanation = models.JSONField(
        default=dict, help_text="features pushing this patient's risk up or down, and by how much"
    )
    landmark_date = models.DateField(help_text="no data after this date was used")
    computed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-score"]
        constraints = [
            models.UniqueConstraint(
                fields=["patient", "model_version", "landmark_date"], name="unique_risk_score"
            )
        ]
        indexes = [models.Index(fields=["model_version", "-score"], name="riskscore_worklist")]

    def __str__(self) -> str:
        return f"{self.patient} {self.tier} ({self.score:.3g})"


class ResponseAssessment(models.Model):
    """RECIST 1.1 and volumetric response of one study against the patient's baseline.

    Recomputed whenever a measurement it depends on changes (review, reprocessing);
    ``inputs`` lists the measurement rows and values it was computed from.
    """

    patient = models.ForeignKey(
        "patients.Patient", on_delete=models.CASCADE, related_name="response_assessments"
    )
    study = models.OneToOneField(
        "imaging.Study", on_delete=models.CASCADE, related_name="response_assessment"
    )
    is_baseline = models.BooleanField(default=False)
    sum_diameters_mm = models.FloatField(null=True, blank=True)
    total_volume_ml = models.FloatField(null=True, blank=True)
    pct_change_baseline = models.FloatField(null=True, blank=True)
    pct_change_nadir = models.FloatField(null=True, blank=True)
    recist_response = models.CharField(max_length=8, blank=True, help_text="CR, PR, SD, PD or NE")
    volumetric_response = models.CharField(max_length=8, blank=True)
    new_lesions = models.BooleanField(default=False)
    notes = models.JSONField(default=list, blank=True)
    inputs = models.JSONField(default=dict, blank=True)
    computed_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["patient", "study__study_date"]

    def __str__(self) -> str:
        return f"{self.recist_response or 'baseline'} at study {self.study_id}"
