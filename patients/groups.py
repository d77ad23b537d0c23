"""RadTrack's user groups and what each may do, kept in step with the database.

`groups_sync` runs after every ``migrate`` (and after a test database is flushed), so
the groups and their permissions exist whatever state the database was left in: a
permission added here reaches an existing database on its next ``migrate`` (even one
with no migration to apply), with no data migration of its own. The migrations 0002 and
0004 created the same groups for databases migrated before this.
"""

from __future__ import annotations

VIEW = [
    ("patients", "view_patient"),
    ("patients", "view_labresult"),
    ("patients", "view_clinicalevent"),
    ("patients", "view_unmatchedehrrecord"),
    ("patients", "view_patientidentifier"),
    ("patients", "view_resultmessage"),
    ("patients", "view_patientmedication"),
    ("imaging", "view_study"),
    ("imaging", "view_series"),
    ("imaging", "view_instance"),
    ("imaging", "view_ingestsession"),
    ("imaging", "view_ingestissue"),
    ("imaging", "view_processingrun"),
    ("imaging", "view_registration"),
    ("imaging", "view_segmentation"),
    ("imaging", "view_lesion"),
    ("imaging", "view_lesionmeasurement"),
    ("imaging", "view_reviewevent"),
    ("analytics", "view_responseassessment"),
    ("analytics", "view_bestoverallresponse"),
    ("analytics", "view_responsesettings"),
    ("analytics", "view_riskmodelversion"),
    ("analytics", "view_riskscore"),
]
UPLOAD = [
    ("imaging", "add_instance"),
    ("imaging", "add_ingestsession"),
    ("patients", "add_labresult"),
    ("patients", "add_clinicalevent"),
]
REVIEW = [
    ("imaging", "change_lesionmeasurement"),
    ("imaging", "change_lesion"),
    ("imaging", "add_reviewevent"),
]
#: Switching iRECIST on for a patient on immunotherapy is the treating clinician's call
#: (`analytics.lesions.review.irecist`; a radiologist may too, by the review permission).
RESPONSE_SETTINGS = [("analytics", "change_responsesettings")]
MANAGE = (
    [
        ("auth", f"{verb}_{model}")
        for model in ("user", "group")
        for verb in ("add", "change", "delete", "view")
    ]
    + [
        ("authtoken", f"{verb}_{model}")
        for model in ("token", "tokenproxy")
        for verb in ("add", "change", "delete", "view")
    ]
    + [("patients", "view_auditevent")]
    # Login lockouts: see them, and lift one by deleting it (audited in patients.admin).
    + [("axes", "view_accessattempt"), ("axes", "delete_accessattempt")]
    + [("axes", "view_accessfailurelog")]
)

#: The segmentation model registry (`imaging.modelhub`): radiologists read the versions,
#: their validation reports and the drift alerts; administrators promote, roll back and
#: acknowledge alerts.
MODELS_VIEW = [
    ("modelhub", "view_segmentationmodel"),
    ("modelhub", "view_validationreport"),
    ("modelhub", "view_driftalert"),
]
MODELS_MANAGE = MODELS_VIEW + [
    ("modelhub", "change_segmentationmodel"),
    ("modelhub", "change_driftalert"),
]

#: The one permission of the researcher group: de-identified data only (no view
#: permission, so no identified page, REST or FHIR answer lets a researcher in).
RESEARCH_PERMISSION = ("patients", "export_research")
RESEARCH_PERMISSION_NAME = "Can download de-identified research data"
RESEARCH = [RESEARCH_PERMISSION]

GROUPS: dict[str, list[tuple[str, str]]] = {
    "clinician": VIEW + RESPONSE_SETTINGS,
    "radiologist": VIEW + UPLOAD + REVIEW + MODELS_VIEW,
    "admin": VIEW + UPLOAD + REVIEW + RESPONSE_SETTINGS + MANAGE + RESEARCH + MODELS_MANAGE,
    "researcher": RESEARCH,
}


def _research_permission_ensure(using: str) -> None:
    """The research permission belongs to no model's Meta: it is made here (on Patient)."""
    from django.contrib.auth.models import Permission
    from django.contrib.contenttypes.models import ContentType

    content_type = ContentType.objects.db_manager(using).get_for_model(
        _patient_model(), for_concrete_model=True
    )
    Permission.objects.using(using).get_or_create(
        content_type=content_type,
        codename=RESEARCH_PERMISSION[1],
        defaults={"name": RESEARCH_PERMISSION_NAME},
    )


def _patient_model():
    from patients.models import Patient

    return Patient


def groups_sync(*, using: str = "default") -> None:
    """Create the groups if missing and give each the permissions in `GROUPS`.

    Permissions of every app are made first: ``post_migrate`` reaches the apps one by
    one, and those after ``patients`` would otherwise not have theirs yet.
    """
    from django.apps import apps
    from django.contrib.auth.management import create_permissions
    from django.contrib.auth.models import Group, Permission

    for app_config in apps.get_app_configs():
        create_permissions(app_config, verbosity=0, using=using)
    _research_permission_ensure(using)

    for name, wanted in GROUPS.items():
        group, _ = Group.objects.using(using).get_or_create(name=name)
        permissions = []
        for app_label, codename in wanted:
            permission = (
                Permission.objects.using(using)
                .filter(content_type__app_label=app_label, codename=codename)
                .first()
            )
            if permission is not None:
                permissions.append(permission)
        group.permissions.add(*permissions)
