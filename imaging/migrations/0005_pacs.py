# A record of each study moved to or from the PACS over DICOMweb.

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('imaging', '0004_segmentation_lesions'),
    ]

    operations = [
        migrations.CreateModel(
            name='PacsTransfer',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('direction', models.CharField(choices=[('retrieve', 'Retrieve (WADO-RS)'), ('send', 'Send (STOW-RS)')], max_length=16)),
                ('study_instance_uid', models.CharField(db_index=True, max_length=64)),
                ('pacs_url', models.CharField(max_length=255)),
                ('trigger', models.CharField(choices=[('manual', 'On demand'), ('schedule', 'Scheduled pull')], default='manual', max_length=16)),
                ('status', models.CharField(choices=[('running', 'Running'), ('done', 'Done'), ('failed', 'Failed')], default='running', max_length=16)),
                ('attempts', models.PositiveIntegerField(default=0)),
                ('instances', models.PositiveIntegerField(default=0, help_text='instances received (retrieve) or accepted by the PACS (send)')),
                ('error', models.TextField(blank=True)),
                ('started_at', models.DateTimeField(auto_now_add=True)),
                ('finished_at', models.DateTimeField(blank=True, null=True)),
                ('ingest_session', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='imaging.ingestsession')),
                ('study', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='pacs_transfers', to='imaging.study')),
            ],
            options={
                'ordering': ['-started_at', '-pk'],
            },
        ),
    ]
