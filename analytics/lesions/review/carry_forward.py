"""A radiologist's corrections carried onto a new automated segmentation of the series.

A new run of the model (``manage.py process --force``, new images) makes its output the
series' newest segmentation, so lesions a radiologist added or whose mask they edited
(`analytics.lesions.review.additions`, `.masks`) would drop out of tracking. Before the
patient is re-tracked (`analytics.lesions.refresh`), every study whose newest
segmentation is the model's and whose series has a correction version before it gets a
new version on top of the model's output: each drawn candidate of the latest correction
(its ``source`` says added, propagated or edited, who and when) is re-applied as the
voxel set stored in that correction's label map (the same study grid), replacing the
automated components it overlaps, as the original edit did. The candidate entry, with
its source, is copied, so tracking carries its links, reviews and Tracking UID to it
(`analytics.lesions.tracking.carry` pairs candidates by centroid). A model's candidate
a radiologist only filed under another organ (`analytics.lesions.review.organ`) gives
its organ to the new candidate that covers most of its voxels. A correction that
cannot be re-applied (the grid changed, the label map is missing) is listed with the
reason and the run is flagged; it is never dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from analytics.lesions.review.masks import (
    DIRECTION_TOLERANCE,
    ORIGIN_TOLERANCE_MM,
    SPACING_TOLERANCE_MM,
)
from analytics.lesions.review.versions import (
    StudySegmentation,
    label_map_read,
    segmentation_version_write,
    study_segmentation,
    version_file_remove,
)
from imaging.core.geometry.nifti import volume_read_nifti
from imaging.core.geometry.volume import Volume
from imaging.models import Segmentation, Study
from imaging.store import derived_local
from patients.models import Patient


@dataclass
class CarryForward:
    """What carrying the corrections forward did for one patient."""

    #: corrections (drawn candidates) re-applied on a new automated segmentation
    carried: int = 0
    #: the label maps of the new versions made (removed again if the transaction fails)
    versions: list[Segmentation] = field(default_factory=list)
    #: one entry per correction that could not be re-applied, with the reason
    not_carried: list[dict[str, Any]] = field(default_factory=list)


def _latest_correction(newest: Segmentation) -> Segmentation | None:
    """The series' latest correction version made before ``newest`` (the model's)."""
    return (
        Segmentation.objects.filter(series_id=newest.series_id, parent__isnull=False)
        .filter(created_at__lte=newest.created_at)
        .exclude(pk=newest.pk)
        .select_related("created_by")
        .order_by("-created_at", "-pk")
        .first()
    )


def _grid_difference(old: Volume, new: Volume) -> str:
    """Why two label maps are not on one grid, or "" when they are."""
    if old.array.shape != new.array.shape:
        return (
            f"the study's grid changed from {'x'.join(map(str, old.array.shape[::-1]))} to "
            f"{'x'.join(map(str, new.array.shape[::-1]))} voxels (i x j x k)"
        )
    checks = (
        ("spacing", old.spacing_mm, new.spacing_mm, SPACING_TOLERANCE_MM),
        ("origin", old.origin_mm, new.origin_mm, ORIGIN_TOLERANCE_MM),
        ("direction", old.direction.ravel(), new.direction.ravel(), DIRECTION_TOLERANCE),
    )
    for name, a, b, tolerance in checks:
        off = float(np.max(np.abs(np.asarray(a, float) - np.asarray(b, float))))
        if off > tolerance:
            return f"the study's grid {name} changed by {off:.4g} (at most {tolerance:g})"
    return ""


def _drawn(correction: Segmentation) -> list[dict[str, Any]]:
    """The candidates of a correction version a radiologist drew (they have a source)."""
    return [c for c in correction.lesions if isinstance(c.get("source"), dict)]


def _refiled(correction: Segmentation) -> list[dict[str, Any]]:
    """The model's candidates a radiologist filed under another organ (and drew nothing
    of): only their organ is carried (`analytics.lesions.review.organ`)."""
    return [
        c
        for c in correction.lesions
        if isinstance(c.get("organ_set"), dict) and not isinstance(c.get("source"), dict)
    ]


def _refile(
    array: np.ndarray, old_map: Volume, refiled: list[dict[str, Any]], lesions: list[dict]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The new candidate list with each refiled candidate's organ given to the new
    candidate that covers most of its old voxels; and the refiled ones none covers."""
    organ_of: dict[int, dict[str, Any]] = {}
    lost = []
    for candidate in refiled:
        under = array[old_map.array == int(candidate["component_label"])]
        labels, counts = np.unique(under[under > 0], return_counts=True)
        if len(labels) == 0:
            lost.append(candidate)
            continue
        organ_of[int(labels[np.argmax(counts)])] = candidate
    out = [
        {**c, "organ": organ_of[label]["organ"], "organ_set": organ_of[label]["organ_set"]}
        if (label := int(c["component_label"])) in organ_of
        and not isinstance(c.get("source"), dict)
        else c
        for c in lesions
    ]
    return out, lost


