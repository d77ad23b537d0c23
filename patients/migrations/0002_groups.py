"""The three user groups and their permissions (see patients/permissions.py).

Permissions are normally created after `migrate` finishes (post_migrate); they are
created here first so the groups can be given them in the same run.
"""

from django.db import migrations

VIEW = [
    ("patients", "view_patient"),
    ("patients", "view_labresult"),
    ("patients", "view_clinicalevent"),
    ("imaging", "view_study"),
    ("imaging", "view_series"),
    ("imaging", "view_instance"),
    ("imaging", "view_ingestsession"),
    ("imaging", "view_ingestissue"),
    ("imaging", "view_processingrun"),
]
UPLOAD = [
    ("imaging", "add_instance"),
    ("imaging", "add_ingestsession"),
]
MANAGE = [
    ("auth", f"{verb}_{model}")
    for model in ("user", "group")
    for verb in ("add", "change", "delete", "view")
] + [
    ("authtoken", f"{verb}_{model}")
    for model in ("token", "tokenproxy")
    for verb in ("add", "change", "delete", "view")
] + [
    ("patients", "view_auditevent"),
]

GROUPS = {
    "clinician": VIEW,
    "radiologist": VIEW + UPLOAD,
    "admin": VIEW + UPLOAD + MANAGE,
}


def _create_permissions(apps):
    from django.contrib.auth.management import create_permissions

    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None


def groups_create(apps, schema_editor):
    _create_permissions(apps)
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, wanted in GROUPS.items():
        group, _ = Group.objects.get_or_create(name=name)
        for app_label, codename in wanted:
            permission = Permission.objects.get(
                content_type__app_label=app_label, codename=codename
            )
            group.permissions.add(permission)


class Migration(migrations.Migration):
    dependencies = [
        ("patients", "0001_initial"),
        ("imaging", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("authtoken", "0004_alter_tokenproxy_options"),
    ]

    operations = [
        # Reversing leaves the groups: deleting them would silently drop memberships.
        migrations.RunPython(groups_create, migrations.RunPython.noop),
    ]
