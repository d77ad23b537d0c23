"""Lesion pages under /imaging/: the viewer, its image files, and review actions."""

from django.urls import path

from analytics.lesions import views

app_name = "lesions"
urlpatterns = [
    path("patients/<int:pk>/viewer/", views.viewer_view, name="viewer"),
    path("studies/<int:pk>/files/<str:kind>/", views.viewer_file_view, name="viewer-file"),
    path("measurements/<int:pk>/mask/", views.measurement_mask_view, name="measurement-mask"),
    path(
        "measurements/<int:pk>/review/",
        views.measurement_review_view,
        name="measurement-review",
    ),
    path("lesions/<int:pk>/merge/", views.lesion_merge_view, name="lesion-merge"),
    path("lesions/<int:pk>/organ/", views.lesion_organ_view, name="lesion-organ"),
    path("patients/<int:pk>/targets/", views.targets_view, name="targets"),
    path("patients/<int:pk>/lesions/add/", views.lesion_add_view, name="lesion-add"),
    path("patients/<int:pk>/irecist/", views.irecist_view, name="irecist"),
    path(
        "studies/<int:pk>/links/confirm/",
        views.study_links_confirm_view,
        name="study-links-confirm",
    ),
    path("studies/<int:pk>/non-target/", views.non_target_verdict_view, name="non-target-verdict"),
]
