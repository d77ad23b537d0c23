"""REST representations of studies, series, lesions and lesion measurements (read-only).

Measurements carry both the automated values and the values in force (a radiologist's
override wins); volumes are in ml, diameters in mm, centroids in LPS mm in the study's
own patient coordinates.
"""

from __future__ import annotations

from rest_framework import serializers

from imaging.models import Lesion, LesionMeasurement, Series, Study


class StudySerializer(serializers.ModelSerializer):
    patient = serializers.IntegerField(source="patient_id", read_only=True, help_text="patient id")
    study_instance_uid = serializers.CharField(read_only=True, help_text="(0020,000D)")
    series_count = serializers.IntegerField(read_only=True)

    class Meta:
        model = Study
        fields = [
            "id",
            "patient",
            "study_instance_uid",
            "study_date",
            "study_time",
            "accession_number",
            "description",
            "chosen_series",
            "series_count",
        ]
        read_only_fields = fields


class SeriesSerializer(serializers.ModelSerializer):
    patient = serializers.IntegerField(source="study.patient_id", read_only=True)
    series_instance_uid = serializers.CharField(read_only=True, help_text="(0020,000E)")
    orientation = serializers.CharField(source="orientation_label", read_only=True)
    instance_count = serializers.IntegerField(read_only=True)

    class Meta:
        model = Series
        fields = [
            "id",
            "patient",
            "study",
            "series_instance_uid",
            "series_number",
            "modality",
            "description",
            "manufacturer",
            "kernel",
            "body_part",
            "rows",
            "columns",
            "slice_count",
            "instance_count",
            "pixel_spacing_row_mm",
            "pixel_spacing_column_mm",
            "slice_thickness_mm",
            "orientation",
            "frame_of_reference_uid",
            "state",
            "state_detail",
            "updated_at",
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
