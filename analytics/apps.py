from django.apps import AppConfig


class AnalyticsConfig(AppConfig):
    name = "analytics"
    verbose_name = "Analytics"

    def ready(self) -> None:
        # Imported here, once the models are loaded (Django's rule for signal receivers).
        from analytics.lesions.refresh import patient_results_changed_receive
        from imaging.pipeline.signals import patient_results_changed

        patient_results_changed.connect(
            patient_results_changed_receive, dispatch_uid="radtrack-lesions-refresh"
        )
