from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("imaging", "0005_pacs"),
        ("imaging", "0006_review"),
    ]

    operations = [
        migrations.AddField(
            model_name="study",
            name="series_choice",
            field=models.JSONField(
                blank=True,
                default=dict,
                help_text="why chosen_series was chosen (rules or a user's override: who, when, why)",
            ),
        ),
    ]
