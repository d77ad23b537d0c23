"""DICOM studies, series and instances as stored, and the ingest sessions that brought them."""

from django.conf import settings
from django.db import models
from django.db.models import F
from django.db.models.expressions import OrderBy

from imaging.models.announce import AnnouncedRow, AnnouncingQuerySet, chunks
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


class StudyQuerySet(AnnouncingQuerySet):
    """Studies; writes that add or remove one, or change its date or patient, announce
    it (`imaging.models.announce`)."""

    def chronological(self) -> "StudyQuerySet":
        """Oldest first, as `study_order` says."""
        return self.order_by(*study_order())


class Study(AnnouncedRow, models.Model):
    """A DICOM study, keyed by Study Instance UID (0020,000D)."""

    # The worklist's latest study per patient follows these (analytics.dashboard.flags).
    announced_fields = ("study_date", "patient_id")
    # A study moved to another date or patient, or removed: lesions are tracked again.
    moves_results = True

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

    @classmethod
    def patients_of_values(cls, values, *, using: str) -> set[int]:
        return {v["patient_id"] for v in values}

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


class Series(AnnouncedRow, models.Model):
    """A DICOM series, keyed by Series Instance UID (0020,000E)."""

    # The worklist's "processing failed" flag follows these (analytics.dashboard.flags).
    announced_fields = ("state", "study_id")

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

    objects = AnnouncingQuerySet.as_manager()

    class Meta:
        ordering = ["study", "series_number", "series_instance_uid"]
        verbose_name_plural = "series"

    def __str__(self) -> str:
        return f"{self.modality} {self.series_number or ''} {self.description}".strip()

    @classmethod
    def patients_of_values(cls, values, *, using: str) -> set[int]:
        studies = Study._base_manager.using(using)
        return {
            pk
            for part in chunks(v["study_id"] for v in values)
            for pk in studies.filter(pk__in=part).values_list("patient_id", flat=True)
        }

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
        REPAIR = "repair", "Storage repair"

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
    owner = models.CharField(
        max_length=128,
        blank=True,
        help_text="host:pid:start of the process working on it; empty between requests",
    )
    heartbeat_at = models.DateTimeField(
        null=True, blank=True, help_text="when it last made progress (a batch indexed)"
    )
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
