"""REST representations of lesions, lesion measurements and response assessments (read-only)."""

from __future__ import annotations

from rest_framework import serializers

from analytics.models import ResponseAssessment
from imaging.models import Lesion, LesionMeasurement


class ResponseAssessmentSerializer(serializers.ModelSerializer):
    patient = serializers.IntegerField(source="patient_id", read_only=True)
    study_instance_uid = serializers.CharField(source="study.study_instance_uid", read_only=True)
    study_date = serializers.DateField(source="study.study_date", read_only=True)
    recist_response = serializers.CharField(read_only=True, help_text="CR, PR, SD, PD or NE")

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
    volume_ml = serializers.FloatField(
        source="effective_volume_ml", read_only=True, help_text="in force (override wins), ml"
    )
    longest_diameter_mm = serializers.FloatField(
        source="effective_longest_diameter_mm", read_only=True, help_text="in force, mm"
    )
    short_axis_mm = serializers.FloatField(
        source="effective_short_axis_mm", read_only=True, help_text="in force, mm"
    )
    automated_volume_ml = serializers.FloatField(source="volume_ml", read_only=True)
    automated_longest_diameter_mm = serializers.FloatField(
        source="longest_diameter_mm", read_only=True
    )
    automated_short_axis_mm = serializers.FloatField(source="short_axis_mm", read_only=True)

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
        ]
        read_only_fields = fields
