"""Imaging pages: upload and import reports; the viewer, its image files, and review."""

from django.urls import path

from imaging import review_views, views

app_name = "imaging"
urlpatterns = [
    path("upload/", views.upload_view, name="upload"),
    path("upload/chunk/", views.upload_chunk_view, name="upload-chunk"),
    path("upload/<int:pk>/finish/", views.upload_finish_view, name="upload-finish"),
    path("sessions/<int:pk>/", views.ingest_session_view, name="ingest-session"),
    path("pacs/retrieve/", views.pacs_retrieve_view, name="pacs-retrieve"),
    path("patients/<int:pk>/viewer/", review_views.viewer_view, name="viewer"),
    path("studies/<int:pk>/files/<str:kind>/", review_views.viewer_file_view, name="viewer-file"),
    path(
        "measurements/<int:pk>/review/",
        review_views.measurement_review_view,
        name="measurement-review",
    ),
    path("lesions/<int:pk>/merge/", review_views.lesion_merge_view, name="lesion-merge"),
    path("patients/<int:pk>/targets/", review_views.targets_view, name="targets"),
]
