"""REST representations of the worklist: its query parameters and its rows (read-only)."""

from __future__ import annotations

from rest_framework import serializers

from analytics.dashboard.worklist import FLAG_NAMES, WorklistOrder
from analytics.models import RiskScore


class WorklistQuerySerializer(serializers.Serializer):
    """The worklist's query parameters."""

    tier = serializers.ChoiceField(
        choices=RiskScore.Tier.choices, required=False, help_text="only patients in this tier"
    )
    search = serializers.CharField(
        required=False, allow_blank=True, max_length=100, help_text="words in the MRN or name"
    )
    flags = serializers.MultipleChoiceField(
        choices=[(f, f) for f in FLAG_NAMES],
        required=False,
        help_text="only patients with every one of these flags raised (repeat the parameter)",
    )
    order = serializers.ChoiceField(
        choices=[(o.value, o.value) for o in WorklistOrder],
        default=WorklistOrder.RISK.value,
        help_text="risk (tier, then score), patient (MRN) or last_study (newest first)",
    )


class MarkerChangeSerializer(serializers.Serializer):
    key = serializers.CharField(help_text="cea, ldh, crp, albumin or hemoglobin")
    previous = serializers.FloatField()
    latest = serializers.FloatField()
    unit = serializers.CharField(help_text="UCUM unit")
    previous_at = serializers.DateTimeField()
    latest_at = serializers.DateTimeField()
    previous_comparator = serializers.CharField(
        help_text='"" for an exact value; <, <=, >= or > when the result was censored '
        "(the value is then that bound)"
    )
    latest_comparator = serializers.CharField(
        help_text='"" for an exact value; <, <=, >= or > when the result was censored'
    )


class WorklistRowSerializer(serializers.Serializer):
    patient = serializers.IntegerField(source="pk", help_text="patient id")
    patient_id = serializers.CharField(help_text="MRN")
    display_name = serializers.CharField()
    model_version = serializers.IntegerField(source="model_version_id", allow_null=True)
    risk_score = serializers.IntegerField(source="risk_score_id", allow_null=True)
    score = serializers.FloatField(allow_null=True)
    tier = serializers.CharField(allow_null=True)
    landmark_date = serializers.DateField(allow_null=True)
    last_recist = serializers.CharField(help_text="RECIST 1.1 category of the latest assessment")
    last_assessment_date = serializers.DateField(allow_null=True)
    last_study_date = serializers.DateField(allow_null=True)
    died_on = serializers.DateField(
        allow_null=True, help_text="date of death (EHR): the patient is not ranked by risk"
    )
    flags = serializers.ListField(child=serializers.CharField())
    rising_markers = MarkerChangeSerializer(many=True)
