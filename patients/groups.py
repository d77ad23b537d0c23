"""RadTrack's user groups and what each may do, kept in step with the database.

`groups_sync` runs after every ``migrate`` (and after a test database is flushed), so
the groups and their permissions exist whatever state the database was left in. The
migrations 0002 and 0004 created the same groups for databases migrated before this.
"""

from __future__ import annotations

VIEW = [
    ("patients", "view_patient"),
    ("patients", "view_labresult"),
    ("patients", "view_clinicalevent"),
    ("patients", "view_unmatchedehrrecord"),
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
)

GROUPS: dict[str, list[tuple[str, str]]] = {
    "clinician": VIEW,
    "radiologist": VIEW + UPLOAD + REVIEW,
    "admin": VIEW + UPLOAD + REVIEW + MANAGE,
}


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
