"""DICOM studies as stored, the ingest sessions that brought them, and processing runs."""

from django.conf import settings
from django.db import models
from django.db.models import F
from django.db.models.expressions import OrderBy

from patients.models import Patient

#: Modalities whose series are analysed; other series (SEG, SR, ...) are only stored.
ANALYSED_MODALITIES = {"CT", "MR"}


def study_order(prefix: str = "") -> tuple[OrderBy, OrderBy, OrderBy]:
    """The one chronological order of studies: Study Date (0008,0020), then Study Time
    (0008,0030), then arrival; undated and untimed studies last, on every database.

    ``prefix`` orders other rows by their study (``"study__"`` for a measurement).
    """
    return (
        F(f"{prefix}study_date").asc(nulls_last=True),
        F(f"{prefix}study_time").asc(nulls_last=True),
        F(f"{prefix}pk").asc(),
    )


class StudyQuerySet(models.QuerySet):
    def chronological(self) -> "StudyQuerySet":
        """Oldest first, as `study_order` says."""
        return self.order_by(*study_order())


class Study(models.Model):
    """A DICOM study, keyed by Study Instance UID (0020,000D)."""

    study_instance_uid = models.CharField(max_length=64, unique=True)
    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="studies")
    study_date = models.DateField(null=True, blank=True)
    study_time = models.TimeField(null=True, blank=True)
    accession_number = models.CharField(max_length=64, blank=True)
    description = models.CharField(max_length=255, blank=True)
    chosen_series = models.ForeignKey(
        "Series", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    series_choice = models.JSONField(
        default=dict,
        blank=True,
        help_text="why chosen_series was chosen (rules or a user's override: who, when, why)",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = StudyQuerySet.as_manager()

    class Meta:
        ordering = ["patient", "study_date", "study_time"]
        verbose_name_plural = "studies"

    def __str__(self) -> str:
        return f"{self.study_date or 'undated'} {self.description}".strip()

    @property
    def chronological_key(self) -> tuple:
        """`study_order` in Python, for studies already loaded: sort with this key."""
        return (
            self.study_date is None,
            self.study_date,
            self.study_time is None,
            self.study_time,
            self.pk,
        )


class Series(models.Model):
    """A DICOM series, keyed by Series Instance UID (0020,000E)."""

    class State(models.TextChoices):
        RECEIVING = "receiving", "Receiving"
        STORED = "stored", "Stored, awaiting processing"
        QUEUED = "queued", "Queued for processing"
        PROCESSING = "processing", "Processing"
        PROCESSED = "processed", "Processed"
        FAILED = "failed", "Failed"
        NOT_ANALYSED = "not_analysed", "Stored, not analysed"

    series_instance_uid = models.CharField(max_length=64, unique=True)
    study = models.ForeignKey(Study, on_delete=models.PROTECT, related_name="series")
    modality = models.CharField(max_length=16, blank=True)
    series_number = models.IntegerField(null=True, blank=True)
    description = models.CharField(max_length=255, blank=True)
    manufacturer = models.CharField(max_length=128, blank=True)
    kernel = models.CharField(
        max_length=128, blank=True, help_text="Convolution Kernel (0018,1210)"
    )
    body_part = models.CharField(max_length=64, blank=True)
    rows = models.PositiveIntegerField(null=True, blank=True)
    columns = models.PositiveIntegerField(null=True, blank=True)
    slice_count = models.PositiveIntegerField(default=0)
    pixel_spacing_row_mm = models.FloatField(null=True, blank=True)
    pixel_spacing_column_mm = models.FloatField(null=True, blank=True)
    slice_thickness_mm = models.FloatField(null=True, blank=True)
    image_orientation = models.JSONField(
        null=True, blank=True, help_text="Image Orientation (Patient) (0020,0037), six cosines"
    )
    patient_position = models.CharField(max_length=8, blank=True)
    frame_of_reference_uid = models.CharField(max_length=64, blank=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.RECEIVING)
    state_detail = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["study", "series_number", "series_instance_uid"]
        verbose_name_plural = "series"

    def __str__(self) -> str:
        return f"{self.modality} {self.series_number or ''} {self.description}".strip()

    @property
    def orientation_label(self) -> str:
        """Axial, coronal or sagittal from the slice normal of (0020,0037)."""
        if not self.image_orientation or len(self.image_orientation) != 6:
            return ""
        row, col = self.image_orientation[:3], self.image_orientation[3:]
        normal = (
            row[1] * col[2] - row[2] * col[1],
            row[2] * col[0] - row[0] * col[2],
            row[0] * col[1] - row[1] * col[0],
        )
        axis = max(range(3), key=lambda a: abs(normal[a]))
        return ("sagittal", "coronal", "axial")[axis]


class IngestSession(models.Model):
    """One import: a folder, an upload, an API call or a DICOM association."""

    class Source(models.TextChoices):
        FOLDER = "folder", "Folder import"
        UPLOAD = "upload", "Web upload"
        API = "api", "REST API"
        DIMSE = "dimse", "DICOM C-STORE"
        DICOMWEB = "dicomweb", "DICOMweb"

    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    source = models.CharField(max_length=16, choices=Source.choices)
    origin = models.CharField(
        max_length=255, blank=True, help_text="calling AE title, remote address or path"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RUNNING)
    started_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    files_seen = models.PositiveIntegerField(default=0)
    stored = models.PositiveIntegerField(default=0)
    duplicates = models.PositiveIntegerField(default=0)
    conflicts = models.PositiveIntegerField(default=0)
    rejected = models.PositiveIntegerField(default=0)
    warnings = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return f"{self.get_source_display()} #{self.pk}"


class IngestIssue(models.Model):
    """A file an ingest session refused, or accepted with a warning."""

    class Kind(models.TextChoices):
        REJECTED = "rejected", "Rejected"
        CONFLICT = "conflict", "Conflict"
        WARNING = "warning", "Warning"

    session = models.ForeignKey(IngestSession, on_delete=models.CASCADE, related_name="issues")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    file_name = models.CharField(max_length=1024)
    reason = models.TextField()
    sop_instance_uid = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ["session", "pk"]

    def __str__(self) -> str:
        return f"{self.kind}: {self.file_name}"


class Instance(models.Model):
    """One stored DICOM object, kept byte for byte (preamble zeroed) in the object store."""

    sop_instance_uid = models.CharField(max_length=64, unique=True)
    series = models.ForeignKey(Series, on_delete=models.PROTECT, related_name="instances")
    sop_class_uid = models.CharField(max_length=64)
    transfer_syntax_uid = models.CharField(max_length=64, blank=True)
    instance_number = models.IntegerField(null=True, blank=True)
    image_position = models.JSONField(
        null=True, blank=True, help_text="Image Position (Patient) (0020,0032), LPS mm"
    )
    stored_path = models.CharField(max_length=255, help_text="relative to RADTRACK_DATA_DIR")
    size_bytes = models.PositiveBigIntegerField()
    sha256 = models.CharField(max_length=64, db_index=True, help_text="of the stored file")
    dataset_sha256 = models.CharField(
        max_length=64, default="", help_text="of the data set after the File Meta (group 0002)"
    )
    warnings = models.JSONField(default=list, blank=True)
    ingest_session = models.ForeignKey(
        IngestSession, null=True, blank=True, on_delete=models.SET_NULL, related_name="instances"
    )
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["series", "instance_number", "pk"]

    def __str__(self) -> str:
        return self.sop_instance_uid


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
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        get_latest_by = "created_at"

    def __str__(self) -> str:
        return f"segmentation of series {self.series_id} by {self.model_name} {self.model_version}"


class Lesion(models.Model):
    """One lesion's identity across a patient's studies (DICOM Tracking UID (0062,0021))."""

    class Organ(models.TextChoices):
        LUNG = "lung", "Lung"
        LIVER = "liver", "Liver"
        OTHER = "other", "Other"

    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="lesions")
    tracking_uid = models.CharField(max_length=64, unique=True)
    label = models.CharField(max_length=64, help_text='readable identifier, e.g. "Liver 2"')
    organ = models.CharField(max_length=16, choices=Organ.choices)
    merged_into = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="merged_from"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["patient", "organ", "label"]
        constraints = [
            models.UniqueConstraint(
                fields=["patient", "label"], name="unique_lesion_label_per_patient"
            )
        ]

    def __str__(self) -> str:
        return self.label


class LesionMeasurement(models.Model):
    """A lesion at one study: automated measurements, and a radiologist's review of them.

    Automated values are never overwritten: an override is kept beside them with its
    reason, and ``effective_*`` properties give the value in force.
    """

    class Status(models.TextChoices):
        NEW = "new", "New"
        TRACKED = "tracked", "Tracked"
        RESOLVED = "resolved", "Resolved"

    class Review(models.TextChoices):
        PENDING = "pending", "Awaiting review"
        ACCEPTED = "accepted", "Accepted"
        REJECTED = "rejected", "Rejected (false positive)"
        EDITED = "edited", "Edited"

    lesion = models.ForeignKey(Lesion, on_delete=models.CASCADE, related_name="measurements")
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="lesion_measurements")
    segmentation = models.ForeignKey(
        Segmentation, null=True, blank=True, on_delete=models.SET_NULL, related_name="measurements"
    )
    component_label = models.PositiveIntegerField(
        null=True, blank=True, help_text="value of this lesion in the segmentation's label map"
    )
    status = models.CharField(max_length=16, choices=Status.choices)
    volume_ml = models.FloatField()
    longest_diameter_mm = models.FloatField()
    short_axis_mm = models.FloatField()
    max_3d_diameter_mm = models.FloatField(null=True, blank=True)
    centroid_x_mm = models.FloatField(null=True, blank=True)
    centroid_y_mm = models.FloatField(null=True, blank=True)
    centroid_z_mm = models.FloatField(null=True, blank=True)
    mean_hu = models.FloatField(null=True, blank=True)
    sd_hu = models.FloatField(null=True, blank=True)
    sphericity = models.FloatField(null=True, blank=True)
    confidence = models.FloatField(null=True, blank=True)
    uncertainty = models.FloatField(null=True, blank=True)
    is_target = models.BooleanField(default=False)
    target_by_hand = models.BooleanField(
        default=False, help_text="is_target was chosen by a radiologist, not by the RECIST rules"
    )
    component_labels = models.JSONField(
        default=list,
        blank=True,
        help_text="every label-map value attributed to this lesion at this study (a split "
        "lesion's fragments); component_label is the largest",
    )
    review_state = models.CharField(max_length=16, choices=Review.choices, default=Review.PENDING)
    override_volume_ml = models.FloatField(null=True, blank=True)
    override_longest_diameter_mm = models.FloatField(null=True, blank=True)
    override_short_axis_mm = models.FloatField(null=True, blank=True)
    review_reason = models.TextField(blank=True)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["lesion", "study__study_date"]
        constraints = [
            models.UniqueConstraint(
                fields=["lesion", "study"], name="one_measurement_per_lesion_and_study"
            )
        ]

    def __str__(self) -> str:
        return f"{self.lesion} at study {self.study_id}"

    @property
    def effective_volume_ml(self) -> float:
        return self.override_volume_ml if self.override_volume_ml is not None else self.volume_ml

    @property
    def effective_longest_diameter_mm(self) -> float:
        if self.override_longest_diameter_mm is not None:
            return self.override_longest_diameter_mm
        return self.longest_diameter_mm

    @property
    def effective_short_axis_mm(self) -> float:
        if self.override_short_axis_mm is not None:
            return self.override_short_axis_mm
        return self.short_axis_mm


