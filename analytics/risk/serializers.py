"""REST representations of risk scores and the model versions that gave them (read-only)."""

from __future__ import annotations

from rest_framework import serializers

from analytics.models import RiskModelVersion, RiskScore


class RiskModelVersionSerializer(serializers.ModelSerializer):
    class Meta:
        model = RiskModelVersion
        fields = [
            "id",
            "name",
            "kind",
            "created_at",
            "features",
            "training_fingerprint",
            "n_training_rows",
            "metrics",
            "tier_thresholds",
            "library_versions",
        ]
        read_only_fields = fields


class RiskScoreSerializer(serializers.ModelSerializer):
    patient = serializers.IntegerField(source="patient_id", read_only=True)
    model_version = RiskModelVersionSerializer(read_only=True)
    score = serializers.FloatField(
        read_only=True, help_text="higher is higher risk; the scale depends on the model kind"
    )

    class Meta:
        model = RiskScore
        fields = [
            "id",
            "patient",
            "model_version",
            "score",
            "tier",
            "explanation",
            "landmark_date",
            "computed_at",
        ]
        read_only_fields = fields
