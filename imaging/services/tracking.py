"""Lesion identities across a patient's studies, and the responses that follow from them.

`patient_track` rebuilds a patient's identities from the latest segmentation of each
study's analysed series, matched in the baseline frame through each follow-up's stored
registration (`imaging.core.matching`). Identities keep their Tracking UID and label
across rebuilds when their first sighting is unchanged, and a radiologist's decisions
about a lesion candidate (accept, reject, override) stay with that candidate. A
radiologist's links (`LesionLink`: this candidate belongs to that lesion, or to a lesion
of its own) are applied study by study before the next study is matched, so a relinked
lesion is followed from where the radiologist put it. Targets are chosen at baseline by
the RECIST 1.1 rules unless a radiologist chose them, and every response assessment is
recomputed in the same transaction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np
from django.db import transaction
from pydicom.uid import generate_uid

from analytics.core.recist import LesionReading, targets_select
from analytics.core.volumetric import responses_table_build
from analytics.models import ResponseAssessment
from imaging.core.matching import (
    LesionAssignment,
    LesionObservation,
    MatchResult,
    TrackedLesion,
    lesion_label,
    lesions_match,
)
from imaging.models import (
    Lesion,
    LesionLink,
    LesionMeasurement,
    Registration,
    Segmentation,
    Study,
)
from imaging.selectors import measurements_table
from patients.models import Patient

logger = logging.getLogger(__name__)

#: Review fields carried over from one rebuild to the next, per lesion candidate.
REVIEW_FIELDS = (
    "review_state",
    "override_volume_ml",
    "override_longest_diameter_mm",
    "override_short_axis_mm",
    "review_reason",
    "reviewed_by_id",
    "reviewed_at",
)


@dataclass
class TrackingSummary:
    studies_tracked: int = 0
    lesions: int = 0
    waiting: list[str] = field(default_factory=list)
    #: radiologists' links that no longer apply (their candidate or anchor is gone)
    stale_links: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _StudyInput:
    study: Study
    segmentation: Segmentation
    to_baseline: np.ndarray


def _study_inputs(patient: Patient, summary: TrackingSummary) -> list[_StudyInput]:
    """Studies with a segmentation of their analysed series, in date order, up to the
    first follow-up that has no usable registration to the baseline."""
    inputs: list[_StudyInput] = []
    studies = (
        Study.objects.filter(patient=patient)
        .select_related("chosen_series")
        .order_by("study_date", "study_time", "pk")
    )
    baseline_series = None
    for study in studies:
        series = study.chosen_series
        segmentation = (
            Segmentation.objects.filter(series=series).order_by("-created_at").first()
            if series is not None
            else None
        )
        if segmentation is None:
            continue
        if baseline_series is None:
            baseline_series = series
            inputs.append(_StudyInput(study, segmentation, np.eye(4)))
            continue
        registration = (
            Registration.objects.filter(moving_series=series, fixed_series=baseline_series)
            .order_by("-created_at")
            .first()
        )
        if registration is None or registration.failed:
            why = "failed" if registration is not None else "is missing"
            summary.waiting.append(
                f"study of {study.study_date}: its registration to the baseline {why}; "
                "lesions are not linked from here on until it is redone or reviewed"
            )
            break
        fixed_to_moving = np.asarray(registration.matrix_fixed_to_moving, dtype=float)
        inputs.append(_StudyInput(study, segmentation, np.linalg.inv(fixed_to_moving)))
    return inputs


def _observations(segmentation: Segmentation) -> list[LesionObservation]:
    return [
        LesionObservation(
            key=str(c["component_label"]),
            organ=c["organ"],
            centroid_lps_mm=tuple(c["centroid_lps_mm"]),
            volume_ml=c["volume_ml"],
            longest_diameter_mm=c["longest_diameter_mm"],
            short_axis_mm=c["short_axis_mm"],
        )
        for c in segmentation.lesions
    ]


def patient_track(*, patient: Patient) -> TrackingSummary:
    """Rebuild ``patient``'s lesion identities and measurements, then their responses."""
    summary = TrackingSummary()
    inputs = _study_inputs(patient, summary)
    chain: list[tuple[_StudyInput, MatchResult]] = []
    previous: list[TrackedLesion] = []
    temporary = iter(f"pending-{n}" for n in range(1_000_000))
    links: dict[int, list[LesionLink]] = {}
    for link in LesionLink.objects.filter(patient=patient).order_by("at", "pk"):
        links.setdefault(link.segmentation_id, []).append(link)
    owner: dict[tuple[int, int], str] = {}  # (segmentation, component) -> identity so far
    for entry in inputs:
        result = lesions_match(
            previous=previous,
            current=_observations(entry.segmentation),
            to_baseline=entry.to_baseline,
            uid_factory=lambda: next(temporary),
        )
        result = _links_apply(
            result=result,
            previous=previous,
            entry=entry,
            links=links.pop(entry.segmentation.pk, []),
            owner=owner,
            uid_factory=lambda: next(temporary),
            summary=summary,
        )
        for assignment in result.assignments:
            for key in assignment.observation_keys:
                owner[(entry.segmentation.pk, int(key))] = assignment.lesion_uid
        chain.append((entry, result))
        previous = list(result.identities)
    for stale in links.values():  # links on segmentations no longer in the chain
        summary.stale_links.extend(_link_describe(link) for link in stale)

    with transaction.atomic():
        old_measurements = list(
            LesionMeasurement.objects.filter(lesion__patient=patient).select_related(
                "lesion", "study"
            )
        )
        reviews = {
            (m.segmentation_id, m.component_label): {f: getattr(m, f) for f in REVIEW_FIELDS}
            for m in old_measurements
            if m.review_state != LesionMeasurement.Review.PENDING
        }
        manual_targets = {
            (m.segmentation_id, m.component_label): m.is_target
            for m in old_measurements
            if m.target_by_hand and m.status != LesionMeasurement.Status.RESOLVED
        }
        first_seen_of_old = _first_sightings(old_measurements)
        uid_of: dict[str, tuple[str, str]] = _identities_resolve(chain, first_seen_of_old, patient)

        LesionMeasurement.objects.filter(lesion__patient=patient).delete()
        kept = {uid for uid, _ in uid_of.values()}
        Lesion.objects.filter(patient=patient).exclude(tracking_uid__in=kept).delete()
        lesions = {lesion.tracking_uid: lesion for lesion in Lesion.objects.filter(patient=patient)}
        organ_of = {i.lesion_uid: i.organ for _, r in chain for i in r.identities}
        for temp_uid, (uid, label) in uid_of.items():
            lesion = lesions.get(uid)
            if lesion is None:
                lesions[uid] = Lesion.objects.create(
                    patient=patient, tracking_uid=uid, label=label, organ=organ_of[temp_uid]
                )
            elif lesion.label != label:
                lesion.label = label
                lesion.save(update_fields=["label"])

        rows = []
        candidates_by_key = {
            (entry.segmentation.pk, str(c["component_label"])): c
            for entry, _ in chain
            for c in entry.segmentation.lesions
        }
        for entry, result in chain:
            for assignment in result.assignments:
                lesion = lesions[uid_of[assignment.lesion_uid][0]]
                if assignment.status in ("resolved", "merged"):
                    rows.append(
                        LesionMeasurement(
                            lesion=lesion,
                            study=entry.study,
                            segmentation=entry.segmentation,
                            status=LesionMeasurement.Status.RESOLVED,
                            volume_ml=0.0,
                            longest_diameter_mm=0.0,
                            short_axis_mm=0.0,
                        )
                    )
                    continue
                parts = [
                    candidates_by_key[(entry.segmentation.pk, key)]
                    for key in assignment.observation_keys
                ]
                rows.append(_measurement(lesion, entry, assignment.status, parts, reviews))
        _targets_mark(rows, chain[0][0].segmentation.pk if chain else None, manual_targets)
        LesionMeasurement.objects.bulk_create(rows)
        responses_recompute(patient=patient)
    summary.studies_tracked = len(chain)
    summary.lesions = len(uid_of)
    return summary


