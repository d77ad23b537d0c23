"""What makes two studies the same for training and validation: a study of the locked
set must not be trained on under any name, so studies are matched by what they are,
not by their row.

Two studies are the same data when they share the patient (the set is kept disjoint
from training by patient, as a patient-level split: the same lesions at another time
point would be learnt), a SOP Instance UID, a stored file or data set (SHA-256), or
the volume the model is fed: the same pixels re-sent under other UIDs, even under
another patient, give the same volume on the same grid (compared only when the grids
agree, so a volume is read only for a likely copy).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from imaging.core.geometry.nifti import volume_read_nifti
from imaging.modelhub.selectors import latest_segmentation
from imaging.models import Instance, Study
from imaging.store import derived_local

_GEOMETRY_KEYS = ("shape_ijk", "spacing_mm", "origin_mm", "direction")


@dataclass
class StudyContent:
    """A study's identities: its patient, instances and the volume of its latest run."""

    study_id: int
    study_instance_uid: str
    patient_id: int
    patient_label: str
    sop_instance_uids: set[str] = field(default_factory=set)
    file_sha256: set[str] = field(default_factory=set)
    volume_path: str = ""
    geometry: str = ""

    def volume_sha256(self) -> str | None:
        return _volume_sha256(self.volume_path) if self.volume_path else None


@lru_cache(maxsize=256)
def _volume_sha256(volume_path: str) -> str | None:
    """SHA-256 of a stored volume's voxels (HU rounded to int16); None when unreadable."""
    try:
        volume = volume_read_nifti(path=derived_local(volume_path), kind="scalar")
    except (OSError, RuntimeError):
        return None
    hu = np.clip(np.round(volume.array), -32768, 32767).astype("<i2")
    return hashlib.sha256(hu.tobytes()).hexdigest()


def _geometry_key(geometry: dict[str, Any] | None) -> str:
    if not geometry or any(k not in geometry for k in _GEOMETRY_KEYS):
        return ""
    return json.dumps(
        [np.round(np.asarray(geometry[k], dtype=float), 4).tolist() for k in _GEOMETRY_KEYS]
    )


def study_contents(study_ids: set[int]) -> dict[int, StudyContent]:
    """`StudyContent` of each study (its latest run: one query per study; its instances:
    one query for all)."""
    out: dict[int, StudyContent] = {}
    for study in Study.objects.filter(pk__in=study_ids).select_related("patient"):
        content = StudyContent(study_id=study.pk, study_instance_uid=study.study_instance_uid,
                               patient_id=study.patient_id, patient_label=str(study.patient))  # fmt: skip
        segmentation = latest_segmentation(study)
        run = segmentation.processing_run if segmentation else None
        if run is not None and run.volume_path:
            content.volume_path = run.volume_path
            content.geometry = _geometry_key(run.volume_geometry)
        out[study.pk] = content
    rows = Instance.objects.filter(series__study_id__in=study_ids).values_list(
        "series__study_id", "sop_instance_uid", "sha256", "dataset_sha256"
    )
    for study_id, uid, sha, dataset_sha in rows:
        out[study_id].sop_instance_uids.add(uid)
        out[study_id].file_sha256 |= {h for h in (sha, dataset_sha) if h}
    return out


def same_data(a: StudyContent, b: StudyContent) -> str | None:
    """Why ``a`` and ``b`` are the same data (see the module docs), or None."""
    if a.study_id == b.study_id:
        return "the same study"
    if a.patient_id == b.patient_id:
        return f"the same patient ({a.patient_label})"
    if a.sop_instance_uids & b.sop_instance_uids:
        return "the same DICOM instances (SOP Instance UIDs)"
    if a.file_sha256 & b.file_sha256:
        return "the same DICOM files (SHA-256)"
    if a.geometry and a.geometry == b.geometry:
        digest = a.volume_sha256()
        if digest is not None and digest == b.volume_sha256():
            return "the same images (identical voxels on the same grid) under other UIDs"
    return None


def first_match(
    content: StudyContent, others: list[StudyContent]
) -> tuple[StudyContent, str] | None:
    """The first of ``others`` that is the same data as ``content``, and why."""
    for other in others:
        why = same_data(content, other)
        if why is not None:
            return other, why
    return None


def trained_on_studies(model: Any) -> set[int]:
    """The studies a `SegmentationModel` version learnt from, its ancestors' included:
    its ``training`` names them by StudyInstanceUID (``studies``) and by training
    example (``examples``)."""
    from imaging.modelhub.models import TrainingExample

    uids: set[str] = set()
    examples: set[int] = set()
    row, seen = model, set()
    while row is not None and row.pk not in seen:
        seen.add(row.pk)
        training = row.training or {}
        uids |= {str(u) for u in training.get("studies", []) or []}
        examples |= {int(e) for e in training.get("examples", []) or [] if str(e).isdigit()}
        row = row.parent
    ids = set(Study.objects.filter(study_instance_uid__in=uids).values_list("pk", flat=True))
    ids |= set(TrainingExample.objects.filter(pk__in=examples).values_list("study_id", flat=True))
    return ids


def trained_on_matches(model: Any, study_ids: set[int]) -> dict[int, str]:
    """Which of ``study_ids`` ``model`` (or a version it descends from) was trained on,
    under any name (`same_data`), each with why: ``{study_id: reason}``."""
    trained = trained_on_studies(model)
    if not trained or not study_ids:
        return {}
    contents = study_contents(trained | study_ids)
    learnt = [contents[i] for i in sorted(trained) if i in contents]
    out = {}
    for study_id in sorted(study_ids):
        if study_id not in contents:
            continue
        match = first_match(contents[study_id], learnt)
        if match is not None:
            other, why = match
            out[study_id] = f"{model.label} was trained on study {other.study_instance_uid}: {why}"
    return out
