"""Admin site for studies, series, instances, imports and processing runs.

Stored instances and import records are read-only here: they change only through the
ingest service, which keeps files and rows consistent.
"""

from django.contrib import admin

from imaging.models import IngestIssue, IngestSession, Instance, ProcessingRun, Series, Study
from patients.admin import AuditedAdminMixin


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Study)
class StudyAdmin(AuditedAdminMixin, admin.ModelAdmin):
    audit_noun = "study"
    list_display = ["study_instance_uid", "patient", "study_date", "description", "created_at"]
    search_fields = ["study_instance_uid", "patient__patient_id", "accession_number"]
    list_select_related = ["patient"]
    date_hierarchy = "study_date"
    raw_id_fields = ["patient", "chosen_series"]

    def _patient_of(self, obj):
        return obj.patient_id


@admin.register(Series)
class SeriesAdmin(AuditedAdminMixin, admin.ModelAdmin):
    audit_noun = "series"
    list_display = [
        "series_instance_uid",
        "study",
        "modality",
        "series_number",
        "description",
        "slice_count",
        "state",
    ]
    list_filter = ["state", "modality"]
    search_fields = ["series_instance_uid", "study__study_instance_uid"]
    list_select_related = ["study"]
    raw_id_fields = ["study"]

    def get_readonly_fields(self, request, obj=None):
        # Only the processing state may be corrected by hand.
        return [f.name for f in self.model._meta.fields if f.name not in ("state", "state_detail")]

    def has_add_permission(self, request):
        return False

    def _patient_of(self, obj):
        return obj.study.patient_id


@admin.register(Instance)
class InstanceAdmin(AuditedAdminMixin, ReadOnlyAdmin):
    audit_noun = "instance"
    list_display = ["sop_instance_uid", "series", "instance_number", "size_bytes", "received_at"]
    search_fields = ["sop_instance_uid", "sha256"]
    list_select_related = ["series__study"]
    raw_id_fields = ["series", "ingest_session"]

    def _patient_of(self, obj):
        return obj.series.study.patient_id


class IngestIssueInline(admin.TabularInline):
    model = IngestIssue
    fields = ["kind", "file_name", "reason", "sop_instance_uid"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(IngestSession)
class IngestSessionAdmin(AuditedAdminMixin, ReadOnlyAdmin):
    audit_noun = "ingest session"
    list_display = [
        "pk",
        "source",
        "origin",
        "user",
        "status",
        "started_at",
        "files_seen",
        "stored",
        "duplicates",
        "conflicts",
        "rejected",
    ]
    list_filter = ["source", "status"]
    list_select_related = ["user"]
    inlines = [IngestIssueInline]

    def _patients_of(self, obj) -> list[int]:
        # A session may bring in several patients' images: each is named.
        return list(
            Instance.objects.filter(ingest_session=obj)
            .values_list("series__study__patient_id", flat=True)
            .distinct()
        )


@admin.register(ProcessingRun)
class ProcessingRunAdmin(AuditedAdminMixin, ReadOnlyAdmin):
    audit_noun = "processing run"
    list_display = ["pk", "series", "status", "device", "created_at", "finished_at"]
    list_filter = ["status", "device"]
    list_select_related = ["series__study"]
    raw_id_fields = ["series"]

    def _patient_of(self, obj):
        return obj.series.study.patient_id
