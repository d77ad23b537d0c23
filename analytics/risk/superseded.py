"""Scores a rescoring supersedes, removed in the transaction that writes the new ones.

A patient's latest score under a model version is the one at the latest landmark
(`analytics.models.LATEST_ORDER`), and the worklist ranks patients by it
(`LatestRiskScore`). Writing the new scores alone would leave two kinds of stale score
in charge (`analytics.risk.services.risk_scores_compute`):

- a patient who died, or has nothing left to score from, gets no new score, so the old
  one would keep ranking them by a risk they no longer have;
- a patient whose latest data was withdrawn (a lab retracted or deleted) is scored at
  an earlier landmark than before, and the score at the later landmark, resting on the
  withdrawn data, would still sort first.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Mapping

from analytics.models import LatestRiskScore, RiskModelVersion, RiskScore

__all__ = ["scores_superseded_delete"]

# Patients per query: under SQLite's limit on bound parameters.
_CHUNK = 500


def scores_superseded_delete(
    model_version: RiskModelVersion, current: Mapping[int, dt.date | None]
) -> int:
    """Delete ``model_version``'s scores that the patients' ``current`` landmarks (by
    patient pk) supersede; return how many. None: the patient gets no score now (died,
    nothing to score from), so every score of theirs goes; a date: the scores at later
    landmarks go. Call inside the transaction that writes the new scores.

    Only a patient whose `LatestRiskScore` is later than their current landmark (or who
    has one at all, for None) has anything to delete: one read per 500 patients.
    """
    behind: dict[dt.date | None, list[int]] = defaultdict(list)
    ordered = sorted(current)
    for start in range(0, len(ordered), _CHUNK):
        for patient_id, landmark in LatestRiskScore.objects.filter(
            model_version=model_version, patient_id__in=ordered[start : start + _CHUNK]
        ).values_list("patient_id", "landmark_date"):
            now = current[patient_id]
            if now is None or landmark > now:
                behind[now].append(patient_id)
    deleted = 0
    for now, patient_ids in behind.items():
        for start in range(0, len(patient_ids), _CHUNK):
            scores = RiskScore.objects.filter(
                model_version=model_version, patient_id__in=patient_ids[start : start + _CHUNK]
            )
            if now is not None:
                scores = scores.filter(landmark_date__gt=now)
            deleted += scores.delete()[1].get(RiskScore._meta.label, 0)
    return deleted
