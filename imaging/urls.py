"""Imaging pages: the upload page and its chunk endpoints, and an import's report."""

from django.urls import path

from imaging import views

app_name = "imaging"
urlpatterns = [
    path("upload/", views.upload_view, name="upload"),
    path("upload/chunk/", views.upload_chunk_view, name="upload-chunk"),
    path("upload/<int:pk>/finish/", views.upload_finish_view, name="upload-finish"),
    path("sessions/<int:pk>/", views.ingest_session_view, name="ingest-session"),
]
