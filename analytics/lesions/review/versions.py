"""A radiologist's correction of a study's lesions as a new version of its segmentation.

The model's output and every earlier version stay (`Segmentation.parent`), each with its
own label map and candidate list; the new one names who made it and what it changed
(`Segmentation.created_by`, ``correction``), and each candidate a radiologist drew says
so in its ``source`` (kind ``added``, ``propagated`` or ``edited``, who, when, how).
Tracking follows the newest version of each series, so the correction is what every
number is computed from. Because the new version's candidates correspond one to one
to the old one's, the decisions recorded on the old candidates (reviews, links, target
choices) are re-keyed onto the new ones (`decisions_rekey`) before the rebuild, rather
than paired by position as for a new run of the model.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from django.utils import timezone

from analytics.lesions.review.common import Reviewer, ReviewError
from imaging.core.geometry.nifti import volume_read_nifti, volume_write_nifti
from imaging.core.geometry.nifti_region import volume_read_nifti_region
from imaging.core.geometry.preprocess import StepRecord
from imaging.core.geometry.volume import Volume
from imaging.core.segmentation.measure import LesionMeasurement as Measured
from imaging.models import LesionLink, LesionMeasurement, ProcessingRun, Segmentation, Study
from imaging.pipeline.storage import candidate_entry
from imaging.store import data_dir, derived_local, derived_publish
from radtrack.provenance import json_safe

#: Folder (under the data folder) of the label maps radiologists' corrections make.
CORRECTIONS_FOLDER = "corrections"


@dataclass(frozen=True)
class StudySegmentation:
    """A study's newest segmentation and the stored volume it was made on."""

    study: Study
    segmentation: Segmentation
    run: ProcessingRun

    @property
    def volume_path(self) -> Path:
        """A local path of the stored volume (fetched when another machine wrote it)."""
        return derived_local(self.run.volume_path)

    @property
    def mask_path(self) -> Path:
        """A local path of the segmentation's label map."""
        return derived_local(self.segmentation.mask_path)


def study_segmentation(*, study: Study) -> StudySegmentation | None:
    """The newest segmentation of the study's analysed series with its stored volume,
    or None when the study has none yet (not processed)."""
    if study.chosen_series_id is None:
        return None
    segmentation = (
        Segmentation.objects.filter(series_id=study.chosen_series_id)
        .select_related("processing_run", "series")
        .order_by("-created_at", "-pk")
        .first()
    )
    if segmentation is None or not segmentation.mask_path:
        return None
    run = segmentation.processing_run
    if run is None or not run.volume_path:
        run = (
            ProcessingRun.objects.filter(
                series_id=study.chosen_series_id, status=ProcessingRun.Status.SUCCEEDED
            )
            .exclude(volume_path="")
            .order_by("-finished_at", "-pk")
            .first()
        )
    if run is None:
        return None
    return StudySegmentation(study, segmentation, run)


def study_segmentation_require(*, study: Study) -> StudySegmentation:
    """`study_segmentation`, or a `ReviewError` saying the study is not processed yet."""
    images = study_segmentation(study=study)
    if images is None:
        raise ReviewError(
            "study: it has no segmentation and stored volume yet (not processed); "
            "correct its lesions once it is"
        )
    for relative in (images.run.volume_path, images.segmentation.mask_path):
        try:
            present = derived_local(relative).is_file()
        except FileNotFoundError:
            present = False
        if not present:
            raise ReviewError(f"study: its file {Path(relative).name} is missing from the store")
    return images


def region_read(images: StudySegmentation, centre_lps_mm: np.ndarray, half_mm: float) -> Volume:
    """The stored volume (HU) within ``half_mm`` of ``centre_lps_mm`` (study LPS mm)."""
    try:
        return volume_read_nifti_region(
            path=images.volume_path, centre_lps_mm=centre_lps_mm, half_size_mm=half_mm
        )
    except ValueError as error:
        raise ReviewError(f"seed_lps_mm: outside the study's images ({error})") from None


def label_map_read(images: StudySegmentation) -> Volume:
    """The segmentation's label map (component labels; 0 is background)."""
    return volume_read_nifti(path=images.mask_path, kind="label")


def label_at(label_map: Volume, point_lps_mm: np.ndarray) -> int:
    """The label-map value at a point (study LPS mm); 0 outside the grid."""
    ijk = np.round(label_map.lps_to_index(np.asarray(point_lps_mm, dtype=float))).astype(int)
    if np.any(ijk < 0) or np.any(ijk >= np.asarray(label_map.shape_ijk)):
        return 0
    return int(label_map.array[ijk[2], ijk[1], ijk[0]])


def mask_paste(label_map: Volume, mask: Volume) -> np.ndarray:
    """``mask`` (a box of the same grid, 0/1) as a bool array of the whole label map."""
    start = np.round(label_map.lps_to_index(np.asarray(mask.origin_mm))).astype(int)
    out = np.zeros(label_map.array.shape, dtype=bool)
    nk, nj, ni = mask.array.shape
    out[start[2] : start[2] + nk, start[1] : start[1] + nj, start[0] : start[0] + ni] = (
        mask.array > 0
    )
    return out


def next_label(segmentation: Segmentation, label_map: Volume) -> int:
    """A component label free in the candidate list and in the label map."""
    listed = [int(c["component_label"]) for c in segmentation.lesions]
    return max([*listed, int(label_map.array.max(initial=0))]) + 1


