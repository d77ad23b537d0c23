"""`patient_track`: rebuild a patient's lesion identities and measurements from the newest
segmentation of each study, with the radiologists' decisions carried over, then
recompute every response assessment, all in one transaction.

Every study with a segmentation is followed: one without a registration to the baseline
is matched on a landmark placement with a wider gate (`PROVISIONAL_GATE_MIN_MM`), its
links marked provisional, and it does not move the identities' positions."""

from __future__ import annotations

import logging
from dataclasses import replace
from itertools import count

from django.db import transaction

from analytics.lesions.core.identities import MatchResult, TrackedLesion
from analytics.lesions.core.matching import GATE_MIN_MM, lesions_match
from analytics.lesions.responses import responses_recompute
from analytics.lesions.tracking.carry import CarriedDecisions, decisions_carry
from analytics.lesions.tracking.chain import (
    Chain,
    StudyInput,
    baseline_time_point,
    observations,
    study_inputs,
)
from analytics.lesions.tracking.links import links_apply
from analytics.lesions.tracking.states import (
    absences_apply,
    finding_states_mark,
    manual_identities,
    manual_labels,
    manual_rows_apply,
)
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

#: The matching gate's floor for a follow-up placed by landmarks, not registered: its
#: placement can be off by a centimetre or two (no rotation, coverage differences).
PROVISIONAL_GATE_MIN_MM = 2.0 * GATE_MIN_MM


def patient_track(
    *, patient: Patient, record_event: bool = True, trigger: str = "new results"
) -> TrackingSummary:
    """Rebuild ``patient``'s lesion identities and measurements, then their responses.

    Identities come from the latest segmentation of each study's analysed series,
    matched in the baseline frame through each follow-up's stored registration
    (`analytics.lesions.core.matching`); they keep their Tracking UID and label across
    rebuilds when their first sighting is unchanged. A radiologist's decisions about a
    candidate (accept, reject, override) stay with that candidate, and links
    (`LesionLink`) are applied study by study before the next study is matched. Targets
    are chosen at baseline, over every study of its date, by the RECIST 1.1 rules unless
    a radiologist chose them.

    Decisions made on superseded segmentations are carried to the newest ones, and the
    ones that cannot be are listed in the returned summary
    (`analytics.lesions.tracking.carry`). With ``record_event`` (default) a carry or a
    dropped decision is also written as a `ReviewEvent` ("carry_over", no user); the
    review services record it in their own event instead. ``trigger`` says what caused
    the rebuild, for the record of any response category it revises.
    """
    summary = TrackingSummary()
    inputs = study_inputs(patient=patient, summary=summary)
    with transaction.atomic():
        decisions = decisions_carry(patient=patient, inputs=inputs, summary=summary)
        chain, provisional_keys = _chain_match(inputs, decisions, summary)
        by_hand = manual_identities(patient=patient)
        followed = {uid for uid, _ in decisions.first_sightings.values()}
        uid_of = identities_resolve(
            chain=chain,
            first_sightings=decisions.first_sightings,
            reserved=manual_labels(patient=patient, uids=set(by_hand) - followed),
        )
        lesions = lesions_write(patient=patient, chain=chain, uid_of=uid_of, also_keep=set(by_hand))
        rows = measurement_rows_build(
            chain=chain,
            uid_of=uid_of,
            lesions=lesions,
            reviews=decisions.reviews,
            summary=summary,
            provisional_keys=provisional_keys,
        )
        absences_apply(rows=rows, absences=dict(decisions.absences), summary=summary)
        rows = manual_rows_apply(
            patient=patient, rows=rows, chain=chain, lesions=lesions, summary=summary
        )
        finding_states_mark(rows=rows, chain=chain)
        # The baseline is a time point: its targets are chosen over every study of its
        # date, measurability judged as the time point's reading judges it (the coarsest
        # slices, `core.timepoints`).
        baseline = baseline_time_point([entry for entry, _ in chain])
        thicknesses = [e.slice_thickness_mm for e in baseline if e.slice_thickness_mm is not None]
        targets_mark(
            rows=rows,
            baseline_segmentations={e.segmentation.pk for e in baseline},
            manual=decisions.manual_targets,
            summary=summary,
            baseline_studies={e.study.pk for e in baseline},
            slice_thickness_mm=max(thicknesses) if thicknesses else None,
        )
        LesionMeasurement.objects.bulk_create(rows)
        # Before the responses: writing them refreshes the worklist's flags, whose
        # "needs attention" reads the decisions this rebuild dropped.
        if record_event and (summary.carried or summary.stale):
            _carry_event_write(patient, summary)
        responses_recompute(
            patient=patient,
            chain=[entry for entry, _ in chain],
            gaps=summary.gaps,
            trigger=trigger,
        )
        summary.studies_tracked = len(chain)
        summary.lesions = len(uid_of)
    for entry in summary.stale:
        logger.warning("patient pk %s: %s", patient.pk, entry["message"])
    return summary


