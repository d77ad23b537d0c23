"""Patients, their laboratory results, clinical events and medications, and the audit trail."""

from django.conf import settings
from django.db import models, router, transaction

from patients.signals import lab_results_announce


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


class PatientIdentifier(models.Model):
    """An identifier of a patient other than RadTrack's MRN: another hospital's MRN, a
    national or insurance number, as (system, value) from an EHR's Patient resource.

    Kept so that a record naming the patient by it is matched, and so that RadTrack's
    FHIR Patient carries it. A (system, value) pair names one patient only.
    """

    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="identifiers")
    system = models.CharField(max_length=255, help_text="the identifier's namespace (URI)")
    value = models.CharField(max_length=128)
    type_code = models.CharField(
        max_length=16, blank=True, help_text="HL7 v2-0203 identifier type (NI, SS, MR...)"
    )
    source = models.CharField(max_length=255, blank=True, help_text="the import it came from")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["patient", "system", "value"]
        constraints = [
            models.UniqueConstraint(fields=["system", "value"], name="unique_patient_identifier")
        ]

    def __str__(self) -> str:
        return f"identifier in {self.system} of patient {self.patient_id}"


class LabResultQuerySet(models.QuerySet):
    """Bulk writes that announce the patients whose results changed
    (`patients.signals.lab_results_changed`), inside the writing transaction, so that what
    derives from the results above this layer (the worklist's marker flags) is kept in
    step. Single rows do the same in `LabResult.save` and `LabResult.delete`."""

    def _announce(self, patient_pks) -> None:
        lab_results_announce(patient_pks=patient_pks, using=self.db)

    def _patients_of(self, pks: list) -> set:
        """The patients of the rows ``pks``, as stored now (500 at a time: under
        SQLite's limit on bound parameters)."""
        stored = self.model._base_manager.using(self.db)
        return {
            patient
            for i in range(0, len(pks), 500)
            for patient in stored.filter(pk__in=pks[i : i + 500]).values_list(
                "patient_id", flat=True
            )
        }

    def bulk_create(self, objs, *args, **kwargs):
        objs = list(objs)
        with transaction.atomic(using=self.db, savepoint=False):
            created = super().bulk_create(objs, *args, **kwargs)
            self._announce(o.patient_id for o in objs)
        return created

    def bulk_update(self, objs, fields, *args, **kwargs):
        objs = list(objs)
        with transaction.atomic(using=self.db, savepoint=False):
            before = self._patients_of(sorted(o.pk for o in objs))
            updated = super().bulk_update(objs, fields, *args, **kwargs)
            self._announce(before | {o.patient_id for o in objs})
        return updated

    def update(self, **kwargs):
        with transaction.atomic(using=self.db, savepoint=False):
            pks = sorted(self.values_list("pk", flat=True))
            before = self._patients_of(pks)
            updated = super().update(**kwargs)
            moved = not {"patient", "patient_id"}.isdisjoint(kwargs)
            self._announce(before | self._patients_of(pks) if moved else before)
        return updated

    update.alters_data = True

    def delete(self):
        with transaction.atomic(using=self.db, savepoint=False):
            before = set(self.values_list("patient_id", flat=True))
            deleted = super().delete()
            self._announce(before)
        return deleted

    delete.alters_data = True
    delete.queryset_only = True


class LabResult(models.Model):
    """One laboratory observation, in the canonical unit for its LOINC code.

    A censored result ("<0.5 ng/mL": below the assay's limit) keeps its ``comparator``
    beside the value; such a value is a bound, never the exact result. Every write
    through the model or its QuerySet announces the patients it changed
    (`LabResultQuerySet`); raw SQL must call `patients.signals.lab_results_announce`.
    """

    class Comparator(models.TextChoices):
        # FHIR R4 QuantityComparator, the bound a censored result gives.
        NONE = "", "exact"
        LT = "<", "less than"
        LE = "<=", "less than or equal to"
        GE = ">=", "greater than or equal to"
        GT = ">", "greater than"

    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="lab_results")
    loinc_code = models.CharField(max_length=16)
    comparator = models.CharField(
        max_length=2,
        choices=Comparator.choices,
        blank=True,
        default="",
        help_text="empty for an exact value; else the value is a bound (censored result)",
    )
    value = models.FloatField()
    unit = models.CharField(max_length=32, help_text="UCUM unit")
    observed_at = models.DateTimeField()
    source = models.CharField(max_length=255, blank=True)
    identifiers = models.JSONField(
        default=list,
        blank=True,
        help_text="the identifiers the result came with: [{system, value}], the sender's "
        "Observation.identifier and its fullUrl",
    )
    source_last_updated = models.DateTimeField(
        null=True,
        blank=True,
        help_text="when the source last updated the version stored (FHIR meta.lastUpdated); "
        "empty when it did not say. An import never applies an older version over it",
    )

    objects = LabResultQuerySet.as_manager()

    class Meta:
        ordering = ["patient", "loinc_code", "observed_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["patient", "loinc_code", "observed_at"], name="unique_lab_observation"
            )
        ]

    def __str__(self) -> str:
        return f"{self.loinc_code} {self.value_label} at {self.observed_at:%Y-%m-%d}"

    def save(self, *args, **kwargs) -> None:
        using = kwargs.get("using") or router.db_for_write(type(self), instance=self)
        with transaction.atomic(using=using, savepoint=False):
            super().save(*args, **kwargs)
            loaded = getattr(self, "_loaded_patient_id", None)
            lab_results_announce(patient_pks={self.patient_id, loaded}, using=using)
            self._loaded_patient_id = self.patient_id

    def delete(self, *args, **kwargs):
        using = kwargs.get("using") or router.db_for_write(type(self), instance=self)
        with transaction.atomic(using=using, savepoint=False):
            deleted = super().delete(*args, **kwargs)
            lab_results_announce(patient_pks={self.patient_id}, using=using)
        return deleted

    @classmethod
    def from_db(cls, db, field_names, values):
        instance = super().from_db(db, field_names, values)
        instance._loaded_patient_id = instance.__dict__.get("patient_id")
        return instance

    @property
    def value_label(self) -> str:
        """The value as a person reads it: ``< 0.5 ng/mL`` for a censored one."""
        number = f"{self.value:g}"
        prefix = f"{self.comparator} " if self.comparator else ""
        return f"{prefix}{number} {self.unit}".strip()


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