def _person_name(user: Reviewer) -> str:
    """The user as a DICOM Person Name (PS3.5 6.2.1.2): "Family^Given", or the
    username as a one-component name."""
    family, given = getattr(user, "last_name", ""), getattr(user, "first_name", "")
    return f"{family}^{given}" if family else f"{user.get_username()}^"


def source_entry(
    *, kind: str, user: Reviewer, record: StepRecord | None, **details: Any
) -> dict[str, Any]:
    """A drawn candidate's ``source``: who drew it, when, and how (method, parameters)."""
    return json_safe(
        {
            "kind": kind,
            "user": user.get_username(),
            "user_id": user.pk,
            "person_name": _person_name(user),
            "at": timezone.now().isoformat(),
            "method": record.parameters.get("method", "") if record else "",
            "parameters": record.parameters if record else {},
            "details": record.details if record else {},
            **details,
        }
    )


def candidate_of(measured: Measured, label: int, source: dict[str, Any]) -> dict[str, Any]:
    """The `Segmentation.lesions` entry of a drawn candidate."""
    entry = json_safe(candidate_entry(measured))
    entry["component_label"] = label
    entry["source"] = source
    return entry


def segmentation_version_write(
    *,
    images: StudySegmentation,
    label_map: Volume,
    lesions: list[dict[str, Any]],
    user: Reviewer,
    correction: dict[str, Any],
) -> Segmentation:
    """A new version of the study's segmentation: ``label_map`` (read from the parent,
    then changed) written beside the model's output, and a row naming its parent, who
    made it and what it changed. Call inside the caller's transaction; the caller
    removes the file (`version_file_remove`) when the transaction fails."""
    parent = images.segmentation
    relative = (
        f"{CORRECTIONS_FOLDER}/{parent.series.series_instance_uid}/"
        f"segmentation-{parent.pk}-{uuid.uuid4().hex[:12]}.nii.gz"
    )
    target = data_dir() / relative
    partial = target.with_name(f".{target.name}.partial.nii.gz")
    volume_write_nifti(volume=label_map, path=partial)
    partial.replace(target)  # readers never see a half-written file
    try:
        derived_publish(relative)  # readable by every machine (imaging.store)
        return Segmentation.objects.create(
            series=parent.series,
            processing_run=images.run,
            mask_path=relative,
            probability_path=parent.probability_path,
            model_name=parent.model_name,
            model_version=parent.model_version,
            model_sha256=parent.model_sha256,
            steps=parent.steps,
            lesions=json_safe(lesions),
            parent=parent,
            created_by=user if getattr(user, "pk", None) else None,
            correction=json_safe(correction),
        )
    except Exception:
        target.unlink(missing_ok=True)
        raise


def segmentation_newest_require(segmentation: Segmentation) -> None:
    """A `ReviewError` unless ``segmentation`` is still its series' newest (another
    correction or a new run came in meanwhile: the change would be made on a stale one)."""
    newest = (
        Segmentation.objects.filter(series_id=segmentation.series_id)
        .order_by("-created_at", "-pk")
        .values_list("pk", flat=True)
        .first()
    )
    if newest != segmentation.pk:
        raise ReviewError(
            "study: its segmentation changed while the correction was being made (a new "
            "run or another correction); make it again"
        )


def version_file_remove(segmentation: Segmentation | None) -> None:
    """Remove the label map of a version whose transaction failed (no row keeps it)."""
    if segmentation is not None and segmentation.mask_path.startswith(CORRECTIONS_FOLDER):
        (data_dir() / segmentation.mask_path).unlink(missing_ok=True)


def decisions_rekey(
    *, old: Segmentation, new: Segmentation, labels: dict[int, int | None]
) -> list[str]:
    """Move every decision recorded on ``old``'s candidates to ``new``'s: measurement
    rows (their reviews and target choices) and links, candidate ``c`` becoming
    ``labels.get(c, c)``; a link whose candidate or anchor is dropped (None) is deleted.
    Returns one sentence per decision dropped."""
    dropped: list[str] = []

    def moved(component: int | None) -> int | None:
        return None if component is None else labels.get(int(component), int(component))

    for m in LesionMeasurement.objects.filter(segmentation=old):
        components = [c for c in (moved(c) for c in (m.component_labels or [])) if c is not None]
        main = moved(m.component_label)
        m.segmentation = new
        m.component_label = main if main is not None else (components[0] if components else None)
        m.component_labels = sorted(set(components))
        m.save(update_fields=["segmentation", "component_label", "component_labels"])
    for link in LesionLink.objects.filter(segmentation=old):
        here = moved(link.component_label)
        if (
            here is None
            or LesionLink.objects.filter(segmentation=new, component_label=here).exists()
        ):
            dropped.append(f"the link of candidate {link.component_label} was dropped: its "
                           "candidate is now part of the edited lesion")  # fmt: skip
            link.delete()
            continue
        LesionLink.objects.filter(pk=link.pk).update(segmentation=new, component_label=here)
    for link in LesionLink.objects.filter(anchor_segmentation=old):
        anchor = moved(link.anchor_component_label)
        if anchor is None:
            dropped.append(f"a link anchored on candidate {link.anchor_component_label} was "
                           "dropped: that candidate is now part of the edited lesion")  # fmt: skip
            link.delete()
            continue
        LesionLink.objects.filter(pk=link.pk).update(
            anchor_segmentation=new, anchor_component_label=anchor
        )
    return dropped
