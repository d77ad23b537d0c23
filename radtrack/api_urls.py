"""Every REST route under /api/v1/, in one place.

Plain API views are listed in ``urlpatterns``; viewsets are registered on ``router``.
Route names start with ``api-`` so they never clash with page names. Primary keys in
paths are at most 18 digits (`imaging.api.ID_PATTERN`), so every one fits the database.
"""

from django.urls import path, re_path
from rest_framework.routers import SimpleRouter

from analytics import api as analytics_api
from imaging import api as imaging_api
from patients import api as patients_api

router = SimpleRouter()
router.register("patients", patients_api.PatientViewSet, basename="api-patient")
router.register("labs", patients_api.LabResultViewSet, basename="api-lab")
router.register("studies", imaging_api.StudyViewSet, basename="api-study")
router.register("series", imaging_api.SeriesViewSet, basename="api-series")
router.register("lesions", imaging_api.LesionViewSet, basename="api-lesion")
router.register("measurements", imaging_api.LesionMeasurementViewSet, basename="api-measurement")
router.register("responses", analytics_api.ResponseAssessmentViewSet, basename="api-response")
router.register("risk-scores", analytics_api.RiskScoreViewSet, basename="api-risk-score")

_ID = imaging_api.ID_PATTERN

urlpatterns = [
    path("instances/", imaging_api.InstancesView.as_view(), name="api-instances"),
    path(
        "ingest-sessions/",
        imaging_api.IngestSessionListView.as_view(),
        name="api-ingest-session-list",
    ),
    re_path(
        rf"^ingest-sessions/(?P<pk>{_ID})/$",
        imaging_api.IngestSessionView.as_view(),
        name="api-ingest-session",
    ),
    re_path(
        rf"^ingest-sessions/(?P<pk>{_ID})/close/$",
        imaging_api.IngestSessionCloseView.as_view(),
        name="api-ingest-session-close",
    ),
    path("ehr/", patients_api.EHRImportView.as_view(), name="api-ehr-import"),
    path("pacs/retrieve/", imaging_api.PacsRetrieveView.as_view(), name="api-pacs-retrieve"),
    path("worklist/", analytics_api.WorklistView.as_view(), name="api-worklist"),
    *router.urls,
]