def _chain_match(
    inputs: list[StudyInput], decisions: CarriedDecisions, summary: TrackingSummary
) -> tuple[Chain, dict[int, set[str]]]:
    """Match each study against the identities so far, then apply the radiologist's
    links on its segmentation; links on segmentations no longer tracked are stale.
    Returns the chain and, per segmentation placed without a registration, the
    candidates whose link is a proposal (no radiologist's link decided it)."""
    chain: Chain = []
    provisional_keys: dict[int, set[str]] = {}
    previous: list[TrackedLesion] = []
    # Temporary keys until `identities_resolve` keeps an old Tracking UID or makes a new one
    temporary = (f"pending-{n}" for n in count())
    owner: dict[tuple[int, int], str] = {}  # (segmentation, component) -> identity so far
    links = dict(decisions.links)
    for entry in inputs:
        result = lesions_match(
            previous=previous,
            current=observations(entry.segmentation),
            to_baseline=entry.positions_to_baseline,
            uid_factory=lambda: next(temporary),
            gate_min_mm=PROVISIONAL_GATE_MIN_MM if entry.provisional else GATE_MIN_MM,
        )
        decided = links.pop(entry.segmentation.pk, [])
        result = links_apply(
            result=result,
            previous=previous,
            entry=entry,
            links=decided,
            owner=owner,
            uid_factory=lambda: next(temporary),
            summary=summary,
            row_of=decisions.row_of,
        )
        for assignment in result.assignments:
            for key in assignment.observation_keys:
                owner[(entry.segmentation.pk, int(key))] = assignment.lesion_uid
        if entry.provisional:
            loose = {str(c["component_label"]) for c in entry.segmentation.lesions} - {
                str(link.component_label) for link in decided
            }
            provisional_keys[entry.segmentation.pk] = loose
            previous = _positions_kept(previous, result)
            if loose:
                when = entry.study.study_date or "an undated study"
                summary.provisional.append(f"study of {when}: {entry.provisional}")
            else:  # every link here is a radiologist's: nothing is a proposal
                entry = StudyInput(**{**entry.__dict__, "provisional": ""})
        else:
            previous = list(result.identities)
        chain.append((entry, result))
    for stale in links.values():  # links on segmentations no longer in the chain
        summary.stale_links.extend(
            link_stale_entry(
                link=link, why="its segmentation is no longer tracked", row_of=decisions.row_of
            )
            for link in stale
        )
    return chain, provisional_keys


def _positions_kept(previous: list[TrackedLesion], result: MatchResult) -> list[TrackedLesion]:
    """The identities after a study placed without a registration: what became of each
    (seen, not seen, merged), but known lesions keep their registered position, so that
    a landmark placement never moves where the next study looks for them."""
    before = {p.lesion_uid: p for p in previous}
    kept = []
    for identity in result.identities:
        old = before.get(identity.lesion_uid)
        if old is None:
            kept.append(identity)
        else:
            kept.append(replace(old, resolved=identity.resolved, merged_into=identity.merged_into))
    return kept


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
            # a radiologist must look again (the worklist's "needs attention")
            "needs_review": bool(summary.stale),
        },
    )
