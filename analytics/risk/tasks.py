"""Celery tasks of the risk models: thin, they load a row by key and call one service."""

from analytics.models import RiskModelVersion
from analytics.risk.selectors import current_model_version
from analytics.risk.services import risk_scores_compute
from radtrack.celery import radtrack_task


@radtrack_task(queue="cpu")
def risk_scores_compute_task(model_version_id: int | None = None) -> int:
    """Recompute every patient's score with one model version (default: the latest)."""

    if model_version_id is None:
        version = current_model_version()
    else:
        version = RiskModelVersion.objects.filter(pk=model_version_id).first()
    if version is None:  # no model fitted yet, or deleted since it was queued
        return 0
    return risk_scores_compute(model_version=version)
