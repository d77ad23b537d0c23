"""A radiologist's edit of one lesion's mask at one study (brush, eraser, grow, shrink).

The edited mask arrives on the study's own grid, as NIfTI (what the viewer's drawing
saves) or run-length encoded (`mask_from_runs`); a mask of another shape or geometry
is refused with the difference named. Saving makes a new version of the study's
segmentation (`analytics.lesions.review.versions`): the lesion's voxels replaced by the
mask (voxels of other lesions stay theirs), its candidate re-measured from the mask
(`interactive.mask_measure`: diameters, centroid, HU, the drawn volume) with who
edited it and when. The automated mask and every earlier edit stay, each a version.
The measurement becomes "edited" by the user (an override made on the old mask is
withdrawn: the new mask's numbers are in force), and tracking, responses and the risk
score are recomputed in one transaction, with a `ReviewEvent`.
"""

from __future__ import annotations

import gzip
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from django.db import transaction
from django.utils import timezone

from analytics.lesions.review.common import (
    Reviewer,
    ReviewError,
    candidate_row,
    measurement_before,
    measurement_fresh,
    measurement_state,
    patient_lock,
    patient_recompute,
    reason_clean,
    review_event_write,
    reviewer_require,
)
from analytics.lesions.review.versions import (
    StudySegmentation,
    candidate_of,
    decisions_rekey,
    label_map_read,
    segmentation_newest_require,
    segmentation_version_write,
    source_entry,
    study_segmentation_require,
    version_file_remove,
)
from analytics.lesions.tracking.summary import measurement_keys
from imaging.core.geometry.nifti import volume_read_nifti
from imaging.core.geometry.nifti_region import volume_read_nifti_region
from imaging.core.geometry.preprocess import StepRecord
from imaging.core.geometry.volume import Volume
from imaging.core.segmentation.interactive import EDIT_METHOD, mask_measure
from imaging.core.segmentation.interactive_region import ClickRefused
from imaging.models import LesionMeasurement, ReviewEvent, Segmentation

#: How far a mask's header may be from the study's grid and still be on it.
ORIGIN_TOLERANCE_MM = 0.01
SPACING_TOLERANCE_MM = 0.001
DIRECTION_TOLERANCE = 1e-4
#: The most voxels a run-length encoded mask may list runs for (a body-sized grid).
MAX_RUNS = 5_000_000


@dataclass(frozen=True, eq=False)
class MaskInput:
    """An edited mask (bool, ``[k, j, i]``) and the grid its file said it is on (None
    for run-length encoding, which has only a shape)."""

    array: np.ndarray
    grid: Volume | None = None


@dataclass
class MaskEdit:
    """The lesion's measurement after the edit, the event, and the mask's versions."""

    measurement: LesionMeasurement
    event: ReviewEvent
    versions: list[dict[str, Any]]


# --------------------------------------------------------------------------- reading
def mask_from_nifti(data: bytes) -> MaskInput:
    """An edited mask from NIfTI bytes (.nii or .nii.gz; any voxel above 0 is in it)."""
    if not data:
        raise ReviewError("mask: the body is empty; send the NIfTI file of the mask")
    suffix = ".nii.gz" if data[:2] == b"\x1f\x8b" else ".nii"
    if suffix == ".nii" and len(data) < 352:
        raise ReviewError("mask: not a NIfTI file (shorter than its 348-byte header)")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"mask{suffix}"
        path.write_bytes(data)
        try:
            volume = volume_read_nifti(path=path, kind="label")
        except (RuntimeError, ValueError, OSError, gzip.BadGzipFile) as error:
            first = (
                str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            )
            raise ReviewError(f"mask: not a readable 3D NIfTI file ({first[:200]})") from None
    return MaskInput(np.asarray(volume.array) > 0, volume)


def mask_from_runs(payload: Any) -> MaskInput:
    """An edited mask from run-length encoding: ``{"shape_ijk": [ni, nj, nk], "runs":
    [[start, length], ...]}``, each run of voxels inside the mask starting at the flat
    index ``i + ni * (j + nj * k)`` (NIfTI's voxel order)."""
    if not isinstance(payload, dict):
        raise ReviewError(
            'mask: a JSON object {"shape_ijk": [ni, nj, nk], "runs": [[start, length], ...]}'
        )
    shape = payload.get("shape_ijk")
    if (not isinstance(shape, list) or len(shape) != 3
            or not all(isinstance(v, int) and v > 0 for v in shape)):  # fmt: skip
        raise ReviewError("shape_ijk: three positive whole numbers [ni, nj, nk]")
    runs = payload.get("runs")
    if not isinstance(runs, list) or len(runs) > MAX_RUNS:
        raise ReviewError(f"runs: a list of at most {MAX_RUNS} [start, length] pairs")
    try:
        pairs = (
            np.asarray(runs, dtype=np.int64).reshape(-1, 2) if runs else np.zeros((0, 2), np.int64)
        )
    except (TypeError, ValueError):
        raise ReviewError("runs: each run is [start, length], two whole numbers") from None
    ni, nj, nk = shape
    size = ni * nj * nk
    if len(pairs) != len(runs) or np.any(pairs[:, 0] < 0) or np.any(pairs[:, 1] < 1):
        raise ReviewError("runs: each run is [start, length], start >= 0 and length >= 1")
    if len(pairs) and int((pairs[:, 0] + pairs[:, 1]).max()) > size:
        raise ReviewError(f"runs: a run ends beyond the grid's {size} voxels")
    flat = np.zeros(size + 1, dtype=np.int32)
    np.add.at(flat, pairs[:, 0], 1)
    np.add.at(flat, pairs[:, 0] + pairs[:, 1], -1)
    return MaskInput((np.cumsum(flat[:-1]) > 0).reshape(nk, nj, ni))


