"""Admin site for patients and the audit trail (read-only: rows are only ever added).

The identifiers and medications kept from EHR imports and the HL7 result messages sent
are shown read-only: they change only through the import and the sender, which keep them
consistent with what the EHR holds. Every list and view of them is audited like any
patient data. Accounts, groups, API tokens and login lockouts are in
`patients.admin_accounts`.
"""

from django.contrib import admin
from django.db import transaction

from patients import admin_accounts  # noqa: F401  (registers the account admins)
from patients.audit import audit_record
from patients.models import (
    AuditEvent,
    ClinicalEvent,
    LabResult,
    Patient,
    PatientIdentifier,
    PatientMedication,
    ResultMessage,
)


def _pk_of(patient):
    return patient.pk if isinstance(patient, Patient) else patient


class AuditedAdminMixin:
    """Write audit rows when the admin site lists or shows patient data: a list writes
    one row per patient on the page shown (one without a patient if none)."""

    audit_noun = "record"

    def _patient_of(self, obj):
        return None

    def _patients_of(self, obj) -> list[int]:
        """Primary keys of the patients whose data ``obj`` shows (a row may show several)."""
        patient = self._patient_of(obj)
        return [_pk_of(patient)] if patient is not None else []

    def _audit_rows(self, request, *, action: str, object: str, patients) -> None:
        with transaction.atomic():
            for patient in sorted(set(patients)) or [None]:
                audit_record(request=request, action=action, object=object, patient=patient)

    def changelist_view(self, request, extra_context=None):
        response = super().changelist_view(request, extra_context)
        if getattr(response, "status_code", 200) != 200:
            return response
        changelist = (getattr(response, "context_data", None) or {}).get("cl")
        rows = list(changelist.result_list) if changelist is not None else []
        query = request.META.get("QUERY_STRING", "")
        described = (
            f"{self.audit_noun} list{' ?' + query[:180] if query else ''} ({len(rows)} rows)"
        )
        self._audit_rows(
            request,
            action="admin.list",
            object=described,
            patients=[pk for row in rows for pk in self._patients_of(row)],
        )
        return response

    def change_view(self, request, object_id, form_url="", extra_context=None):
        response = super().change_view(request, object_id, form_url, extra_context)
        if request.method == "GET" and getattr(response, "status_code", 200) == 200:
            obj = self.get_object(request, object_id)
            self._audit_rows(
                request,
                action="admin.view",
                object=f"{self.audit_noun} {object_id}",
                patients=self._patients_of(obj) if obj is not None else [],
            )
        return response


@admin.register(Patient)
class PatientAdmin(AuditedAdminMixin, admin.ModelAdmin):
    audit_noun = "patient"
    list_display = ["patient_id", "display_name", "birth_date", "sex", "created_at"]
    search_fields = ["patient_id", "name"]
    list_filter = ["sex"]
    readonly_fields = ["created_at"]

    def _patient_of(self, obj):
        return obj


@admin.register(LabResult)
class LabResultAdmin(AuditedAdminMixin, admin.ModelAdmin):
    audit_noun = "lab result"
    list_display = ["patient", "loinc_code", "value", "unit", "observed_at", "source"]
    list_filter = ["loinc_code"]
    search_fields = ["patient__patient_id", "loinc_code"]
    list_select_related = ["patient"]
    raw_id_fields = ["patient"]

    def _patient_of(self, obj):
        return obj.patient_id


@admin.register(ClinicalEvent)
class ClinicalEventAdmin(AuditedAdminMixin, admin.ModelAdmin):
    audit_noun = "clinical event"
    list_display = ["patient", "kind", "date", "source"]
    list_filter = ["kind"]
    search_fields = ["patient__patient_id"]
    list_select_related = ["patient"]
    raw_id_fields = ["patient"]

    def _patient_of(self, obj):
        return obj.patient_id


class ReadOnlyAdminMixin:
    """Shown, never added, changed or deleted here."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(PatientIdentifier)
class PatientIdentifierAdmin(AuditedAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    audit_noun = "patient identifier"
    list_display = ["patient", "system", "value", "type_code", "source", "created_at"]
    list_filter = ["type_code"]
    search_fields = ["patient__patient_id", "system", "value"]
    list_select_related = ["patient"]

    def _patient_of(self, obj):
        return obj.patient_id


@admin.register(PatientMedication)
class PatientMedicationAdmin(AuditedAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    audit_noun = "medication"
    list_display = [
        "patient", "name", "checkpoint_inhibitor", "kind", "status", "started_on", "source",
    ]  # fmt: skip
    list_filter = ["kind", "status"]
    search_fields = ["patient__patient_id", "name", "checkpoint_inhibitor"]
    list_select_related = ["patient"]

    def _patient_of(self, obj):
        return obj.patient_id


@admin.register(ResultMessage)
class ResultMessageAdmin(AuditedAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    audit_noun = "HL7 result message"
    list_display = [
        "created_at",
        "patient",
        "study_instance_uid",
        "control_id",
        "result_status",
        "status",
        "ack_code",
        "attempts",
        "destination",
    ]
    list_filter = ["status", "result_status", "ack_code"]
    search_fields = ["patient__patient_id", "study_instance_uid", "control_id"]
    list_select_related = ["patient"]
    date_hierarchy = "created_at"

    def _patient_of(self, obj):
        return obj.patient_id


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """The trail, read-only; reading it is itself audited (``audit.read``)."""

    list_display = ["at", "username", "action", "object", "patient", "remote_address"]
    list_filter = ["action"]
    search_fields = ["username", "object", "patient__patient_id", "remote_address"]
    list_select_related = ["patient"]
    date_hierarchy = "at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def changelist_view(self, request, extra_context=None):
        response = super().changelist_view(request, extra_context)
        if getattr(response, "status_code", 200) == 200:
            query = request.META.get("QUERY_STRING", "")
            audit_record(
                request=request,
                action="audit.read",
                object=f"admin audit list{' ?' + query[:200] if query else ''}",
            )
        return response

    def change_view(self, request, object_id, form_url="", extra_context=None):
        response = super().change_view(request, object_id, form_url, extra_context)
        if getattr(response, "status_code", 200) == 200:
            audit_record(request=request, action="audit.read", object=f"audit row {object_id}")
        return response
