"""Processing runs and what they made: registrations to the baseline and segmentations."""

from django.conf import settings
from django.db import models

from imaging.models.studies import Series


class ProcessingRun(models.Model):
    """One run of the pipeline over a series: every step, its parameters, versions, timing."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    series = models.ForeignKey(Series, on_delete=models.CASCADE, related_name="processing_runs")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    device = models.CharField(max_length=16, blank=True)
    steps = models.JSONField(
        default=list, blank=True, help_text="[{name, parameters, versions, seconds, status}]"
    )
    versions = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    volume_path = models.CharField(max_length=255, blank=True)
    volume_geometry = models.JSONField(null=True, blank=True)
    flags = models.JSONField(
        default=list,
        blank=True,
        help_text="findings a radiologist should review, e.g. a corrected flip",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Who is on the run, so a repeat delivery of its task (a worker lost, a retry) takes
    # the same record over instead of starting a second one (imaging.pipeline.record).
    attempts = models.PositiveIntegerField(
        default=0, help_text="times the run was started: a retry or a redelivery adds one"
    )
    task_id = models.CharField(max_length=64, blank=True, help_text="Celery task of the attempt")
    worker = models.CharField(max_length=255, blank=True, help_text="host:pid of the attempt")
    heartbeat_at = models.DateTimeField(
        null=True, blank=True, help_text="when the attempt last recorded a step"
    )

    class Meta:
        ordering = ["-created_at"]
        get_latest_by = "created_at"

    def __str__(self) -> str:
        return f"run {self.pk} of series {self.series_id}: {self.status}"


class Registration(models.Model):
    """A follow-up series aligned to its patient's baseline series, and how well.

    ``matrix_fixed_to_moving`` maps a point in the baseline (fixed) series' LPS mm to
    the follow-up (moving) series' LPS mm; its inverse takes follow-up findings into the
    baseline frame, where lesions are matched.
    """

    moving_series = models.ForeignKey(
        Series, on_delete=models.CASCADE, related_name="registrations"
    )
    fixed_series = models.ForeignKey(Series, on_delete=models.CASCADE, related_name="+")
    processing_run = models.ForeignKey(
        ProcessingRun,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="registrations",
    )
    backend = models.CharField(max_length=32)
    device = models.CharField(max_length=16, blank=True)
    matrix_fixed_to_moving = models.JSONField(help_text="4x4, LPS mm to LPS mm")
    transform_path = models.CharField(
        max_length=255, blank=True, help_text="relative to RADTRACK_DATA_DIR"
    )
    quality = models.JSONField(default=dict, blank=True)
    failed = models.BooleanField(default=False)
    failure_reason = models.TextField(blank=True)
    seconds = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        get_latest_by = "created_at"

    def __str__(self) -> str:
        state = "failed" if self.failed else "ok"
        return f"registration of series {self.moving_series_id} to {self.fixed_series_id} ({state})"


class Segmentation(models.Model):
    """The lesion and organ masks a model made of one series, with the model that made them."""

    series = models.ForeignKey(Series, on_delete=models.CASCADE, related_name="segmentations")
    processing_run = models.ForeignKey(
        ProcessingRun,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="segmentations",
    )
    mask_path = models.CharField(
        max_length=255, help_text="label map (NIfTI), relative to RADTRACK_DATA_DIR"
    )
    probability_path = models.CharField(max_length=255, blank=True)
    model_name = models.CharField(max_length=64)
    model_version = models.CharField(max_length=32)
    model_sha256 = models.CharField(max_length=64, blank=True)
    steps = models.JSONField(
        default=list, blank=True, help_text="post-processing steps and parameters"
    )
    lesions = models.JSONField(
        default=list,
        blank=True,
        help_text="lesion candidates found: component_label, organ, volume_ml, "
        "longest_diameter_mm, short_axis_mm, max_3d_diameter_mm, centroid_lps_mm, mean_hu, "
        "sd_hu, sphericity, confidence, uncertainty (study's own LPS, mm)",
    )
    # A radiologist's correction is a new version of the series' segmentation: the
    # model's output and every earlier version stay, each with its own mask file.
    parent = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="corrections",
        help_text="the version this one corrects (a lesion added, a mask edited); "
        "none for a model's own output",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="the radiologist who made this version; none for a model's",
    )
    correction = models.JSONField(
        default=dict,
        blank=True,
        help_text="what this version changed from its parent: action (add, propagate, "
        "mask_edit), component_label, method and parameters, reason",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        get_latest_by = "created_at"

    def __str__(self) -> str:
        return f"segmentation of series {self.series_id} by {self.model_name} {self.model_version}"
