"""REST representations of patients and their laboratory results (read-only)."""

from __future__ import annotations

from rest_framework import serializers

from patients.models import LabResult, Patient


class PatientSerializer(serializers.ModelSerializer):
    patient_id = serializers.CharField(read_only=True, help_text="MRN (DICOM PatientID 0010,0020)")
    name = serializers.CharField(read_only=True, help_text="DICOM Person Name, Family^Given")
    display_name = serializers.CharField(read_only=True, help_text="the name as Family, Given")

    class Meta:
        model = Patient
        fields = ["id", "patient_id", "name", "display_name", "birth_date", "sex", "created_at"]
        read_only_fields = fields


class LabResultSerializer(serializers.ModelSerializer):
    patient = serializers.IntegerField(source="patient_id", read_only=True, help_text="patient id")
    loinc_code = serializers.CharField(read_only=True, help_text="LOINC code of the test")
    value = serializers.FloatField(read_only=True, help_text="in `unit`, the test's canonical unit")
    unit = serializers.CharField(read_only=True, help_text="UCUM unit")
    comparator = serializers.CharField(
        read_only=True,
        help_text="empty for an exact value; <, <=, >= or > when the value is a bound "
        "(a censored result such as < 0.5 ng/mL)",
    )

    class Meta:
        model = LabResult
        fields = [
            "id", "patient", "loinc_code", "comparator", "value", "unit", "observed_at", "source",
        ]  # fmt: skip
        read_only_fields = fields
