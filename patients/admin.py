"""Admin site for patients and the audit trail (read-only: rows are only ever added)."""

from django.contrib import admin

from patients.audit import audit_record
from patients.models import AuditEvent, ClinicalEvent, LabResult, Patient


class AuditedAdminMixin:
    """Write an audit row when the admin site lists or shows patient data."""

    audit_noun = "record"

    def _patient_of(self, obj):
        return None

    def changelist_view(self, request, extra_context=None):
        response = super().changelist_view(request, extra_context)
        if getattr(response, "status_code", 200) == 200:
            audit_record(request=request, action="admin.list", object=self.audit_noun)
        return response

    def change_view(self, request, object_id, form_url="", extra_context=None):
        response = super().change_view(request, object_id, form_url, extra_context)
        if request.method == "GET" and getattr(response, "status_code", 200) == 200:
            obj = self.get_object(request, object_id)
            audit_record(
                request=request,
                action="admin.view",
                object=f"{self.audit_noun} {object_id}",
                patient=self._patient_of(obj) if obj is not None else None,
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


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
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