def _grid_check(mask: MaskInput, label_map: Volume) -> None:
    """A `ReviewError` naming how ``mask`` is off the study's grid, if it is."""
    want = label_map.array.shape
    if mask.array.shape != want:
        got_ijk = "x".join(map(str, mask.array.shape[::-1]))
        raise ReviewError(
            f"mask: its shape {got_ijk} (i x j x k) is not the study's grid "
            f"{'x'.join(map(str, want[::-1]))}; draw it on the study's own grid"
        )
    if mask.grid is None:
        return
    checks = (
        ("spacing", mask.grid.spacing_mm, label_map.spacing_mm, SPACING_TOLERANCE_MM, "mm"),
        ("origin", mask.grid.origin_mm, label_map.origin_mm, ORIGIN_TOLERANCE_MM, "mm"),
        ("direction", mask.grid.direction.ravel(), label_map.direction.ravel(),
         DIRECTION_TOLERANCE, ""),
    )  # fmt: skip
    for name, got, expected, tolerance, unit in checks:
        off = float(np.max(np.abs(np.asarray(got, float) - np.asarray(expected, float))))
        if off > tolerance:
            raise ReviewError(
                f"mask: its {name} differs from the study's grid by {off:.4g}{unit and ' ' + unit} "
                f"(at most {tolerance:g} allowed): {np.round(np.asarray(got, float), 4).tolist()}"
                f" against {np.round(np.asarray(expected, float), 4).tolist()}"
            )


# --------------------------------------------------------------------------- measuring
def _measured(images: StudySegmentation, label_map: Volume, mask: np.ndarray, organ: str):
    """The edited lesion measured on the stored volume around it."""
    kji = np.argwhere(mask)
    lo, hi = kji.min(axis=0)[::-1], kji.max(axis=0)[::-1]
    corners = label_map.index_to_lps(np.array([lo, hi], dtype=float))
    centre = corners.mean(axis=0)
    half = np.abs(corners - centre).max(axis=0) + 12.0
    region = volume_read_nifti_region(
        path=images.volume_path, centre_lps_mm=centre, half_size_mm=half
    )
    start = np.round(label_map.lps_to_index(np.asarray(region.origin_mm))).astype(int)
    nk, nj, ni = region.array.shape
    crop = mask[start[2] : start[2] + nk, start[1] : start[1] + nj, start[0] : start[0] + ni]
    try:
        return mask_measure(study=region, mask=crop, organ=organ)
    except ClickRefused as refused:
        raise ReviewError(str(refused)) from None


def _edited_map(
    label_map: Volume, mask: np.ndarray, lesion_labels: list[int], main: int
) -> tuple[np.ndarray, dict[str, int]]:
    """The label map with the lesion's voxels replaced by ``mask`` (other lesions keep
    theirs), and the voxel counts of the change."""
    array = label_map.array.copy()
    own = np.isin(array, lesion_labels)
    others = (array > 0) & ~own
    new = mask & ~others
    array[own] = 0
    array[new] = main
    counts = {
        "voxels": int(new.sum()),
        "voxels_added": int((new & ~own).sum()),
        "voxels_removed": int((own & ~new).sum()),
        "voxels_left_to_other_lesions": int((mask & others).sum()),
    }
    return array, counts


def mask_versions(segmentation: Segmentation) -> list[dict[str, Any]]:
    """The versions of a study's segmentation, newest first: who made each, when, what."""
    out = []
    row: Segmentation | None = segmentation
    while row is not None:
        out.append(
            {
                "segmentation": row.pk,
                "made_by": row.created_by.get_username() if row.created_by else row.model_name,
                "at": row.created_at.isoformat(),
                "action": (row.correction or {}).get("action", "automated"),
            }
        )
        row = Segmentation.objects.select_related("created_by").filter(pk=row.parent_id).first()
    return out


# --------------------------------------------------------------------------- the service
@dataclass(frozen=True, eq=False)
class _Edit:
    """An edit checked and measured, ready to store."""

    images: StudySegmentation
    label_map: Volume
    array: np.ndarray
    main: int
    labels: list[int]
    counts: dict[str, int]
    lesions: list[dict[str, Any]]


