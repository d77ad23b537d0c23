"""Transfers to and from other systems: PACS retrieves and sends, DICOM exports, FHIR pushes."""

from django.db import models
from django.utils import timezone

from imaging.models.studies import IngestSession, Study
from patients.models import Patient


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
    created_at = models.DateTimeField(
        default=timezone.now,
        help_text="when the objects were first built: the content and instance creation "
        "times they carry, kept when a lost file is rebuilt",
    )

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
