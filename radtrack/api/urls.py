"""Every REST route under /api/v1/: each app's API module lists its own routes.

Included by name, so the project imports no app. Route names start with ``api-`` so
they never clash with page names; primary keys in paths are at most 18 digits
(`radtrack.api.base.ID_PATTERN`), so every one fits the database.
"""

from django.urls import include, path

urlpatterns = [
    path("", include(module))
    for module in (
        "patients.api",
        "imaging.api",
        "imaging.ingest.api",
        "analytics.lesions.api",
        "analytics.risk.api",
        "analytics.dashboard.api",
    )
]
