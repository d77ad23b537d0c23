"""Routes of the audit page (included from radtrack.urls under /audit/)."""

from django.urls import path

from analytics.audit import views

app_name = "audit"
urlpatterns = [path("", views.audit_view, name="log")]
