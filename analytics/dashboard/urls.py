"""Dashboard pages: the worklist (also the site's home page), cohort and pipeline."""

from django.urls import path

from analytics.dashboard import views

app_name = "analytics"
urlpatterns = [
    path("", views.worklist_view, name="worklist"),
    path("cohort/", views.cohort_view, name="cohort"),
    path("pipeline/", views.pipeline_view, name="pipeline"),
]
