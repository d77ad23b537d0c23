"""REST representations of lesions, lesion measurements and response assessments (read-only)."""

from __future__ import annotations

from rest_framework import serializers

from analytics.lesions.core.readings import TOO_SMALL_MM
from analytics.lesions.selectors import size_not_assessable
from analytics.models import ResponseAssessment
from imaging.models import Lesion, LesionMeasurement


class ResponseAssessmentSerializer(serializers.ModelSerializer):
    patient = serializers.IntegerField(source="patient_id", read_only=True)
    study_instance_uid = serializers.CharField(source="study.study_instance_uid", read_only=True)
    study_date = serializers.DateField(source="study.study_date", read_only=True)
    recist_response = serializers.CharField(
        read_only=True, help_text="CR, PR, SD, PD, NE or non-CR/non-PD (non-target disease only)"
    )
    response_note = serializers.CharField(
        read_only=True, help_text="what the category rests on; why a study is NE"
    )

    class Meta:
        model = ResponseAssessment
        fields = [
            "id",
            "patient",
            "study",
            "study_instance_uid",
            "study_date",
            "is_baseline",
            "sum_diameters_mm",
            "total_volume_ml",
            "pct_change_baseline",
            "pct_change_nadir",
            "recist_response",
            "volumetric_response",
            "new_lesions",
            "notes",
            "computed_at",
            "response_note",
            "needs_attention",
            "pending_new_lesions",
            "possible_non_target_progression",
            "progression_dated_from",
            "irecist_response",
            "revisions",
        ]
        read_only_fields = fields


class LesionSerializer(serializers.ModelSerializer):
    patient = serializers.IntegerField(source="patient_id", read_only=True)
    tracking_uid = serializers.CharField(read_only=True, help_text="DICOM Tracking UID (0062,0021)")
    label = serializers.CharField(read_only=True, help_text='e.g. "Liver 2"')
    measurement_count = serializers.IntegerField(read_only=True)

    class Meta:
        model = Lesion
        fields = [
            "id",
            "patient",
            "tracking_uid",
            "label",
            "organ",
            "merged_into",
            "measurement_count",
            "created_at",
        ]
        read_only_fields = fields