def measurement_mask_replace(
    *, user: Reviewer, measurement: LesionMeasurement, mask: MaskInput, reason: str = ""
) -> MaskEdit:
    """Replace the lesion's mask at the measurement's study by ``mask`` (module docs).
    Raises `ReviewError` (the field and why) when it cannot; nothing is stored then."""
    reviewer_require(user)
    reason = reason_clean(reason, required=False, action="edit a mask")
    edit = _edit_prepare(measurement, mask, user, reason)
    return _edit_store(edit, measurement, user, reason)


def _edit_prepare(m: LesionMeasurement, mask: MaskInput, user: Reviewer, reason: str) -> _Edit:
    """The edit checked against the study's grid and the lesion re-measured from it."""
    if m.manual_finding_id is not None or m.component_label is None or not m.is_found:
        raise ReviewError(
            f"measurement: {m.lesion.label} has no mask at this study "
            f"({m.get_status_display().lower()}); add it with a click instead "
            "(POST /api/v1/studies/<study_instance_uid>/lesions/)"
        )
    images = study_segmentation_require(study=m.study)
    if images.segmentation.pk != m.segmentation_id:
        raise ReviewError(
            "measurement: its segmentation was replaced since the page was loaded; reload "
            "it and edit again"
        )
    label_map = label_map_read(images)
    _grid_check(mask, label_map)
    if not mask.array.any():
        raise ReviewError(
            "mask: it holds no voxel; to take the lesion out, reject it as a false positive"
        )
    labels = sorted({int(c) for c in (m.component_labels or [m.component_label])})
    main = int(m.component_label)
    array, counts = _edited_map(label_map, mask.array, labels, main)
    if counts["voxels"] == 0:
        raise ReviewError("mask: every voxel of it belongs to other lesions")
    measured = _measured(images, label_map, array == main, m.lesion.organ)
    record = StepRecord(name="mask_edit", parameters={"method": EDIT_METHOD},
                        versions={}, seconds=0.0, details=counts)  # fmt: skip
    source = source_entry(kind="edited", user=user, record=record, reason=reason,
                          study_instance_uid=m.study.study_instance_uid,
                          previous={"segmentation": images.segmentation.pk,
                                    "component_labels": labels})  # fmt: skip
    lesions = [c for c in images.segmentation.lesions if int(c["component_label"]) not in labels]
    lesions.append(candidate_of(measured, main, source))
    return _Edit(images, label_map, array, main, labels, counts, lesions)


def _edit_store(edit: _Edit, m: LesionMeasurement, user: Reviewer, reason: str) -> MaskEdit:
    """The new version written, decisions re-keyed, the row marked edited, the patient
    rebuilt and rescored, and the event: one transaction (the file removed if it fails)."""
    version = None
    try:
        with transaction.atomic():
            patient = patient_lock(m.lesion.patient_id)
            current = measurement_fresh(m)
            segmentation_newest_require(edit.images.segmentation)
            before = measurement_before(current, patient)
            version = segmentation_version_write(
                images=edit.images,
                label_map=edit.label_map.with_array(edit.array, kind="label"),
                lesions=edit.lesions,
                user=user,
                correction={
                    "action": "mask_edit",
                    "component_label": edit.main,
                    "lesion_uid": m.lesion.tracking_uid,
                    "reason": reason,
                    **edit.counts,
                },  # fmt: skip
            )
            dropped = decisions_rekey(
                old=edit.images.segmentation,
                new=version,
                labels={c: None for c in edit.labels if c != edit.main},
            )
            _review_mark(current.pk, user, reason)
            summary, scored = patient_recompute(
                patient, trigger=f"review: mask of {m.lesion.label} edited"
            )
            rebuilt = candidate_row(version.pk, edit.main)
            if rebuilt is None:
                raise ReviewError("mask: the edited lesion was not kept by tracking")
            versions = mask_versions(version)
            event = review_event_write(
                patient=patient,
                user=user,
                action="mask_edit",
                reason=reason,
                before=before,
                after={
                    "measurement": measurement_state(rebuilt),
                    "mask": edit.counts,
                    "versions": versions,
                    "dropped": dropped,
                },  # fmt: skip
                measurement=rebuilt,
                summary=summary,
                scored=scored,
                subject={
                    **measurement_keys(current),
                    "segmentation": version.pk,
                    "component_labels": [edit.main],
                },  # fmt: skip
            )
    except Exception:
        version_file_remove(version)
        raise
    return MaskEdit(measurement=rebuilt, event=event, versions=versions)


def _review_mark(pk: int, user: Reviewer, reason: str) -> None:
    """The row (re-keyed to the new version) is the radiologist's now: edited by them,
    its old override withdrawn; re-tracking carries this to the rebuilt row."""
    LesionMeasurement.objects.filter(pk=pk).update(
        review_state=LesionMeasurement.Review.EDITED,
        reviewed_by=user if getattr(user, "pk", None) else None,
        reviewed_at=timezone.now(),
        review_reason=reason or "mask edited",
        override_volume_ml=None,
        override_longest_diameter_mm=None,
        override_short_axis_mm=None,
    )
