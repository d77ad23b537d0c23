"""Patient pages under /patients/ (the ``patients`` URL namespace).

The list and the patient page are served from the dashboard, the top layer (the page
draws imaging and analytics results); the EHR upload is the patients app's own page.
Patients are addressed by primary key, so no MRN reaches access logs.
"""

from django.urls import path

from analytics.dashboard import views as dashboard_views
from patients import views

app_name = "patients"
urlpatterns = [
    path("", dashboard_views.patient_list_view, name="list"),
    path("<int:pk>/", dashboard_views.patient_detail_view, name="detail"),
    path("ehr/upload/", views.ehr_upload_view, name="ehr-upload"),
]