def _first_sightings(measurements: list[LesionMeasurement]) -> dict[tuple, tuple[str, str]]:
    """(segmentation, component label) of each old identity's first sighting -> (uid, label)."""
    first: dict[str, LesionMeasurement] = {}
    for m in sorted(measurements, key=lambda m: (m.study.study_date or 0, m.pk)):
        if m.status != LesionMeasurement.Status.RESOLVED:
            first.setdefault(m.lesion.tracking_uid, m)
    return {
        (m.segmentation_id, m.component_label): (uid, m.lesion.label) for uid, m in first.items()
    }


def _identities_resolve(chain, first_seen_of_old, patient) -> dict[str, tuple[str, str]]:
    """Map each identity of this rebuild to a (Tracking UID, label): the old identity's
    when it was first seen in the same candidate, otherwise a new UID and a free label."""
    resolved: dict[str, tuple[str, str]] = {}
    labels_taken: set[str] = set()
    fresh: list[tuple[str, str]] = []
    for entry, result in chain:
        for assignment in result.assignments:
            if assignment.lesion_uid in resolved or assignment.status != "new":
                continue
            # A radiologist's link may have added candidates to a first sighting: the
            # old identity was recorded under its largest one, which may be any of them.
            old = next(
                (
                    first_seen_of_old[(entry.segmentation.pk, int(key))]
                    for key in assignment.observation_keys
                    if (entry.segmentation.pk, int(key)) in first_seen_of_old
                ),
                None,
            )
            if old is not None and old[1] not in labels_taken:
                resolved[assignment.lesion_uid] = old
                labels_taken.add(old[1])
            else:
                resolved[assignment.lesion_uid] = ("", "")
                fresh.append((assignment.lesion_uid, assignment.label))
    for temp_uid, label in fresh:
        if label in labels_taken:
            stem = label.rsplit(" ", 1)[0]
            n = 1
            while f"{stem} {n}" in labels_taken:
                n += 1
            label = f"{stem} {n}"
        labels_taken.add(label)
        resolved[temp_uid] = (str(generate_uid()), label)
    return resolved


