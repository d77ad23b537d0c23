"""REST API for risk scores (``/api/v1/risk-scores/``), each with its model version.

Read-only, behind the same view permissions as the pages; every answer is audited with
one row per patient shown (see `patients.api_base.AuditedReadOnlyViewSet`).
"""

from __future__ import annotations

import django_filters
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework.routers import SimpleRouter

from analytics.models import RiskScore
from analytics.risk.serializers import RiskScoreSerializer
from patients.api_base import AuditedReadOnlyViewSet
from radtrack.api.base import IdFilter

_PATIENT_READ = "patients.view_patient"


class RiskScoreFilter(django_filters.FilterSet):
    patient = IdFilter(field_name="patient_id", help_text="patient id")
    model_version = IdFilter(field_name="model_version_id", help_text="risk model version id")
    tier = django_filters.ChoiceFilter(choices=RiskScore.Tier.choices)

    class Meta:
        model = RiskScore
        fields = ["patient", "model_version", "tier"]


@extend_schema_view(
    list=extend_schema(summary="Risk scores with their model version", tags=["analytics"]),
    retrieve=extend_schema(summary="One risk score and its explanation", tags=["analytics"]),
)
class RiskScoreViewSet(AuditedReadOnlyViewSet):
    serializer_class = RiskScoreSerializer
    filterset_class = RiskScoreFilter
    required_permissions = (_PATIENT_READ, "analytics.view_riskscore")
    audit_noun = "risk_score"
    queryset = RiskScore.objects.select_related("model_version").order_by(
        "patient__patient_id", "-landmark_date", "-computed_at", "pk"
    )


# -- routes (included by radtrack.api.urls) -----------------------------------------
router = SimpleRouter()
router.register("risk-scores", RiskScoreViewSet, basename="api-risk-score")
urlpatterns = router.urls
