"""Patients, their laboratory results and clinical events, and the audit trail."""

from django.conf import settings
from django.db import models


class Patient(models.Model):
    """One person, identified by the DICOM PatientID (0010,0020), which is the MRN."""

    class Sex(models.TextChoices):
        FEMALE = "F", "Female"
        MALE = "M", "Male"
        OTHER = "O", "Other"
        UNKNOWN = "", "Unknown"

    patient_id = models.CharField("MRN", max_length=64, unique=True)
    name = models.CharField(max_length=255, blank=True)
    birth_date = models.DateField(null=True, blank=True)
    sex = models.CharField(max_length=1, choices=Sex.choices, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["patient_id"]

    def __str__(self) -> str:
        return self.patient_id

    @property
    def display_name(self) -> str:
        """DICOM Person Name ``Family^Given`` shown as ``Family, Given``."""
        parts = [p for p in self.name.split("^")[:2] if p]
        return ", ".join(parts) if parts else "(no name)"


class LabResult(models.Model):
    """One laboratory observation, in the canonical unit for its LOINC code."""

    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="lab_results")
    loinc_code = models.CharField(max_length=16)
    value = models.FloatField()
    unit = models.CharField(max_length=32, help_text="UCUM unit")
    observed_at = models.DateTimeField()
    source = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["patient", "loinc_code", "observed_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["patient", "loinc_code", "observed_at"], name="unique_lab_observation"
            )
        ]

    def __str__(self) -> str:
        return f"{self.loinc_code} {self.value} {self.unit} at {self.observed_at:%Y-%m-%d}"


class ClinicalEvent(models.Model):
    """An outcome event used by the risk models: progression, death, or censoring."""

    class Kind(models.TextChoices):
        PROGRESSION = "progression", "Progression"
        DEATH = "death", "Death"
        CENSOR = "censor", "Censored (last follow-up)"

    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    date = models.DateField()
    source = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["patient", "date"]
        constraints = [
            models.UniqueConstraint(
                fields=["patient", "kind", "date"], name="unique_clinical_event"
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind} on {self.date}"


class AuditEvent(models.Model):
    """Who viewed or exported which patient's data, when, and from where.

    Rows are only ever added; nothing in RadTrack updates or deletes them.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    username = models.CharField(max_length=150, blank=True)
    action = models.CharField(max_length=64)
    object = models.CharField(max_length=255, blank=True)
    patient = models.ForeignKey(
        Patient, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    at = models.DateTimeField(auto_now_add=True, db_index=True)
    remote_address = models.GenericIPAddressField(null=True, blank=True)

    class Meta:
        ordering = ["-at"]

    def __str__(self) -> str:
        return f"{self.username} {self.action} {self.object} at {self.at}"


class UnmatchedEHRRecord(models.Model):
    """An EHR record (FHIR resource or CSV row) whose MRN matches no patient, kept apart.

    Nothing is created for such a record; it waits here, as received, until the
    patient exists and it is imported again. ``fingerprint`` (SHA-256 of the record
    type, MRN and payload) makes re-importing the same file add nothing.
    """

    source = models.CharField(max_length=255, help_text="file or upload it came from")
    record_type = models.CharField(max_length=32, help_text="FHIR resource type or CSV layout")
    patient_identifier = models.CharField("MRN as given", max_length=64, blank=True)
    payload = models.JSONField(help_text="the resource or row as received")
    reason = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "unmatched EHR record"

    def __str__(self) -> str:
        return f"{self.record_type} for unknown MRN from {self.source}"