def _measurement(lesion, entry, status, parts, reviews) -> LesionMeasurement:
    """One measurement row from one candidate (or, for a split, its fragments combined)."""
    parts = sorted(parts, key=lambda c: (-c["volume_ml"], int(c["component_label"])))
    main = parts[0]
    volume = sum(c["volume_ml"] for c in parts)
    centroid = np.average(
        [c["centroid_lps_mm"] for c in parts],
        axis=0,
        weights=[max(c["volume_ml"], 1e-9) for c in parts],
    )
    row = LesionMeasurement(
        lesion=lesion,
        study=entry.study,
        segmentation=entry.segmentation,
        component_label=int(main["component_label"]),
        component_labels=[int(c["component_label"]) for c in parts],
        status=LesionMeasurement.Status.NEW
        if status == "new"
        else LesionMeasurement.Status.TRACKED,
        volume_ml=volume,
        longest_diameter_mm=main["longest_diameter_mm"],
        short_axis_mm=main["short_axis_mm"],
        max_3d_diameter_mm=main.get("max_3d_diameter_mm"),
        centroid_x_mm=float(centroid[0]),
        centroid_y_mm=float(centroid[1]),
        centroid_z_mm=float(centroid[2]),
        mean_hu=main.get("mean_hu"),
        sd_hu=main.get("sd_hu"),
        sphericity=main.get("sphericity"),
        confidence=main.get("confidence"),
        uncertainty=main.get("uncertainty"),
    )
    for name, value in reviews.get((entry.segmentation.pk, row.component_label), {}).items():
        setattr(row, name, value)
    return row


