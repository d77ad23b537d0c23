from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _groups_sync(sender, using="default", **kwargs) -> None:
    from patients.groups import groups_sync

    groups_sync(using=using)


class PatientsConfig(AppConfig):
    name = "patients"
    verbose_name = "Patients"

    def ready(self) -> None:
        # After auth's handler has created permissions (apps are signalled in order,
        # and patients comes after auth and contenttypes in INSTALLED_APPS).
        post_migrate.connect(_groups_sync, sender=self, dispatch_uid="radtrack-groups-sync")
