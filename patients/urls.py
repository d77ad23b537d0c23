"""Patient pages. Patients are addressed by primary key, so no MRN reaches access logs."""

from django.urls import path

from patients import views

app_name = "patients"
urlpatterns = [
    path("", views.patient_list_view, name="list"),
    path("<int:pk>/", views.patient_detail_view, name="detail"),
    path("ehr/upload/", views.ehr_upload_view, name="ehr-upload"),
]
