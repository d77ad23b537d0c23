"""Every REST route under /api/v1/, in one place.

Plain API views are listed in ``urlpatterns``; viewsets are registered on ``router``.
Route names start with ``api-`` so they never clash with page names.
"""

from django.urls import path
from rest_framework.routers import SimpleRouter

from imaging import api as imaging_api
from patients import api as patients_api

router = SimpleRouter()

urlpatterns = [
    path("instances/", imaging_api.InstancesView.as_view(), name="api-instances"),
    path(
        "ingest-sessions/<int:pk>/",
        imaging_api.IngestSessionView.as_view(),
        name="api-ingest-session",
    ),
    path(
        "ingest-sessions/<int:pk>/close/",
        imaging_api.IngestSessionCloseView.as_view(),
        name="api-ingest-session-close",
    ),
    path("ehr/", patients_api.EHRImportView.as_view(), name="api-ehr-import"),
    *router.urls,
]
