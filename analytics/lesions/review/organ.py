"""A radiologist's change of a lesion's organ, at every study where it is seen.

The organ a lesion is filed under comes from the segmenter, or from the tissue around a
click for a lesion added by hand (`analytics.lesions.review.additions`); either may be
wrong. The organ is a property of each candidate of a study's segmentation (tracking
pairs only candidates in the same organ), so the change makes a new version of the
segmentation of every study where the lesion has a mask
(`analytics.lesions.review.versions`: the same label map, the lesion's candidates with
the new ``organ`` and an ``organ_set`` entry saying who, when, from what and why), and
its measurements by hand (`ManualFinding`) move with it. The lesion keeps its Tracking
UID and takes a label in its new organ ("Liver 2" becomes "Right lung 1"); tracking,
responses (a lymph node is measured by its short axis) and the risk score are
recomputed in one transaction, with a `ReviewEvent`. A new run of the model keeps the
choice (`analytics.lesions.review.carry_forward`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils import timezone

from analytics.lesions.core.identities import lesion_label
from analytics.lesions.review.common import (
    Reviewer,
    ReviewError,
    patient_lock,
    patient_recompute,
    reason_clean,
    responses_state,
    review_event_write,
    reviewer_require,
    targets_state,
)
from analytics.lesions.review.versions import (
    decisions_rekey,
    label_map_read,
    segmentation_version_write,
    study_segmentation_require,
    version_file_remove,
)
from imaging.models import (
    Lesion,
    LesionMeasurement,
    ManualFinding,
    ReviewEvent,
    Segmentation,
    study_order,
)
from radtrack.provenance import json_safe


@dataclass
class OrganChange:
    """The lesion in its new organ, the event, and the segmentation versions made."""

    lesion: Lesion
    event: ReviewEvent
    versions: list[Segmentation]


def lesion_organ_set(
    *, user: Reviewer, lesion: Lesion, organ: str, reason: str = ""
) -> OrganChange:
    """File ``lesion`` under ``organ`` at every study (module docs). Raises `ReviewError`
    (the field and why) when it cannot; nothing is stored then."""
    reviewer_require(user)
    reason = reason_clean(reason, required=False, action="change a lesion's organ")
    if organ not in Lesion.Organ.values:
        raise ReviewError(f"organ: one of {', '.join(Lesion.Organ.values)}, not {organ!r}")
    versions: list[Segmentation] = []
    try:
        with transaction.atomic():
            patient = patient_lock(lesion.patient_id)
            current = Lesion.objects.filter(pk=lesion.pk, patient=patient).first()
            if current is None:
                raise ReviewError("lesion: it changed since the page was loaded; reload it")
            if current.organ == organ:
                raise ReviewError(f"organ: {current.label} is filed under {organ} already")
            before = {
                "lesion": {"label": current.label, "organ": current.organ},
                "responses": responses_state(patient),
                "targets": targets_state(patient),
            }
            stamp = _stamp(user, current.organ, organ, reason)
            versions = _versions_write(current, organ, stamp, user, reason)
            _by_hand_move(current, organ, versions_made=bool(versions))
            summary, scored = patient_recompute(
                patient, trigger=f"review: {current.label} filed under {organ}"
            )
            moved = Lesion.objects.filter(tracking_uid=current.tracking_uid).first()
            if moved is None or moved.organ != organ:
                raise ReviewError(f"organ: tracking did not keep {current.label} in {organ}")
            # measurements by hand carry the label their lesion has now
            ManualFinding.objects.filter(lesion_uid=moved.tracking_uid).update(label=moved.label)
            event = review_event_write(
                patient=patient,
                user=user,
                action="organ",
                reason=reason,
                before=before,
                after={
                    "lesion": {"label": moved.label, "organ": moved.organ},
                    "segmentation_versions": [v.pk for v in versions],
                },
                measurement=None,
                summary=summary,
                scored=scored,
                subject={"lesion_uid": moved.tracking_uid, "lesion_label": current.label},
            )
    except Exception:
        for version in versions:
            version_file_remove(version)
        raise
    return OrganChange(lesion=moved, event=event, versions=versions)


def _stamp(user: Reviewer, old: str, new: str, reason: str) -> dict[str, Any]:
    """The candidate's ``organ_set`` entry: who filed it under which organ, when, why."""
    return json_safe(
        {
            "organ": new,
            "from": old,
            "user": user.get_username(),
            "user_id": user.pk,
            "at": timezone.now().isoformat(),
            "reason": reason,
        }
    )


def _versions_write(
    lesion: Lesion, organ: str, stamp: dict[str, Any], user: Reviewer, reason: str
) -> list[Segmentation]:
    """A new version of each segmentation holding the lesion, its candidates refiled."""
    components: dict[int, set[int]] = defaultdict(set)
    studies = {}
    rows = LesionMeasurement.objects.filter(lesion=lesion, segmentation__isnull=False)
    for m in rows.select_related("study"):
        if m.component_label is not None:
            components[m.segmentation_id].update(m.component_labels or [m.component_label])
            studies[m.segmentation_id] = m.study
    versions = []
    for segmentation_id, labels in sorted(components.items()):
        images = study_segmentation_require(study=studies[segmentation_id])
        if images.segmentation.pk != segmentation_id:
            raise ReviewError(
                "lesion: a segmentation it was measured on was replaced since the page "
                "was loaded; reload it and change the organ again"
            )
        lesions = [
            {**c, "organ": organ, "organ_set": stamp} if int(c["component_label"]) in labels else c
            for c in images.segmentation.lesions
        ]
        version = segmentation_version_write(
            images=images,
            label_map=label_map_read(images),
            lesions=lesions,
            user=user,
            correction={
                "action": "organ",
                "lesion_uid": lesion.tracking_uid,
                "component_labels": sorted(labels),
                "from": lesion.organ,
                "organ": organ,
                "reason": reason,
            },
        )
        versions.append(version)
        decisions_rekey(old=images.segmentation, new=version, labels={})
    return versions


def _by_hand_move(lesion: Lesion, organ: str, *, versions_made: bool) -> None:
    """Move the lesion's measurements by hand to ``organ``; a lesion measured only by
    hand (no segmentation holds it) is relabelled here, as tracking keeps it as it is."""
    findings = ManualFinding.objects.filter(lesion_uid=lesion.tracking_uid)
    if versions_made:
        findings.update(organ=organ)
        return
    others = Lesion.objects.filter(patient_id=lesion.patient_id).exclude(pk=lesion.pk)
    label = lesion_label(
        organ=organ,
        centroid_baseline_mm=_first_centroid(lesion),
        existing_labels=list(others.values_list("label", flat=True)),
    )
    findings.update(organ=organ, label=label)
    Lesion.objects.filter(pk=lesion.pk).update(organ=organ, label=label)


def _first_centroid(lesion: Lesion) -> tuple[float, float, float]:
    """The centroid of the lesion's earliest measured sighting (0, 0, 0 without one)."""
    rows = LesionMeasurement.objects.filter(lesion=lesion, centroid_x_mm__isnull=False)
    for m in rows.order_by(*study_order("study__")):
        return (m.centroid_x_mm, m.centroid_y_mm, m.centroid_z_mm)
    return (0.0, 0.0, 0.0)