def _targets_mark(rows: list[LesionMeasurement], baseline_segmentation, manual) -> None:
    """RECIST 1.1 targets at baseline (a radiologist's choice wins), marked on every row.

    ``manual``: (segmentation, component label) -> is_target of the rows a radiologist
    chose targets on (`imaging.services.review.targets_set`); their choice stays in force,
    and every row says so (``target_by_hand``), as long as one chosen lesion remains.
    """
    baseline = [
        r
        for r in rows
        if r.segmentation_id == baseline_segmentation
        and r.review_state != LesionMeasurement.Review.REJECTED
        and r.status != LesionMeasurement.Status.RESOLVED
    ]
    chosen_by_hand = {
        r.lesion.tracking_uid
        for r in baseline
        if manual.get((r.segmentation_id, r.component_label)) is True
    }
    if chosen_by_hand:
        targets = chosen_by_hand
    else:
        targets = set(
            targets_select(
                lesions=[
                    LesionReading(
                        lesion_uid=r.lesion.tracking_uid,
                        organ=r.lesion.organ,
                        longest_diameter_mm=r.effective_longest_diameter_mm,
                        volume_ml=r.effective_volume_ml,
                    )
                    for r in baseline
                ]
            )
        )
    for row in rows:
        row.is_target = row.lesion.tracking_uid in targets
        row.target_by_hand = bool(chosen_by_hand)


def _link_describe(link: LesionLink) -> str:
    return (
        f"a radiologist's link of candidate {link.component_label} in segmentation "
        f"{link.segmentation_id} no longer applies: that candidate or its anchor is gone"
    )