def _listed(study: Study, correction: Segmentation, candidate: dict, reason: str) -> dict:
    source = candidate.get("source") or {
        "kind": "refiled",
        **{k: v for k, v in (candidate.get("organ_set") or {}).items() if k in ("user", "at")},
    }
    return {
        "study_instance_uid": study.study_instance_uid,
        "segmentation": correction.pk,
        "component_label": int(candidate["component_label"]),
        "kind": source.get("kind", ""),
        "user": source.get("user", ""),
        "at": source.get("at", ""),
        "reason": reason,
        "message": (
            f"the {source.get('kind', 'drawn')} lesion (candidate {candidate['component_label']} "
            f"of segmentation {correction.pk}, by {source.get('user', '?')}) was not carried "
            f"onto the new automated segmentation: {reason}; needs attention"
        ),
    }


def _reapply(
    label_map: Volume, old_map: Volume, drawn: list[dict[str, Any]], automated: list[dict]
) -> tuple[np.ndarray, list[dict[str, Any]], list[int]]:
    """The model's label map with each drawn candidate's voxels (from ``old_map``) put
    back, the automated components they overlap removed; the new candidate list and the
    automated components replaced."""
    array = label_map.array.astype(np.int64)
    old = old_map.array
    voxel_sets = [old == int(c["component_label"]) for c in drawn]
    replaced = sorted({int(v) for mask in voxel_sets for v in np.unique(array[mask]) if v > 0})
    array[np.isin(array, replaced)] = 0
    kept = [c for c in automated if int(c["component_label"]) not in replaced]
    used = {int(c["component_label"]) for c in kept} | {int(v) for v in np.unique(array)}
    lesions = list(kept)
    for candidate, mask in zip(drawn, voxel_sets, strict=True):
        label = int(candidate["component_label"])
        if label in used or label == 0:
            label = max(used) + 1
        used.add(label)
        array[mask] = label
        lesions.append({**candidate, "component_label": label})
    dtype = np.uint8 if array.max(initial=0) <= 255 else np.uint16
    return array.astype(dtype), lesions, replaced


def _study_carry(study: Study, result: CarryForward) -> None:
    """Carry the series' latest correction onto its new automated segmentation."""
    images = study_segmentation(study=study)
    if images is None or images.segmentation.parent_id is not None:
        return
    correction = _latest_correction(images.segmentation)
    drawn = _drawn(correction) if correction is not None else []
    refiled = _refiled(correction) if correction is not None else []
    if not drawn and not refiled:
        return
    try:
        label_map = label_map_read(images)
        old_map = volume_read_nifti(path=derived_local(correction.mask_path), kind="label")
    except (FileNotFoundError, OSError, RuntimeError, ValueError) as error:
        reason = f"a label map could not be read ({type(error).__name__})"
        result.not_carried.extend(_listed(study, correction, c, reason) for c in drawn + refiled)
        return
    difference = _grid_difference(old_map, label_map)
    if difference:
        result.not_carried.extend(
            _listed(study, correction, c, difference) for c in drawn + refiled
        )
        return
    array, lesions, replaced = _reapply(label_map, old_map, drawn, images.segmentation.lesions)
    lesions, lost = _refile(array, old_map, refiled, lesions)
    result.not_carried.extend(
        _listed(study, correction, c, "no candidate of the new segmentation covers it")
        for c in lost
    )
    version = segmentation_version_write(
        images=StudySegmentation(study, images.segmentation, images.run),
        label_map=label_map.with_array(array, kind="label"),
        lesions=lesions,
        user=correction.created_by,
        correction={
            "action": "carry_forward",
            "from_segmentation": correction.pk,
            "carried": [int(c["component_label"]) for c in drawn],
            "refiled": [int(c["component_label"]) for c in refiled if c not in lost],
            "automated_components_replaced": replaced,
        },
    )
    result.versions.append(version)
    result.carried += len(drawn) + len(refiled) - len(lost)


def corrections_carry_forward(*, patient: Patient) -> CarryForward:
    """Carry every study's corrections onto its new automated segmentation (module
    docs). Call inside the caller's transaction, under the patient's lock; the new
    caller removes the new label maps (`carried_files_remove`) if its transaction fails."""
    result = CarryForward()
    try:
        for study in Study.objects.filter(patient=patient).exclude(chosen_series=None):
            _study_carry(study, result)
    except Exception:
        carried_files_remove(result)
        raise
    return result


def carried_files_remove(result: CarryForward) -> None:
    """Remove the label maps of versions whose transaction failed (no row keeps them)."""
    for version in result.versions:
        version_file_remove(version)