class PatientMedication(models.Model):
    """A medication a patient was taking, was given or had ordered, from the EHR import
    (`patients.ehr.medications`): a FHIR MedicationStatement, MedicationAdministration or
    MedicationRequest, or a ``medications.csv`` row.

    ``codes`` keeps every coding as received (ATC, RxNorm, SNOMED CT...);
    ``checkpoint_inhibitor`` names the immune checkpoint inhibitor it is ("" if none;
    `patients.ehr.checkpoint_inhibitors`), which switches iRECIST on for the patient.
    ``record_key`` (SHA-256 of the kind and the sender's identifier, else its fullUrl or
    id, else the content) makes importing the same record again update it, not add one.
    """

    class Kind(models.TextChoices):
        STATEMENT = "statement", "taken (MedicationStatement)"
        ADMINISTRATION = "administration", "given (MedicationAdministration)"
        REQUEST = "request", "ordered (MedicationRequest)"

    #: What the start date means, per kind, in a sentence.
    START_VERB = {"statement": "started", "administration": "given", "request": "ordered"}

    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="medications")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    status = models.CharField(max_length=32, help_text="the FHIR status as sent")
    name = models.CharField(max_length=255, help_text="the text or display it came with")
    codes = models.JSONField(
        default=list, blank=True, help_text="[{system, code, display}] as received"
    )
    checkpoint_inhibitor = models.CharField(
        max_length=64, blank=True, help_text="the immune checkpoint inhibitor it is, if one"
    )
    started_on = models.DateField(
        null=True, blank=True, help_text="taken from, given or ordered on"
    )
    ended_on = models.DateField(null=True, blank=True)
    source = models.CharField(max_length=255, blank=True, help_text="the import it came from")
    identifiers = models.JSONField(
        default=list,
        blank=True,
        help_text="the sender's identifiers of the record: [{system, value}], its fullUrl "
        "or resource id",
    )
    record_key = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["patient", "started_on", "pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["patient", "record_key"], name="unique_patient_medication"
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.kind}) of patient {self.patient_id}"

    @property
    def summary(self) -> str:
        """``pembrolizumab started 2024-03-01`` (the checkpoint inhibitor's name if one)."""
        what = self.checkpoint_inhibitor or self.name
        if self.started_on is None:
            return f"{what} {self.START_VERB.get(self.kind, 'recorded')} (no date given)"
        return f"{what} {self.START_VERB.get(self.kind, 'recorded')} {self.started_on:%Y-%m-%d}"


class UnmatchedEHRRecord(models.Model):
    """An EHR record (FHIR resource or CSV row) that matches no patient, kept apart.

    Its patient identifier is unknown, or is in a system that is not RadTrack's MRN
    system and belongs to no patient; ``reason`` says which.

    Nothing is created for such a record; it waits here, as received, until the
    patient exists and it is imported again. ``fingerprint`` (SHA-256 of the record
    type, MRN and payload) makes re-importing the same file add nothing.
    """

    source = models.CharField(max_length=255, help_text="file or upload it came from")
    record_type = models.CharField(max_length=32, help_text="FHIR resource type or CSV layout")
    patient_identifier = models.CharField("MRN as given", max_length=64, blank=True)
    identifier_system = models.CharField(
        max_length=255, blank=True, help_text="the system of the identifier given, if any"
    )
    payload = models.JSONField(help_text="the resource or row as received")
    reason = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "unmatched EHR record"

    def __str__(self) -> str:
        return f"{self.record_type} for an unknown patient from {self.source}"


class ResultMessage(models.Model):
    """One HL7 v2 ORU^R01 result message RadTrack sent to the EHR, and what the EHR answered.

    One row per message sent (a resend after a rejection is a new row with a new control
    id). ``content_sha256`` fingerprints what the message said (not when it was made),
    so unchanged results are not sent again. ``error`` names the failure for a person
    and carries no patient data.
    """

    class Status(models.TextChoices):
        ACCEPTED = "accepted", "Accepted (AA)"
        REJECTED = "rejected", "Rejected (AE/AR)"
        FAILED = "failed", "Not delivered"

    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="result_messages")
    study_instance_uid = models.CharField(max_length=64, db_index=True)
    #: The order the message answered (OBR-3/18) and the study's date (OBR-7), kept so
    #: that a withdrawal of a study RadTrack no longer has still names the order.
    accession_number = models.CharField(max_length=64, blank=True, help_text="OBR-3, OBR-18")
    study_date = models.DateField(null=True, blank=True, help_text="OBR-7")
    control_id = models.CharField(max_length=20, unique=True, help_text="MSH-10")
    content_sha256 = models.CharField(max_length=64)
    result_status = models.CharField(
        max_length=1, help_text="OBR-25: F final, P preliminary, C correction of a final result"
    )
    destination = models.CharField(max_length=255, help_text="host:port")
    status = models.CharField(max_length=16, choices=Status.choices)
    ack_code = models.CharField(max_length=2, blank=True, help_text="MSA-1 of the last answer")
    attempts = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"ORU^R01 {self.control_id} of patient {self.patient_id}: {self.status}"
