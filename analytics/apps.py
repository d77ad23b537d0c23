from django.apps import AppConfig


class AnalyticsConfig(AppConfig):
    name = "analytics"
    verbose_name = "Analytics"

    def ready(self) -> None:
        # Imported here, once the models are loaded (Django's rule for signal receivers).
        from analytics.dashboard.flags import (
            worklist_flags_patients_receive,
            worklist_flags_responses_receive,
        )
        from analytics.hl7.events import responses_written_receive
        from analytics.lesions.refresh import patient_results_changed_receive
        from analytics.lesions.responses import responses_written
        from analytics.lesions.review.common import review_recorded
        from analytics.lesions.review.irecist_ehr import irecist_from_medications_receive
        from analytics.lesions.tasks import patients_retrack_receive
        from analytics.risk.tasks import risk_scores_patients_receive
        from imaging.pipeline.signals import patient_results_changed
        from imaging.signals import patient_imaging_changed
        from patients.signals import (
            checkpoint_inhibitors_imported,
            clinical_events_imported,
            lab_results_changed,
        )

        patient_results_changed.connect(
            patient_results_changed_receive, dispatch_uid="radtrack-lesions-refresh"
        )
        # A checkpoint inhibitor in an EHR import applies iRECIST unless a clinician decided.
        checkpoint_inhibitors_imported.connect(
            irecist_from_medications_receive, dispatch_uid="radtrack-irecist-from-ehr"
        )
        # A response that becomes final goes to the EHR as HL7 v2 once it is committed.
        responses_written.connect(responses_written_receive, dispatch_uid="radtrack-hl7-final")
        # The worklist's stored flags follow, in the same transaction, every change to the
        # responses and measurements (each rebuild ends by writing the responses), the
        # labs, the studies and the series' states.
        responses_written.connect(
            worklist_flags_responses_receive, dispatch_uid="radtrack-flags-responses"
        )
        lab_results_changed.connect(
            worklist_flags_patients_receive, dispatch_uid="radtrack-flags-labs"
        )
        # Scores follow new labs and outcomes once the write commits (a queued task).
        lab_results_changed.connect(risk_scores_patients_receive, dispatch_uid="radtrack-risk-labs")
        clinical_events_imported.connect(
            risk_scores_patients_receive, dispatch_uid="radtrack-risk-events"
        )
        patient_imaging_changed.connect(
            worklist_flags_patients_receive, dispatch_uid="radtrack-flags-imaging"
        )
        review_recorded.connect(
            worklist_flags_patients_receive, dispatch_uid="radtrack-flags-review"
        )
        # A study moved to another date or patient, or removed: lesions tracked again.
        patient_imaging_changed.connect(
            patients_retrack_receive, dispatch_uid="radtrack-lesions-retrack"
        )
