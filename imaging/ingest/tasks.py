"""Celery tasks of ingest: thin, each calls one service.

``pacs_pull_task`` runs on the beat schedule (settings.CELERY_BEAT_SCHEDULE) when a
PACS is configured; ``pacs_study_retrieve_task`` on demand. Both go to the ``ingest``
queue, off the web processes, so a slow or unreachable PACS never holds up a page.
``ingest_sessions_reap_task`` (beat, every ten minutes) marks failed the ingest sessions
whose process died.
"""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.utils import timezone

from imaging.ingest.pacs import pacs_pull, pacs_study_retrieve
from imaging.ingest.reap import ingest_sessions_reap
from imaging.models import PacsTransfer
from radtrack.celery import radtrack_task


@radtrack_task(queue="ingest")
def pacs_pull_task(since: str = "") -> str:
    """Retrieve recent studies the PACS has and RadTrack lacks, and retry failed ones."""

    start = (
        dt.date.fromisoformat(since)
        if since
        else timezone.localdate() - dt.timedelta(days=settings.RADTRACK_PACS_PULL_LOOKBACK_DAYS)
    )
    return pacs_pull(since=start, trigger=PacsTransfer.Trigger.SCHEDULE).line()


@radtrack_task(queue="ingest")
def pacs_study_retrieve_task(study_instance_uid: str) -> str:

    transfer = pacs_study_retrieve(study_instance_uid=study_instance_uid)
    return transfer.status


@radtrack_task(queue="ingest")
def ingest_sessions_reap_task() -> int:
    """Mark failed the ingest sessions whose process died (on the beat schedule)."""
    return len(ingest_sessions_reap())
