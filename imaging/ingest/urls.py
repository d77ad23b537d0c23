"""Ingest pages under /imaging/: upload, import reports and PACS retrieve requests."""

from django.urls import path

from imaging.ingest import views

app_name = "imaging"
urlpatterns = [
    path("upload/", views.upload_view, name="upload"),
    path("upload/chunk/", views.upload_chunk_view, name="upload-chunk"),
    path("upload/<int:pk>/finish/", views.upload_finish_view, name="upload-finish"),
    path("sessions/<int:pk>/", views.ingest_session_view, name="ingest-session"),
    path("pacs/retrieve/", views.pacs_retrieve_view, name="pacs-retrieve"),
]
