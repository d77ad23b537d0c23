"""REST representations of studies and series (read-only)."""

from __future__ import annotations

from rest_framework import serializers

from imaging.models import Series, Study


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
