# Findings carry a state (confirmed, equivocal, not found, rejected); a lesion not seen
# where it was expected is "not found", no longer "resolved"; merged rows say so; lymph
# nodes; measurements added by hand (their volume may be unknown).

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def not_found_from_resolved(apps, schema_editor):
    """Rows written "resolved" before this migration were never confirmed gone by a
    radiologist (no review could say so): they are lesions not found."""
    LesionMeasurement = apps.get_model("imaging", "LesionMeasurement")
    db = schema_editor.connection.alias
    LesionMeasurement.objects.using(db).filter(status="resolved").update(
        status="not_found",
        finding_state="not_found",
        state_reason="not found at this study; a radiologist has not confirmed it gone",
    )


class Migration(migrations.Migration):
    dependencies = [
        ("imaging", "0010_processingrun_attempts"),
        ("patients", "0006_ehr_identifiers_comparator_result_messages"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="lesionmeasurement",
            name="finding_state",
            field=models.CharField(
                choices=[
                    ("confirmed", "Confirmed"),
                    ("equivocal", "Equivocal, awaiting confirmation"),
                    ("not_found", "Not found, needs review"),
                    ("rejected", "Rejected"),
                ],
                default="confirmed",
                max_length=16,
            ),
        ),
        migrations.AddField(
            model_name="lesionmeasurement",
            name="link_provisional",
            field=models.BooleanField(
                default=False,
                help_text="linked to its lesion without a registration to the baseline "
                "(anatomical landmarks): a proposal awaiting a radiologist's review",
            ),
        ),
        migrations.AddField(
            model_name="lesionmeasurement",
            name="merged_into",
            field=models.ForeignKey(
                blank=True,
                help_text="status merged: the lesion that absorbed this one at this study",
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to="imaging.lesion",
            ),
        ),
        migrations.AddField(
            model_name="lesionmeasurement",
            name="state_reason",
            field=models.TextField(blank=True, help_text="why the finding is in its state"),
        ),
        migrations.AddField(
            model_name="lesionmeasurement",
            name="too_small",
            field=models.BooleanField(
                default=False,
                help_text="a radiologist says the lesion is present but too small to measure "
                "(counts 5 mm, RECIST 1.1 section 4.3.2)",
            ),
        ),
        migrations.AlterField(
            model_name="lesionmeasurement",
            name="volume_ml",
            field=models.FloatField(
                blank=True,
                help_text="none when not measured (a lesion measured by hand)",
                null=True,
            ),
        ),
        migrations.AlterField(
            model_name="lesion",
            name="organ",
            field=models.CharField(
                choices=[
                    ("lung", "Lung"),
                    ("liver", "Liver"),
                    ("lymph_node", "Lymph node"),
                    ("other", "Other"),
                ],
                max_length=16,
            ),
        ),
        migrations.AlterField(
            model_name="lesionmeasurement",
            name="status",
            field=models.CharField(
                choices=[
                    ("new", "New"),
                    ("tracked", "Tracked"),
                    ("resolved", "Gone (confirmed by a radiologist)"),
                    ("not_found", "Not found, needs review"),
                    ("merged", "Merged into another lesion"),
                ],
                max_length=16,
            ),
        ),
        migrations.CreateModel(
            name="ManualFinding",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                (
                    "lesion_uid",
                    models.CharField(help_text="Tracking UID of its lesion", max_length=64),
                ),
                (
                    "label",
                    models.CharField(
                        help_text="the lesion's label when it was added", max_length=64
                    ),
                ),
                (
                    "organ",
                    models.CharField(
                        choices=[
                            ("lung", "Lung"),
                            ("liver", "Liver"),
                            ("lymph_node", "Lymph node"),
                            ("other", "Other"),
                        ],
                        max_length=16,
                    ),
                ),
                ("longest_diameter_mm", models.FloatField()),
                ("short_axis_mm", models.FloatField()),
                ("volume_ml", models.FloatField(blank=True, null=True)),
                ("reason", models.TextField()),
                ("at", models.DateTimeField(auto_now_add=True)),
                (
                    "patient",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="manual_findings",
                        to="patients.patient",
                    ),
                ),
                (
                    "study",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="manual_findings",
                        to="imaging.study",
                    ),
                ),
                (
                    "user",
                    models.ForeignKey(
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={"ordering": ["patient", "at"]},
        ),
        migrations.AddField(
            model_name="lesionmeasurement",
            name="manual_finding",
            field=models.ForeignKey(
                blank=True,
                help_text="measured by hand by a radiologist, not by the segmentation",
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="measurements",
                to="imaging.manualfinding",
            ),
        ),
        migrations.AddConstraint(
            model_name="manualfinding",
            constraint=models.UniqueConstraint(
                fields=("study", "lesion_uid"), name="one_manual_finding_per_lesion_and_study"
            ),
        ),
        migrations.RunPython(not_found_from_resolved, migrations.RunPython.noop),
    ]