class ReviewEvent(models.Model):
    """One radiologist action on the lesions (accept, reject, relink, merge, split, target,
    override), with who, when, why and what the values were before."""

    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="review_events")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    action = models.CharField(max_length=32)
    measurement = models.ForeignKey(
        LesionMeasurement,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="review_events",
    )
    reason = models.TextField(blank=True)
    before = models.JSONField(default=dict, blank=True)
    after = models.JSONField(default=dict, blank=True)
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-at"]

    def __str__(self) -> str:
        return f"{self.action} by {self.user_id} at {self.at}"


class LesionLink(models.Model):
    """A radiologist's decision about which lesion one candidate belongs to.

    A candidate is a connected component of a segmentation (``component_label`` in its
    label map). ``anchor_*`` names another candidate: this one belongs to the lesion that
    candidate belongs to (a relink or a merge). Without an anchor the candidate starts a
    lesion of its own (a split). `imaging.services.tracking.patient_track` applies these
    links study by study on every rebuild, so the decision outlives re-tracking.
    """

    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="lesion_links")
    segmentation = models.ForeignKey(Segmentation, on_delete=models.CASCADE, related_name="+")
    component_label = models.PositiveIntegerField()
    anchor_segmentation = models.ForeignKey(
        Segmentation, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    anchor_component_label = models.PositiveIntegerField(null=True, blank=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    reason = models.TextField()
    at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["patient", "at"]
        constraints = [
            models.UniqueConstraint(
                fields=["segmentation", "component_label"], name="one_link_per_lesion_candidate"
            ),
            models.CheckConstraint(
                condition=models.Q(
                    anchor_segmentation__isnull=True, anchor_component_label__isnull=True
                )
                | models.Q(anchor_segmentation__isnull=False, anchor_component_label__isnull=False),
                name="lesion_link_anchor_complete",
            ),
        ]

    def __str__(self) -> str:
        if self.anchor_segmentation_id is None:
            target = "as a lesion of its own"
        else:
            target = (
                f"with candidate {self.anchor_component_label} "
                f"of segmentation {self.anchor_segmentation_id}"
            )
        return f"candidate {self.component_label} of segmentation {self.segmentation_id} {target}"


class PacsTransfer(models.Model):
    """One study moved between RadTrack and the PACS over DICOMweb, and how it went.

    A retrieve (WADO-RS) files what arrives through the ingest service, so repeating one
    is harmless; a failed one is retried by the next scheduled pull. A send (STOW-RS)
    carries RadTrack's SEG and SR for a study. ``error`` names the failure for a person
    (no patient attributes).
    """

    class Direction(models.TextChoices):
        RETRIEVE = "retrieve", "Retrieve (WADO-RS)"
        SEND = "send", "Send (STOW-RS)"

    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    class Trigger(models.TextChoices):
        MANUAL = "manual", "On demand"
        SCHEDULE = "schedule", "Scheduled pull"

    direction = models.CharField(max_length=16, choices=Direction.choices)
    study_instance_uid = models.CharField(max_length=64, db_index=True)
    study = models.ForeignKey(
        Study, null=True, blank=True, on_delete=models.SET_NULL, related_name="pacs_transfers"
    )
    pacs_url = models.CharField(max_length=255)
    trigger = models.CharField(max_length=16, choices=Trigger.choices, default=Trigger.MANUAL)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RUNNING)
    attempts = models.PositiveIntegerField(default=0)
    instances = models.PositiveIntegerField(
        default=0, help_text="instances received (retrieve) or accepted by the PACS (send)"
    )
    ingest_session = models.ForeignKey(
        IngestSession, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    error = models.TextField(blank=True)
    started_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.get_direction_display()} #{self.pk}: {self.status}"


class DicomExportRecord(models.Model):
    """One Measurement Report SR (and its SEG) RadTrack wrote for a study.

    Kept so that the next SR of the study with other values names this one in its
    Predecessor Documents Sequence (0040,A360), and so that exporting unchanged results
    again rebuilds the very same object. ``content_key`` fingerprints the values and
    segments reported (not the predecessor).
    """

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="dicom_exports")
    content_key = models.CharField(max_length=64)
    sr_sop_instance_uid = models.CharField(max_length=64, unique=True)
    sr_series_instance_uid = models.CharField(max_length=64)
    sr_path = models.CharField(max_length=255, help_text="relative to RADTRACK_DATA_DIR")
    seg_sop_instance_uid = models.CharField(max_length=64, blank=True)
    seg_path = models.CharField(max_length=255, blank=True)
    predecessor = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="successors"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        get_latest_by = ["created_at", "pk"]

    def __str__(self) -> str:
        return f"SR {self.sr_sop_instance_uid} of study {self.study_id}"


class FhirPushRecord(models.Model):
    """What RadTrack last pushed of one patient to one FHIR server.

    ``resources`` maps ``Type/id`` to ``{"hash", "status"}`` and, for every type but
    Patient, the ``resource`` as sent: on the next push a resource no longer built is
    sent again marked entered-in-error (so the EHR shows it superseded), and a final one
    whose content changed goes as amended.
    """

    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="fhir_pushes")
    server_url = models.CharField(max_length=255)
    resources = models.JSONField(default=dict, blank=True)
    pushed_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["patient", "server_url"], name="one_fhir_push_record_per_server"
            )
        ]

    def __str__(self) -> str:
        return f"FHIR push of patient {self.patient_id} to {self.server_url}"
