"""Routes of the research download (included from radtrack.urls under /research/)."""

from django.urls import path

from analytics.research import views

app_name = "research"
urlpatterns = [path("", views.research_view, name="download")]
