# Radiologist review: hand-chosen targets, the components of each measurement, and
# links that tie a lesion candidate to a lesion across re-tracking.

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("imaging", "0004_segmentation_lesions"),
        ("patients", "0004_review_permissions"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="lesionmeasurement",
            name="component_labels",
            field=models.JSONField(
                blank=True,
                default=list,
                help_text="every label-map value attributed to this lesion at this study (a split lesion's fragments); component_label is the largest",
            ),
        ),
        migrations.AddField(
            model_name="lesionmeasurement",
            name="target_by_hand",
            field=models.BooleanField(
                default=False,
                help_text="is_target was chosen by a radiologist, not by the RECIST rules",
            ),
        ),
        migrations.CreateModel(
            name="LesionLink",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("component_label", models.PositiveIntegerField()),
                ("anchor_component_label", models.PositiveIntegerField(blank=True, null=True)),
                ("reason", models.TextField()),
                ("at", models.DateTimeField(auto_now=True)),
                (
                    "anchor_segmentation",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="imaging.segmentation",
                    ),
                ),
                (
                    "patient",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="lesion_links",
                        to="patients.patient",
                    ),
                ),
                (
                    "segmentation",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="imaging.segmentation",
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
            options={
                "ordering": ["patient", "at"],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("segmentation", "component_label"),
                        name="one_link_per_lesion_candidate",
                    ),
                    models.CheckConstraint(
                        condition=models.Q(
                            models.Q(
                                ("anchor_component_label__isnull", True),
                                ("anchor_segmentation__isnull", True),
                            ),
                            models.Q(
                                ("anchor_component_label__isnull", False),
                                ("anchor_segmentation__isnull", False),
                            ),
                            _connector="OR",
                        ),
                        name="lesion_link_anchor_complete",
                    ),
                ],
            },
        ),
    ]
