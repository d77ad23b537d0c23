"""A study leaves the validation set by a recorded removal (its row kept); each study's
drift tests are kept with its statistics; adding and removing a set study are model
events. And segmentations made by a RadTrack-format version recorded its weights file's
SHA-256: they now record the version's digest over all its files, as every other format
does (`SegmentationModel.sha256`), so the rows made before are brought in line."""

from django.db import migrations, models

MANIFEST = "manifest.json"


def _weights_sha256(model) -> str | None:
    weights = [f for f in model.files if f.get("path") != MANIFEST]
    return weights[0]["sha256"] if len(weights) == 1 else None


def _segmentation_digests(apps, forward: bool) -> None:
    SegmentationModel = apps.get_model("modelhub", "SegmentationModel")
    Segmentation = apps.get_model("imaging", "Segmentation")
    for model in SegmentationModel.objects.filter(format="radtrack"):
        weights = _weights_sha256(model)
        if not weights or not model.sha256:
            continue
        old, new = (weights, model.sha256) if forward else (model.sha256, weights)
        Segmentation.objects.filter(
            model_name=model.name, model_version=model.version, model_sha256=old
        ).update(model_sha256=new)


def forwards(apps, schema_editor):
    _segmentation_digests(apps, forward=True)


def backwards(apps, schema_editor):
    _segmentation_digests(apps, forward=False)


class Migration(migrations.Migration):

    dependencies = [
        ('modelhub', '0001_initial'),
        ('imaging', '0015_lesion_truncated'),
    ]

    operations = [
        migrations.AddField(
            model_name='studystatistics',
            name='drift_tests',
            field=models.JSONField(blank=True, default=list, help_text='each drift test after this study: run, or why not'),
        ),
        migrations.AddField(
            model_name='validationsetstudy',
            name='removal_reason',
            field=models.TextField(blank=True),
        ),
        migrations.AddField(
            model_name='validationsetstudy',
            name='removed_at',
            field=models.DateTimeField(blank=True, help_text='when it left the set (still never trained on)', null=True),
        ),
        migrations.AddField(
            model_name='validationsetstudy',
            name='removed_by_name',
            field=models.CharField(blank=True, max_length=150),
        ),
        migrations.AlterField(
            model_name='modelevent',
            name='action',
            field=models.CharField(choices=[('register', 'Registered'), ('validate', 'Validated'), ('promote', 'Promoted'), ('rollback', 'Rolled back'), ('retire', 'Retired'), ('refuse', 'Promotion refused'), ('set_add', 'Study added to the validation set'), ('set_remove', 'Study removed from the validation set')], max_length=16),
        ),
        migrations.AlterField(
            model_name='driftalert',
            name='kind',
            field=models.CharField(choices=[('new_protocol', 'New scanner or protocol'), ('shift', 'Shift in the studies'), ('not_tested', 'Drift not tested')], max_length=16),
        ),
        migrations.RunPython(forwards, backwards),
    ]
