"""URL routes: the dashboard (worklist at /) and pages behind login, the REST API under
/api/v1/ and its schema, FHIR under /fhir/.

Each app's routes are included by name, so this module imports no app: the layers
stay one-way (docs/ARCHITECTURE.md).
"""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from radtrack.health import health_view

urlpatterns = [
    path("", include("analytics.dashboard.urls")),  # the worklist is the home page
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("patients/", include("analytics.dashboard.patient_urls")),
    path("imaging/", include("imaging.ingest.urls")),
    path("imaging/", include("analytics.lesions.urls")),
    path("models/", include("imaging.modelhub.urls")),
    path("api/v1/", include("radtrack.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    # The split view serves its script from a URL: the Content-Security-Policy allows no
    # inline script.
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="api-docs"),
    path("fhir/", include("analytics.fhir.urls")),
    path("audit/", include("analytics.audit.urls")),
    path("research/", include("analytics.research.urls")),
    path("healthz/", health_view, name="health"),
]
