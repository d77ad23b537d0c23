"""Permissions for lesions, measurements, responses and risk, given to the groups.

Everyone who may see patients may see their lesions, responses and risk scores;
radiologists (and admins) may review lesions: accept, reject, relink, choose targets
and override measurements.
"""

from django.db import migrations

VIEW = [
    ("imaging", "view_registration"),
    ("imaging", "view_segmentation"),
    ("imaging", "view_lesion"),
    ("imaging", "view_lesionmeasurement"),
    ("imaging", "view_reviewevent"),
    ("analytics", "view_responseassessment"),
    ("analytics", "view_riskmodelversion"),
    ("analytics", "view_riskscore"),
    ("patients", "view_unmatchedehrrecord"),
]
REVIEW = [
    ("imaging", "change_lesionmeasurement"),
    ("imaging", "change_lesion"),
    ("imaging", "add_reviewevent"),
]
IMPORT = [("patients", "add_labresult"), ("patients", "add_clinicalevent")]

GROUPS = {
    "clinician": VIEW,
    "radiologist": VIEW + REVIEW + IMPORT,
    "admin": VIEW + REVIEW + IMPORT,
}


def _create_permissions(apps):
    from django.contrib.auth.management import create_permissions

    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None


def permissions_grant(apps, schema_editor):
    _create_permissions(apps)
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, wanted in GROUPS.items():
        group, _ = Group.objects.get_or_create(name=name)
        for app_label, codename in wanted:
            group.permissions.add(
                Permission.objects.get(content_type__app_label=app_label, codename=codename)
            )


class Migration(migrations.Migration):
    dependencies = [
        ("patients", "0003_unmatchedehrrecord"),
        ("patients", "0002_groups"),
        ("imaging", "0002_processingrun_flags_lesion_lesionmeasurement_and_more"),
        ("analytics", "0002_responseassessment"),
    ]

    operations = [migrations.RunPython(permissions_grant, migrations.RunPython.noop)]
