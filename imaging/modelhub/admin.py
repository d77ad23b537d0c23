"""Admin pages of the model registry.

Versions, reports and events are read-only here: a version's files, status and reports
change only through the registry's services (register, validate, promote, roll back),
which check the files' SHA-256, the locked set and the margins and audit every step.
The admin's actions call those same services. The site's studies of the locked
validation set can be added (fully reviewed studies only) and removed here, both through
`validation`'s services (recorded; a removed study keeps its row, out of the set and out
of training).
"""

from django.contrib import admin, messages
from django.utils.html import format_html

from imaging.modelhub.models import (
    DriftAlert,
    ModelEvent,
    SegmentationModel,
    StudyStatistics,
    TrainingExample,
    ValidationReport,
    ValidationSetStudy,
)
from imaging.modelhub.services import RegistryError, model_promote, model_retire
from imaging.modelhub.validation import validation_set_add, validation_set_remove


class ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(SegmentationModel)
class SegmentationModelAdmin(ReadOnly):
    list_display = [
        "label",
        "format",
        "status",
        "registered_at",
        "registered_by_name",
        "promoted_at",
    ]
    list_filter = ["status", "format"]
    search_fields = ["name", "version", "sha256"]
    readonly_fields = [f.name for f in SegmentationModel._meta.fields]
    actions = ["promote", "retire"]

    def has_change_permission(self, request, obj=None):
        # Viewing and the actions below need it; every field stays read-only.
        return request.user.has_perm("modelhub.change_segmentationmodel")

    @admin.action(description="Promote to active (needs a passing validation report)")
    def promote(self, request, queryset):
        for model in queryset:
            try:
                model_promote(model=model, user=request.user, reason="admin action")
                self.message_user(request, f"{model.label} is the active model.")
            except RegistryError as exc:
                self.message_user(request, f"{model.label} not promoted: {exc}", messages.ERROR)

    @admin.action(description="Retire (candidates only)")
    def retire(self, request, queryset):
        for model in queryset:
            try:
                model_retire(model=model, user=request.user, reason="admin action")
            except RegistryError as exc:
                self.message_user(request, str(exc), messages.ERROR)


@admin.register(ValidationReport)
class ValidationReportAdmin(ReadOnly):
    list_display = ["model", "set_name", "passed", "compared_with", "created_at", "export"]
    list_select_related = ["model", "compared_with"]
    readonly_fields = ["model", "set_name", "set_checksum", "compared_with", "passed", "comparison",
                       "created_at", "created_by_name", "seconds", "html_path"]  # fmt: skip
    exclude = ["metrics", "per_study", "set_spec", "site_studies"]

    @admin.display(description="HTML")
    def export(self, obj):
        return (
            format_html('<a href="/models/reports/{}/export/">download</a>', obj.pk)
            if obj.html_path
            else "-"
        )


@admin.register(ModelEvent)
class ModelEventAdmin(ReadOnly):
    list_display = ["at", "action", "model", "previous_active", "username", "reason"]
    list_filter = ["action"]
    list_select_related = ["model", "previous_active"]


@admin.register(ValidationSetStudy)
class ValidationSetStudyAdmin(admin.ModelAdmin):
    list_display = ["study", "added_at", "added_by_name", "reason", "removed_at", "removed_by_name"]
    list_filter = [("removed_at", admin.EmptyFieldListFilter)]
    raw_id_fields = ["study"]
    readonly_fields = ["added_by_name", "added_at", "removed_at", "removed_by_name",
                       "removal_reason"]  # fmt: skip

    def has_change_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        try:
            validation_set_add(study=obj.study, user=request.user,
                               username=request.user.get_username(), reason=obj.reason)  # fmt: skip
        except RegistryError as exc:
            self.message_user(request, str(exc), messages.ERROR)

    def delete_model(self, request, obj):
        # "Delete" takes the study out of the set through the service: recorded, and the
        # row kept so that the study stays out of training.
        try:
            validation_set_remove(entry=obj, user=request.user,
                                  username=request.user.get_username(), reason="admin delete")  # fmt: skip
        except RegistryError as exc:
            self.message_user(request, str(exc), messages.ERROR)

    def delete_queryset(self, request, queryset):
        for entry in queryset.filter(removed_at__isnull=True):
            self.delete_model(request, entry)


@admin.register(TrainingExample)
class TrainingExampleAdmin(ReadOnly):
    list_display = ["study", "segmentation", "status", "reason", "updated_at"]
    list_filter = ["status"]
    raw_id_fields = ["study", "segmentation"]


@admin.register(StudyStatistics)
class StudyStatisticsAdmin(ReadOnly):
    list_display = ["run", "protocol", "model_label", "created_at"]
    list_filter = ["protocol"]


@admin.register(DriftAlert)
class DriftAlertAdmin(ReadOnly):
    list_display = ["opened_at", "kind", "protocol", "statistic", "model_label", "acknowledged_at"]
    list_filter = ["kind", "acknowledged_at"]
