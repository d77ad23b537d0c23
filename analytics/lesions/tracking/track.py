"""`patient_track`: rebuild a patient's lesion identities and measurements from the newest
segmentation of each study, with the radiologists' decisions carried over, then
recompute every response assessment, all in one transaction."""

from __future__ import annotations

import logging
from itertools import count

from django.db import transaction

from analytics.lesions.core.identities import TrackedLesion
from analytics.lesions.core.matching import lesions_match
from analytics.lesions.responses import responses_recompute
from analytics.lesions.tracking.carry import CarriedDecisions, decisions_carry
from analytics.lesions.tracking.chain import Chain, StudyInput, observations, study_inputs
from analytics.lesions.tracking.links import links_apply
from analytics.lesions.tracking.summary import TrackingSummary, link_stale_entry
from analytics.lesions.tracking.write import (
    identities_resolve,
    lesions_write,
    measurement_rows_build,
    targets_mark,
)
from imaging.models import LesionMeasurement, ReviewEvent
from patients.models import Patient

logger = logging.getLogger(__name__)


def patient_track(*, patient: Patient, record_event: bool = True) -> TrackingSummary:
    """Rebuild ``patient``'s lesion identities and measurements, then their responses.

    Identities come from the latest segmentation of each study's analysed series,
    matched in the baseline frame through each follow-up's stored registration
    (`analytics.lesions.core.matching`); they keep their Tracking UID and label across
    rebuilds when their first sighting is unchanged. A radiologist's decisions about a
    candidate (accept, reject, override) stay with that candidate, and links
    (`LesionLink`) are applied study by study before the next study is matched. Targets
    are chosen at baseline by the RECIST 1.1 rules unless a radiologist chose them.

    Decisions made on superseded segmentations are carried to the newest ones, and the
    ones that cannot be are listed in the returned summary
    (`analytics.lesions.tracking.carry`). With ``record_event`` (default) a carry or a
    dropped decision is also written as a `ReviewEvent` ("carry_over", no user); the
    review services record it in their own event instead.
    """
    summary = TrackingSummary()
    inputs = study_inputs(patient=patient, summary=summary)
    with transaction.atomic():
        decisions = decisions_carry(patient=patient, inputs=inputs, summary=summary)
        chain = _chain_match(inputs, decisions, summary)
        uid_of = identities_resolve(chain=chain, first_sightings=decisions.first_sightings)
        lesions = lesions_write(patient=patient, chain=chain, uid_of=uid_of)
        rows = measurement_rows_build(
            chain=chain, uid_of=uid_of, lesions=lesions, reviews=decisions.reviews, summary=summary
        )
        targets_mark(
            rows=rows,
            baseline_segmentation=chain[0][0].segmentation.pk if chain else None,
            manual=decisions.manual_targets,
            summary=summary,
        )
        LesionMeasurement.objects.bulk_create(rows)
        responses_recompute(patient=patient)
        summary.studies_tracked = len(chain)
        summary.lesions = len(uid_of)
        if record_event and (summary.carried or summary.stale_reviews or summary.stale_targets):
            _carry_event_write(patient, summary)
    for entry in summary.stale:
        logger.warning("patient pk %s: %s", patient.pk, entry["message"])
    return summary


def _chain_match(
    inputs: list[StudyInput], decisions: CarriedDecisions, summary: TrackingSummary
) -> Chain:
    """Match each study against the identities so far, then apply the radiologist's
    links on its segmentation; links on segmentations no longer tracked are stale."""
    chain: Chain = []
    previous: list[TrackedLesion] = []
    # placeholders until `identities_resolve` keeps an old Tracking UID or makes a new one
    temporary = (f"pending-{n}" for n in count())
    owner: dict[tuple[int, int], str] = {}  # (segmentation, component) -> identity so far
    links = dict(decisions.links)
    for entry in inputs:
        result = lesions_match(
            previous=previous,
            current=observations(entry.segmentation),
            to_baseline=entry.to_baseline,
            uid_factory=lambda: next(temporary),
        )
        result = links_apply(
            result=result,
            previous=previous,
            entry=entry,
            links=links.pop(entry.segmentation.pk, []),
            owner=owner,
            uid_factory=lambda: next(temporary),
            summary=summary,
            row_of=decisions.row_of,
        )
        for assignment in result.assignments:
            for key in assignment.observation_keys:
                owner[(entry.segmentation.pk, int(key))] = assignment.lesion_uid
        chain.append((entry, result))
        previous = list(result.identities)
    for stale in links.values():  # links on segmentations no longer in the chain
        summary.stale_links.extend(
            link_stale_entry(
                link=link, why="its segmentation is no longer tracked", row_of=decisions.row_of
            )
            for link in stale
        )
    return chain


def _carry_event_write(patient: Patient, summary: TrackingSummary) -> ReviewEvent:
    """The rebuild's own record of decisions it moved or dropped (no user made it)."""
    return ReviewEvent.objects.create(
        patient=patient,
        user=None,
        action="carry_over",
        reason="lesions re-tracked: radiologists' decisions carried to the newest "
        "segmentations, and the ones that no longer apply listed for re-review",
        before={},
        after={
            "carried": summary.carried,
            "stale_reviews": summary.stale_reviews,
            "stale_targets": summary.stale_targets,
            "stale_links": summary.stale_links,
        },
    )
