"""The model registry's pages, under /models/."""

from django.urls import path

from imaging.modelhub import views

app_name = "modelhub"
urlpatterns = [
    path("", views.registry_view, name="registry"),
    path("<int:pk>/", views.model_view, name="model"),
    path("<int:pk>/promote/", views.promote_view, name="promote"),
    path("rollback/", views.rollback_view, name="rollback"),
    path("reports/<int:pk>/export/", views.report_export_view, name="report-export"),
    path("drift/", views.drift_view, name="drift"),
    path("drift/alerts/<int:pk>/acknowledge/", views.acknowledge_view, name="acknowledge"),
]