def _links_apply(
    *,
    result: MatchResult,
    previous: list[TrackedLesion],
    entry: _StudyInput,
    links: list[LesionLink],
    owner: dict[tuple[int, int], str],
    uid_factory,
    summary: TrackingSummary,
) -> MatchResult:
    """Move this study's candidates to the lesions a radiologist put them in.

    A link with an anchor moves the candidate to the identity that owns the anchor
    candidate (an earlier study's, through ``owner``, or this study's); one without
    starts a new identity. Identities left with no candidate are resolved here (or, if
    new at this study, never existed); changed identities are re-placed in the baseline
    frame from their candidates so that the next study is matched against them.
    """
    if not links:
        return result
    candidates = {str(c["component_label"]): c for c in entry.segmentation.lesions}
    keys_of: dict[str, list[str]] = {
        a.lesion_uid: list(a.observation_keys) for a in result.assignments
    }
    fresh: list[str] = []
    seg = entry.segmentation.pk
    for link in sorted(links, key=lambda link: (link.anchor_segmentation_id is not None, link.pk)):
        key = str(link.component_label)
        current = next((uid for uid, keys in keys_of.items() if key in keys), None)
        if key not in candidates or current is None:
            summary.stale_links.append(_link_describe(link))
            continue
        if link.anchor_segmentation_id is None:
            target = uid_factory()
            fresh.append(target)
            keys_of[target] = []
        elif link.anchor_segmentation_id == seg:
            anchor = str(link.anchor_component_label)
            target = next((uid for uid, keys in keys_of.items() if anchor in keys), None)
        else:
            target = owner.get((link.anchor_segmentation_id, link.anchor_component_label))
        if target is None:
            summary.stale_links.append(_link_describe(link))
            continue
        if target != current:
            keys_of[current].remove(key)
            keys_of[target].append(key)

    to_baseline = np.asarray(entry.to_baseline, dtype=float)

    def placed(identity: TrackedLesion, keys: list[str]) -> TrackedLesion:
        parts = [candidates[k] for k in keys]
        volumes = [max(float(c["volume_ml"]), 0.0) for c in parts]
        centres = np.array([c["centroid_lps_mm"] for c in parts], dtype=float)
        centres = centres @ to_baseline[:3, :3].T + to_baseline[:3, 3]
        weights = volumes if sum(volumes) > 0 else None
        return replace(
            identity,
            centroid_baseline_mm=tuple(np.average(centres, axis=0, weights=weights)),
            volume_ml=sum(volumes) if sum(volumes) > 0 else identity.volume_ml,
            mask_points_baseline_mm=None,
            resolved=False,
            merged_into="",
        )

    identity_of = {i.lesion_uid: i for i in result.identities}
    assignments: list[LesionAssignment] = []
    identities: list[TrackedLesion] = []
    labels = [p.label for p in previous]
    for a in result.assignments:
        keys = keys_of[a.lesion_uid]
        identity = identity_of[a.lesion_uid]
        if keys == list(a.observation_keys):
            assignments.append(a)
            identities.append(identity)
        elif keys:
            was_seen = a.status != "new"
            assignments.append(
                replace(
                    a,
                    status="tracked" if was_seen else "new",
                    observation_keys=tuple(keys),
                    reappeared=a.reappeared or (was_seen and a.status in ("resolved", "merged")),
                    merged_into="",
                )
            )
            identities.append(placed(identity, keys))
        elif a.status != "new":  # lost its only candidates to another lesion
            assignments.append(
                LesionAssignment(
                    lesion_uid=a.lesion_uid, label=a.label, organ=a.organ, status="resolved"
                )
            )
            identities.append(replace(identity, resolved=True, merged_into=""))
        if a.status == "new" and keys:
            labels.append(a.label)
    for uid in fresh:
        keys = keys_of[uid]
        if not keys:
            continue
        first = candidates[keys[0]]
        organ = str(first["organ"])
        identity = placed(
            TrackedLesion(
                lesion_uid=uid,
                label="",
                organ=organ,
                centroid_baseline_mm=(0.0, 0.0, 0.0),
                volume_ml=0.0,
            ),
            keys,
        )
        label = lesion_label(
            organ=organ, centroid_baseline_mm=identity.centroid_baseline_mm, existing_labels=labels
        )
        labels.append(label)
        identities.append(replace(identity, label=label))
        assignments.append(
            LesionAssignment(
                lesion_uid=uid, label=label, organ=organ, status="new", observation_keys=tuple(keys)
            )
        )
    by_key = {key: a.lesion_uid for a in assignments for key in a.observation_keys}
    return MatchResult(assignments=tuple(assignments), identities=tuple(identities), _by_key=by_key)


def responses_recompute(*, patient: Patient) -> list[ResponseAssessment]:
    """Recompute the RECIST 1.1 and volumetric response of every study of ``patient``.

    Rejected candidates are left out; a radiologist's overrides are in force.
    """
    table = measurements_table(patient_ids=[patient.patient_id], include_rejected=False)
    ResponseAssessment.objects.filter(patient=patient).delete()
    if table.empty:
        return []
    responses = responses_table_build(measurements=table)
    studies = {
        s.study_instance_uid: s
        for s in Study.objects.filter(study_instance_uid__in=list(responses["study_instance_uid"]))
    }
    made = []
    for index, row in enumerate(responses.itertuples(index=False)):
        made.append(
            ResponseAssessment.objects.create(
                patient=patient,
                study=studies[row.study_instance_uid],
                is_baseline=index == 0,
                sum_diameters_mm=_finite(row.sum_diameters_mm),
                total_volume_ml=_finite(row.total_volume_ml),
                pct_change_baseline=_finite(row.pct_change_baseline),
                pct_change_nadir=_finite(row.pct_change_nadir),
                recist_response=row.recist_response or "",
                volumetric_response=row.volumetric_response or "",
                new_lesions=bool(row.new_lesions),
                inputs={
                    "measurements": int(
                        (table["study_instance_uid"] == row.study_instance_uid).sum()
                    )
                },
            )
        )
    return made


def _finite(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None