class LesionMeasurementSerializer(serializers.ModelSerializer):
    patient = serializers.IntegerField(source="lesion.patient_id", read_only=True)
    study_instance_uid = serializers.CharField(source="study.study_instance_uid", read_only=True)
    study_date = serializers.DateField(source="study.study_date", read_only=True)
    lesion_uid = serializers.CharField(source="lesion.tracking_uid", read_only=True)
    lesion_label = serializers.CharField(source="lesion.label", read_only=True)
    organ = serializers.CharField(source="lesion.organ", read_only=True)
    volume_ml = serializers.SerializerMethodField(
        help_text="in force (override wins), ml; null when the lesion was not found, or was "
        "seen but its size is not assessable (finding_state not_assessable: it reaches the "
        "edge of what was imaged, edges_reached)"
    )
    longest_diameter_mm = serializers.SerializerMethodField(
        help_text="in force, mm; null when not found or not assessable; 5 when too small to measure"
    )
    short_axis_mm = serializers.SerializerMethodField(
        help_text="in force, mm; null when not found or not assessable; 5 when too small to measure"
    )
    max_3d_diameter_mm = serializers.SerializerMethodField(
        help_text="mm; null when not measured, or not assessable (only part imaged)"
    )
    sphericity = serializers.SerializerMethodField(
        help_text="null when not measured, or not assessable (only part imaged)"
    )
    mean_hu = serializers.SerializerMethodField(
        help_text="HU; null when not measured, or not assessable (only part imaged)"
    )
    sd_hu = serializers.SerializerMethodField(
        help_text="HU; null when not measured, or not assessable (only part imaged)"
    )
    merged_into_uid = serializers.CharField(
        source="merged_into.tracking_uid", read_only=True, default=None, allow_null=True
    )
    measured_by_hand = serializers.SerializerMethodField()
    automated_volume_ml = serializers.SerializerMethodField(
        help_text="the segmenter's own, ml; null when it measured nothing for this lesion "
        "here (not found, or merged into another) or only part of it (not assessable)"
    )
    automated_longest_diameter_mm = serializers.SerializerMethodField(
        help_text="the segmenter's own, mm; null when not found, merged or not assessable"
    )
    automated_short_axis_mm = serializers.SerializerMethodField(
        help_text="the segmenter's own, mm; null when not found, merged or not assessable"
    )
    automated_volume_core_ml = serializers.SerializerMethodField(
        help_text="when the segmenter measured the lesion with its outer layer (the ground "
        "glass of a part-solid nodule, a cystic lesion's wall), its volume without it, ml; "
        "null otherwise (volumetric response compares a lesion measured with its layer at "
        "some studies only without it)"
    )
    edges_reached = serializers.ListField(
        child=serializers.CharField(),
        read_only=True,
        help_text="the edges of what was imaged the lesion reaches here: scan_start, "
        "scan_end, field_of_view, padding (then its size is not assessable)",
    )

    class Meta:
        model = LesionMeasurement
        fields = [
            "id",
            "patient",
            "lesion",
            "lesion_uid",
            "lesion_label",
            "organ",
            "study",
            "study_instance_uid",
            "study_date",
            "status",
            "volume_ml",
            "longest_diameter_mm",
            "short_axis_mm",
            "automated_volume_ml",
            "automated_longest_diameter_mm",
            "automated_short_axis_mm",
            "automated_volume_core_ml",
            "max_3d_diameter_mm",
            "centroid_x_mm",
            "centroid_y_mm",
            "centroid_z_mm",
            "mean_hu",
            "sd_hu",
            "sphericity",
            "confidence",
            "uncertainty",
            "is_target",
            "review_state",
            "review_reason",
            "reviewed_at",
            "finding_state",
            "state_reason",
            "link_provisional",
            "edges_reached",
            "too_small",
            "merged_into_uid",
            "measured_by_hand",
            "origin",
        ]
        read_only_fields = fields

    def _in_force(self, m: LesionMeasurement, value: float | None) -> float | None:
        """None for a lesion not found, and for one seen whose size is not assessable
        (its numbers are only a lower bound: `size_not_assessable`)."""
        if m.status == LesionMeasurement.Status.NOT_FOUND or size_not_assessable(m):
            return None
        return value

    def get_volume_ml(self, m: LesionMeasurement) -> float | None:
        return None if m.too_small else self._in_force(m, m.effective_volume_ml)

    def get_longest_diameter_mm(self, m: LesionMeasurement) -> float | None:
        return TOO_SMALL_MM if m.too_small else self._in_force(m, m.effective_longest_diameter_mm)

    def get_short_axis_mm(self, m: LesionMeasurement) -> float | None:
        return TOO_SMALL_MM if m.too_small else self._in_force(m, m.effective_short_axis_mm)

    def _automated(self, m: LesionMeasurement, value: float | None) -> float | None:
        """The segmenter's number; a row of a lesion not seen here stores 0 for nothing,
        and one cut by the edge of what was imaged only the imaged part's."""
        if m.status in (LesionMeasurement.Status.NOT_FOUND, LesionMeasurement.Status.MERGED):
            return None
        return self._imaged(m, value)

    def _imaged(self, m: LesionMeasurement, value: float | None) -> float | None:
        """A number computed over the lesion's voxels: None where only part of it was
        imaged (its shape and HU are then the imaged part's, not the lesion's)."""
        return None if size_not_assessable(m) else value

    def get_max_3d_diameter_mm(self, m: LesionMeasurement) -> float | None:
        return self._imaged(m, m.max_3d_diameter_mm)

    def get_sphericity(self, m: LesionMeasurement) -> float | None:
        return self._imaged(m, m.sphericity)

    def get_mean_hu(self, m: LesionMeasurement) -> float | None:
        return self._imaged(m, m.mean_hu)

    def get_sd_hu(self, m: LesionMeasurement) -> float | None:
        return self._imaged(m, m.sd_hu)

    def get_automated_volume_ml(self, m: LesionMeasurement) -> float | None:
        return self._automated(m, m.volume_ml)

    def get_automated_longest_diameter_mm(self, m: LesionMeasurement) -> float | None:
        return self._automated(m, m.longest_diameter_mm)

    def get_automated_short_axis_mm(self, m: LesionMeasurement) -> float | None:
        return self._automated(m, m.short_axis_mm)

    def get_automated_volume_core_ml(self, m: LesionMeasurement) -> float | None:
        return self._automated(m, m.volume_core_ml)

    def get_measured_by_hand(self, m: LesionMeasurement) -> bool:
        return m.manual_finding_id is not None
