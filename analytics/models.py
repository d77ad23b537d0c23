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
    ``inputs`` lists the measurement rows and values it was computed from. A study
    whose response cannot be assessed has a row too: ``recist_response`` NE and the
    reason in ``response_note``. A category that changes on a recomputation (a later
    study confirmed an equivocal new lesion, a review) keeps its history in
    ``revisions``.
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
    recist_response = models.CharField(
        max_length=20, blank=True, help_text="CR, PR, SD, PD, NE or non-CR/non-PD"
    )
    volumetric_response = models.CharField(max_length=20, blank=True)
    irecist_response = models.CharField(
        max_length=20,
        blank=True,
        help_text="iCR, iPR, iSD, iUPD, iCPD, NE or non-iCR/non-iUPD; blank unless iRECIST "
        "applies to the patient",
    )
    new_lesions = models.BooleanField(
        default=False, help_text="a confirmed new lesion (absent at baseline) is present"
    )
    pending_new_lesions = models.PositiveSmallIntegerField(
        default=0, help_text="equivocal new lesions that count only once confirmed"
    )
    possible_non_target_progression = models.BooleanField(
        default=False, help_text="the volume yardstick suggests it: a radiologist decides"
    )
    progression_dated_from = models.DateField(
        null=True, blank=True, help_text="PD from a new lesion: the date it was first seen"
    )
    needs_attention = models.BooleanField(
        default=False,
        db_index=True,
        help_text="not evaluable, provisional, pending or possible progression: see the note",
    )
    response_note = models.TextField(
        blank=True, help_text="what the category rests on and why it is not evaluable"
    )
    revisions = models.JSONField(
        default=list, blank=True, help_text="[{at, field, from, to, reason}] oldest first"
    )
    notes = models.JSONField(default=list, blank=True)
    inputs = models.JSONField(default=dict, blank=True)
    computed_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["patient", "study__study_date"]

    def __str__(self) -> str:
        return f"{self.recist_response or 'baseline'} at study {self.study_id}"


class BestOverallResponse(models.Model):
    """A patient's best overall response over all follow-ups (RECIST 1.1 section 4.4.3,
    confirmation per section 4.6; iRECIST's iBOR when iRECIST applies), recomputed with
    the responses. ``settings`` records the confirmation interval and minimum duration
    of stable disease it used."""

    patient = models.OneToOneField(
        "patients.Patient", on_delete=models.CASCADE, related_name="best_overall_response"
    )
    recist = models.CharField(max_length=20, blank=True)
    recist_date = models.DateField(null=True, blank=True)
    recist_note = models.TextField(blank=True)
    irecist = models.CharField(max_length=20, blank=True)
    irecist_date = models.DateField(null=True, blank=True)
    irecist_note = models.TextField(blank=True)
    settings = models.JSONField(default=dict, blank=True)
    computed_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"best overall response {self.recist or 'none'} of patient {self.patient_id}"


class ResponseSettings(models.Model):
    """How a patient's responses are assessed beyond RECIST 1.1: iRECIST (Seymour et al.
    2017) for a patient on immunotherapy, set by a clinician with a reason."""

    patient = models.OneToOneField(
        "patients.Patient", on_delete=models.CASCADE, related_name="response_settings"
    )
    irecist = models.BooleanField(default=False)
    reason = models.TextField(blank=True)
    set_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    set_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "response settings"

    def __str__(self) -> str:
        return f"patient {self.patient_id}: iRECIST {'on' if self.irecist else 'off'}"


class StudyResponseReview(models.Model):
    """A radiologist's verdict on one study's non-target disease: unequivocal
    progression or not (RECIST 1.1 section 4.3.4 leaves it to judgement)."""

    study = models.OneToOneField(
        "imaging.Study", on_delete=models.CASCADE, related_name="response_review"
    )
    non_target_progression = models.BooleanField()
    reason = models.TextField()
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        verdict = "progression" if self.non_target_progression else "no progression"
        return f"non-target {verdict} at study {self.study_id}"


class WorklistFlags(models.Model):
    """A patient's worklist flags and latest response, computed ahead of the worklist.

    The worklist filters and orders every patient on these before it cuts a page, so
    they are stored, one row per patient, instead of being worked out per patient on
    every request (`analytics.dashboard.flags`, which states each flag's rule). Like
    `LatestRiskScore`, a row is rewritten in the transaction that changed what it rests
    on: the responses and measurements (`analytics.lesions.responses.responses_written`,
    sent by every tracking rebuild and review), the lab results (`patients.signals.
    lab_results_changed`, sent by every write through `LabResult`) and the studies and
    series (`imaging.signals.patient_imaging_changed`, sent by every write through
    `Study` and `Series` that adds a study, dates it or changes a series' state). Only
    `analytics.dashboard.flags.worklist_flags_refresh` writes here.
    """

    patient = models.OneToOneField(
        "patients.Patient",
        on_delete=models.CASCADE,
        primary_key=True,
        related_name="worklist_flags",
    )
    last_recist = models.CharField(
        max_length=20, blank=True, help_text="RECIST 1.1 category of the latest dated assessment"
    )
    last_assessment_date = models.DateField(null=True, blank=True)
    new_progression = models.BooleanField(default=False, help_text="the latest category is PD")
    new_lesion = models.BooleanField(
        default=False, help_text="the latest assessment found a lesion absent at baseline"
    )
    rising_marker = models.BooleanField(default=False)
    rising_markers = models.JSONField(
        default=list, blank=True, help_text="the markers moving the wrong way, as shown"
    )
    awaiting_review = models.BooleanField(default=False)
    needs_attention = models.BooleanField(default=False)
    processing_failed = models.BooleanField(
        default=False, help_text="a series of the patient is in state failed"
    )
    last_study_date = models.DateField(null=True, blank=True, help_text="the latest dated study")
    computed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "worklist flags"
        # Each flag filters the whole list: a small index over the patients raising it.
        indexes = [
            models.Index(fields=["patient"], condition=models.Q(**{name: True}), name=f"wl_{tag}")
            for name, tag in (
                ("new_progression", "progression"),
                ("new_lesion", "new_lesion"),
                ("rising_marker", "marker"),
                ("awaiting_review", "review"),
                ("needs_attention", "attention"),
                ("processing_failed", "failed"),
            )
        ]

    def __str__(self) -> str:
        return f"worklist flags of patient {self.patient_id}"
