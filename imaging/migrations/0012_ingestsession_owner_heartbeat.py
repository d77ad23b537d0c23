# An ingest session records the process working on it and when it last made progress,
# so that a session whose process died is found and marked failed; storage repair
# re-indexes orphaned objects in sessions of its own.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('imaging', '0011_finding_states'),
    ]

    operations = [
        migrations.AddField(
            model_name='ingestsession',
            name='heartbeat_at',
            field=models.DateTimeField(blank=True, help_text='when it last made progress (a batch indexed)', null=True),
        ),
        migrations.AddField(
            model_name='ingestsession',
            name='owner',
            field=models.CharField(blank=True, help_text='host:pid:start of the process working on it; empty between requests', max_length=128),
        ),
        migrations.AlterField(
            model_name='ingestsession',
            name='source',
            field=models.CharField(choices=[('folder', 'Folder import'), ('upload', 'Web upload'), ('api', 'REST API'), ('dimse', 'DICOM C-STORE'), ('dicomweb', 'DICOMweb'), ('repair', 'Storage repair')], max_length=16),
        ),
    ]
