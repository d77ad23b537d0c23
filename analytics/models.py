"""Risk model versions and the scores they gave patients."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from django.conf import settings
from django.db import models, router, transaction
from django.utils import timezone


def models_dir() -> Path:
    """Where fitted model artifacts live: ``DATA_DIR / "models"``."""
    return Path(settings.DATA_DIR) / "models"


class RiskModelVersion(models.Model):
    """One fitted risk model: what it was fitted on, with what, and how well it did.

    Everything needed to trace a score back: the artifact (a `analytics.risk.core.survival.
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


# Fields of `RiskScore` that decide whose latest a row is, which row is the latest, and
# what it shows.
_KEY_FIELDS = frozenset({"patient", "patient_id", "model_version", "model_version_id"})
_LATEST_FIELDS = _KEY_FIELDS | {"score", "tier", "landmark_date", "computed_at"}


class RiskScoreQuerySet(models.QuerySet):
    """Bulk writes that keep `LatestRiskScore` in step, in the same transaction.

    ``bulk_create`` (with or without ``update_conflicts``), ``bulk_update``, ``update``
    and ``delete`` refresh the latest row of every (model version, patient) they touch.
    Single rows do the same in `RiskScore.save` and `RiskScore.delete`.
    """

    def bulk_create(self, objs, *args, **kwargs):
        objs = list(objs)
        with transaction.atomic(using=self.db, savepoint=False):
            created = super().bulk_create(objs, *args, **kwargs)
            LatestRiskScore.refresh(
                pairs={(o.model_version_id, o.patient_id) for o in objs}, using=self.db
            )
        return created

    def bulk_update(self, objs, fields, *args, **kwargs):
        objs = list(objs)
        if _LATEST_FIELDS.isdisjoint(fields):
            return super().bulk_update(objs, fields, *args, **kwargs)
        with transaction.atomic(using=self.db, savepoint=False):
            pairs = set(
                self.model._base_manager.using(self.db)
                .filter(pk__in=[o.pk for o in objs])
                .values_list("model_version_id", "patient_id")
            )
            updated = super().bulk_update(objs, fields, *args, **kwargs)
            pairs |= {(o.model_version_id, o.patient_id) for o in objs}
            LatestRiskScore.refresh(pairs=pairs, using=self.db)
        return updated

    def update(self, **kwargs):
        if _LATEST_FIELDS.isdisjoint(kwargs):
            return super().update(**kwargs)
        with transaction.atomic(using=self.db, savepoint=False):
            pairs = set(self.values_list("model_version_id", "patient_id"))
            updated = super().update(**kwargs)
            if _KEY_FIELDS.isdisjoint(kwargs):
                LatestRiskScore.refresh(pairs=pairs, using=self.db)
            else:
                # Rows moved to another patient or version (possibly by an expression):
                # rebuild every version involved, old and new.
                versions = {v for v, _ in pairs}
                moved_to = kwargs.get("model_version", kwargs.get("model_version_id"))
                if moved_to is not None:
                    versions.add(getattr(moved_to, "pk", moved_to))
                LatestRiskScore.refresh(versions=versions, using=self.db)
        return updated

    update.alters_data = True

    def delete(self):
        with transaction.atomic(using=self.db, savepoint=False):
            pairs = set(self.values_list("model_version_id", "patient_id"))
            deleted = super().delete()
            LatestRiskScore.refresh(pairs=pairs, using=self.db)
        return deleted

    delete.alters_data = True
    delete.queryset_only = True


class RiskScore(models.Model):
    """A patient's risk from one model version at one landmark date, with its explanation.

    Every write through the model or its QuerySet keeps `LatestRiskScore` in step; raw
    SQL must call `LatestRiskScore.refresh` itself.
    """

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

    objects = RiskScoreQuerySet.as_manager()

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

    def save(self, *args, **kwargs) -> None:
        using = kwargs.get("using") or router.db_for_write(type(self), instance=self)
        with transaction.atomic(using=using, savepoint=False):
            super().save(*args, **kwargs)
            pairs = {(self.model_version_id, self.patient_id)}
            loaded = getattr(self, "_loaded_key", None)
            if loaded is not None and None not in loaded:
                pairs.add(loaded)
            LatestRiskScore.refresh(pairs=pairs, using=using)
            self._loaded_key = (self.model_version_id, self.patient_id)

    def delete(self, *args, **kwargs):
        using = kwargs.get("using") or router.db_for_write(type(self), instance=self)
        pair = (self.model_version_id, self.patient_id)
        with transaction.atomic(using=using, savepoint=False):
            deleted = super().delete(*args, **kwargs)
            LatestRiskScore.refresh(pairs={pair}, using=using)
        return deleted

    @classmethod
    def from_db(cls, db, field_names, values):
        instance = super().from_db(db, field_names, values)
        loaded = instance.__dict__
        instance._loaded_key = (loaded.get("model_version_id"), loaded.get("patient_id"))
        return instance


#: Worklist order of the tiers: high first; `UNSCORED_RANK` for a patient without a score.
TIER_RANK = {RiskScore.Tier.HIGH: 0, RiskScore.Tier.INTERMEDIATE: 1, RiskScore.Tier.LOW: 2}
UNSCORED_RANK = 3
# The order that makes one score a patient's latest under a model version.
LATEST_ORDER = ("-landmark_date", "-computed_at", "-pk")


class LatestRiskScore(models.Model):
    """A patient's latest `RiskScore` under one model version (by landmark date), copied.

    The worklist orders every patient by tier and score before it cuts a page; reading
    them here is one join on an index, instead of looking up each patient's latest score
    (and its tier) among all their scores. One row per (model version, patient) that
    has a score; the current model version needs no row of its own, so fitting a new
    version changes nothing here until its scores are written. Rows are only written by
    `refresh`, which `RiskScore`'s save, delete and QuerySet writes call in the same
    transaction; deleting the patient, the version or the score cascades here.
    """

    patient = models.ForeignKey(
        "patients.Patient", on_delete=models.CASCADE, related_name="latest_risk_scores"
    )
    model_version = models.ForeignKey(
        RiskModelVersion, on_delete=models.CASCADE, related_name="latest_scores"
    )
    risk_score = models.OneToOneField(RiskScore, on_delete=models.CASCADE, related_name="+")
    score = models.FloatField()
    tier = models.CharField(max_length=16, choices=RiskScore.Tier.choices)
    tier_rank = models.PositiveSmallIntegerField(help_text="0 high, 1 intermediate, 2 low")
    landmark_date = models.DateField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["model_version", "patient"], name="unique_latest_risk_score"
            )
        ]
        indexes = [
            models.Index(
                fields=["model_version", "tier_rank", "-score"], name="latestriskscore_worklist"
            )
        ]

    def __str__(self) -> str:
        return f"latest of {self.patient_id} under version {self.model_version_id}"

    @classmethod
    def refresh(
        cls,
        *,
        pairs: Iterable[tuple[int, int]] = (),
        versions: Iterable[int] = (),
        using: str | None = None,
    ) -> None:
        """Rewrite the rows of these (model version pk, patient pk) ``pairs``, and of
        every patient under these ``versions``, from `RiskScore`. Call inside the
        transaction that wrote the scores."""
        using = using or router.db_for_write(cls)
        whole = set(versions)
        by_version: dict[int, set[int]] = defaultdict(set)
        for version_id, patient_id in pairs:
            if version_id is not None and patient_id is not None and version_id not in whole:
                by_version[version_id].add(patient_id)
        for version_id in whole:
            cls._refresh_some(version_id, None, using)
        for version_id, patient_ids in by_version.items():
            ordered = sorted(patient_ids)
            for start in range(0, len(ordered), _REFRESH_CHUNK):
                cls._refresh_some(version_id, ordered[start : start + _REFRESH_CHUNK], using)

    @classmethod
    def _refresh_some(cls, version_id: int, patient_ids: list[int] | None, using: str) -> None:
        scores = RiskScore._base_manager.using(using).filter(model_version_id=version_id)
        mine = cls.objects.using(using).filter(model_version_id=version_id)
        if patient_ids is not None:
            scores = scores.filter(patient_id__in=patient_ids)
            mine = mine.filter(patient_id__in=patient_ids)
        latest: dict[int, LatestRiskScore] = {}
        for pk, patient_id, score, tier, landmark in scores.order_by(
            "patient_id", *LATEST_ORDER
        ).values_list("pk", "patient_id", "score", "tier", "landmark_date"):
            if patient_id not in latest:
                latest[patient_id] = cls(
                    patient_id=patient_id,
                    model_version_id=version_id,
                    risk_score_id=pk,
                    score=score,
                    tier=tier,
                    tier_rank=TIER_RANK.get(tier, UNSCORED_RANK),
                    landmark_date=landmark,
                )
        mine.delete()
        cls.objects.using(using).bulk_create(latest.values(), batch_size=500)


# Patients per refresh query: under SQLite's limit on bound parameters.
_REFRESH_CHUNK = 500


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
