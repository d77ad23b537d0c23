"""The model registry's rows: model versions, their validation reports and audit events,
the locked validation set's site studies, training examples from reviews, and drift.

A `SegmentationModel` is one version of one model (any format) with its files and their
SHA-256; exactly one is ``active`` per task (a database constraint). `Segmentation`
rows name the version that made them (``model_name``, ``model_version``,
``model_sha256``), which is `SegmentationModel.name`, ``.version`` and ``.sha256``.
"""

from __future__ import annotations

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models

from imaging.models import ProcessingRun, Segmentation, Series, Study

TASK_LESIONS = "lesions"


class SegmentationModel(models.Model):
    """One version of a segmentation model, whatever its format, and where it stands."""

    class Format(models.TextChoices):
        RADTRACK = "radtrack", "RadTrack weights"
        NNUNETV2 = "nnunetv2", "nnU-Net v2 trained model folder"
        MONAI_BUNDLE = "monai-bundle", "MONAI bundle"
        ONNX = "onnx", "ONNX"

    class Status(models.TextChoices):
        CANDIDATE = "candidate", "Candidate"
        ACTIVE = "active", "Active"
        RETIRED = "retired", "Retired"

    task = models.CharField(max_length=32, default=TASK_LESIONS)
    name = models.CharField(
        max_length=64,
        validators=[RegexValidator(r"^[a-z0-9_.]+$", "lower-case letters, digits, _ and . only")],
        help_text="no hyphen: a segmentation records name-version",
    )
    version = models.CharField(
        max_length=32,
        validators=[RegexValidator(r"^[A-Za-z0-9_.+-]+$", "letters, digits and _ . + - only")],
    )
    format = models.CharField(max_length=16, choices=Format.choices)
    path = models.CharField(
        max_length=512,
        help_text="where its files are, relative to RADTRACK_DATA_DIR (the shipped weights "
        "are copied there too)",
    )
    files = models.JSONField(default=list, help_text="[{path, sha256, bytes}]")
    sha256 = models.CharField(max_length=64, help_text="over the files' paths and SHA-256")
    labels = models.JSONField(help_text='output channel -> label, e.g. {"0": "background"}')
    conventions = models.JSONField(help_text="input conventions (spacing, HU, axes, output)")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.CANDIDATE)
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children",
        help_text="the version this one was fine-tuned from",
    )  # fmt: skip
    training = models.JSONField(
        default=dict, blank=True, help_text="how it was made: data, examples, settings"
    )
    reference_statistics = models.JSONField(
        default=dict, blank=True, help_text="input/output statistics of its training and "
        "validation studies: what drift is measured against",
    )  # fmt: skip
    notes = models.TextField(blank=True)
    registered_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    registered_by_name = models.CharField(max_length=150, blank=True)
    registered_at = models.DateTimeField(auto_now_add=True)
    promoted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    promoted_by_name = models.CharField(max_length=150, blank=True)
    promoted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-registered_at"]
        constraints = [
            models.UniqueConstraint(fields=["name", "version"], name="one_model_per_name_version"),
            models.UniqueConstraint(
                fields=["task"],
                condition=models.Q(status="active"),
                name="one_active_model_per_task",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.label} ({self.format}, {self.status})"

    @property
    def label(self) -> str:
        """``name-version``: what every segmentation it makes records."""
        return f"{self.name}-{self.version}"


class ValidationReport(models.Model):
    """A model version judged on the locked validation set, beside the active model."""

    model = models.ForeignKey(SegmentationModel, on_delete=models.CASCADE, related_name="reports")
    set_name = models.CharField(max_length=64)
    set_checksum = models.CharField(max_length=64, help_text="SHA-256 of the generated studies")
    set_spec = models.JSONField(default=dict)
    site_studies = models.JSONField(
        default=list, help_text="reviewed studies of the site in the set: uid, digest"
    )
    metrics = models.JSONField(help_text="sensitivity, FP, Dice, errors, calibration, time")
    per_study = models.JSONField(default=list)
    compared_with = models.ForeignKey(
        SegmentationModel, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    comparison = models.JSONField(default=dict, blank=True, help_text="regressions and margins")
    passed = models.BooleanField(
        default=False, help_text="no regression beyond the margins against compared_with"
    )
    html_path = models.CharField(max_length=512, blank=True, help_text="the HTML export")
    created_by_name = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    seconds = models.FloatField(default=0.0)

    class Meta:
        ordering = ["-created_at"]
        get_latest_by = "created_at"

    def __str__(self) -> str:
        return f"validation of {self.model.label} on {self.set_name} ({self.created_at:%Y-%m-%d})"

    @property
    def failures(self) -> list[str]:
        """Why it does not pass: what it could not judge (``comparison.refusals``: no study,
        no lesion, a study the version was trained on), then each regression's text."""
        comparison = self.comparison or {}
        return [*comparison.get("refusals", []),
                *(r["text"] for r in comparison.get("regressions", []))]  # fmt: skip


class ModelEvent(models.Model):
    """One change to the registry (register, validate, promote, rollback, retire), audited."""

    class Action(models.TextChoices):
        REGISTER = "register", "Registered"
        VALIDATE = "validate", "Validated"
        PROMOTE = "promote", "Promoted"
        ROLLBACK = "rollback", "Rolled back"
        RETIRE = "retire", "Retired"
        REFUSE = "refuse", "Promotion refused"
        SET_ADD = "set_add", "Study added to the validation set"
        SET_REMOVE = "set_remove", "Study removed from the validation set"

    model = models.ForeignKey(SegmentationModel, on_delete=models.CASCADE, related_name="events")
    action = models.CharField(max_length=16, choices=Action.choices)
    previous_active = models.ForeignKey(
        SegmentationModel, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    report = models.ForeignKey(
        ValidationReport, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    username = models.CharField(max_length=150, blank=True)
    reason = models.TextField(blank=True)
    detail = models.JSONField(default=dict, blank=True)
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-at", "-pk"]

    def __str__(self) -> str:
        return f"{self.action} {self.model.label} by {self.username or self.user_id}"


class ValidationSetStudy(models.Model):
    """A reviewed study of the site in the locked validation set: never trained on.

    A study removed from the set keeps its row (``removed_at``): it was judged on, so it
    stays out of training, and the removal is on record beside the addition.
    """

    study = models.OneToOneField(Study, on_delete=models.CASCADE, related_name="validation_entry")
    added_by_name = models.CharField(max_length=150, blank=True)
    reason = models.TextField(blank=True)
    added_at = models.DateTimeField(auto_now_add=True)
    removed_at = models.DateTimeField(
        null=True, blank=True, help_text="when it left the set (still never trained on)"
    )
    removed_by_name = models.CharField(max_length=150, blank=True)
    removal_reason = models.TextField(blank=True)

    class Meta:
        ordering = ["added_at"]

    def __str__(self) -> str:
        return f"study {self.study_id} in the validation set"


class TrainingExample(models.Model):
    """A reviewed study as a training example, with where its labels came from.

    ``corrections`` lists each reviewed candidate: ``{kind: accepted|rejected|edited|added,
    component_label, organ, mask_path (for drawn masks), reviewed_by, reviewed_at}``;
    ``status`` says whether it may be trained on and ``reason`` why not.
    """

    class Status(models.TextChoices):
        INCLUDED = "included", "Included"
        EXCLUDED = "excluded", "Excluded"

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="training_examples")
    segmentation = models.ForeignKey(Segmentation, on_delete=models.CASCADE, related_name="+")
    status = models.CharField(max_length=16, choices=Status.choices)
    reason = models.TextField(blank=True)
    corrections = models.JSONField(default=list)
    provenance = models.JSONField(default=dict, help_text="model, run, reviewers, review events")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["study_id"]
        constraints = [
            models.UniqueConstraint(fields=["segmentation"], name="one_example_per_segmentation")
        ]

    def __str__(self) -> str:
        return f"training example from study {self.study_id} ({self.status})"


class StudyStatistics(models.Model):
    """What a processed study looked like to the model (inputs) and what it made of it."""

    run = models.OneToOneField(ProcessingRun, on_delete=models.CASCADE, related_name="statistics")
    series = models.ForeignKey(Series, on_delete=models.CASCADE, related_name="+")
    model_label = models.CharField(max_length=100)
    scanner = models.CharField(max_length=128, blank=True)
    kernel = models.CharField(max_length=64, blank=True)
    protocol = models.CharField(
        max_length=255, help_text="scanner | kernel | slice band: the group"
    )
    slice_thickness_mm = models.FloatField(null=True, blank=True)
    pixel_spacing_mm = models.FloatField(null=True, blank=True)
    inputs = models.JSONField(help_text="HU percentiles of body, lungs, liver; noise; texture")
    outputs = models.JSONField(help_text="lesions, mean confidence, equivocal share")
    drift_tests = models.JSONField(
        default=list, blank=True, help_text="each drift test after this study: run, or why not"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "pk"]
        indexes = [models.Index(fields=["protocol", "created_at"])]

    def __str__(self) -> str:
        return f"statistics of run {self.run_id} ({self.protocol})"


class DriftAlert(models.Model):
    """A new scanner/protocol, or a shift of a statistic, found by the drift checks; or a
    protocol they could not test against the model's reference at all (no reference, or
    one too small), closed by the checks themselves once they can."""

    class Kind(models.TextChoices):
        NEW_PROTOCOL = "new_protocol", "New scanner or protocol"
        SHIFT = "shift", "Shift in the studies"
        NOT_TESTED = "not_tested", "Drift not tested"

    kind = models.CharField(max_length=16, choices=Kind.choices)
    protocol = models.CharField(max_length=255)
    statistic = models.CharField(max_length=64, blank=True)
    model_label = models.CharField(max_length=100)
    message = models.TextField()
    detail = models.JSONField(default=dict)
    opened_at = models.DateTimeField(auto_now_add=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by_name = models.CharField(max_length=150, blank=True)

    class Meta:
        ordering = ["-opened_at"]

    def __str__(self) -> str:
        return f"{self.kind} {self.protocol} {self.statistic}".strip()
