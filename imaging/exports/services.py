"""Export a study's lesions as DICOM SEG and SR files, and send them to the PACS.

Gathers a study's measurements (values in force; rejected false positives left out),
its segmentation's label map and the source series' headers, builds the objects with
`imaging.core.dicom.seg_sr`, writes them under ``DATA_DIR/exports/dicom/`` and, when
asked, stores them on the PACS (STOW-RS). UIDs are derived from the content, so
exporting unchanged results again gives the same objects (the PACS keeps one copy),
while a radiologist's change gives a new SR instance in the same series that names the
SR it replaces as its predecessor (every SR written is a `DicomExportRecord`).

A split lesion's segment holds all its fragments (``component_labels``), as its
measurements do. When the run that made the mask corrected the volume's orientation
(a flipped header; the voxels are untouched), the mask is put back on the source
header by voxel index, using the geometry the run recorded before the correction; a run
flagged as corrected without that record is refused rather than guessed at.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from django.conf import settings

from imaging.core.dicom.seg_sr import (
    DicomExportError,
    ExportedLesion,
    ExportUids,
    PredecessorDocument,
    SegmentationModel,
    TimePoint,
    dataset_write,
    measurement_report_build,
    segmentation_build,
)
from imaging.core.dicom.write import synthetic_uid
from imaging.core.geometry.nifti import volume_read_nifti
from imaging.core.geometry.volume import Volume
from imaging.ingest.pacs import PacsConfig, pacs_instances_send
from imaging.models import (
    DicomExportRecord,
    Instance,
    LesionMeasurement,
    PacsTransfer,
    Segmentation,
    Series,
    Study,
)
from imaging.store import file_sha256, object_path
from patients.audit import audit_record
from patients.models import Patient

EXPORT_FOLDER = "exports/dicom"


@dataclass
class StudyDicomExport:
    """What was exported for one study: files relative to DATA_DIR, and any send."""

    study_id: int
    sr_path: str
    seg_path: str = ""
    lesions: int = 0
    segments: int = 0
    transfer: PacsTransfer | None = None

    def line(self) -> str:
        text = f"study {self.study_id}: {self.lesions} lesions, {self.segments} segments"
        text += f"; SEG {self.seg_path or '(none: no lesion segmented)'}; SR {self.sr_path}"
        if self.transfer is not None:
            text += f"; sent: {self.transfer.status}"
            if self.transfer.error:
                text += f" ({self.transfer.error})"
        return text


@dataclass
class PatientDicomExport:
    exports: list[StudyDicomExport] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _software_version() -> str:
    try:
        return f"radtrack {metadata.version('radtrack')}"
    except metadata.PackageNotFoundError:
        return "radtrack"


def _time_point(study: Study) -> TimePoint:
    """The study's place among its patient's studies that have lesion measurements."""
    studies = list(
        Study.objects.filter(patient_id=study.patient_id, lesion_measurements__isnull=False)
        .distinct()
        .chronological()
        .values_list("pk", flat=True)
    )
    return TimePoint(order=studies.index(study.pk) + 1)


def _headers(series: Series) -> list[pydicom.Dataset]:
    """The series' stored instances' headers (no pixel data), for references and evidence."""
    instances = list(Instance.objects.filter(series=series).order_by("pk"))
    if not instances:
        raise DicomExportError(f"series {series.pk} has no stored instances to refer to")
    headers = []
    for instance in instances:
        path = object_path(instance.stored_path)
        try:
            headers.append(pydicom.dcmread(path, stop_before_pixels=True))
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            raise DicomExportError(
                f"stored file of instance {instance.pk} ({instance.stored_path}) cannot be "
                f"read: {exc}"
            ) from exc
    return headers


def _lesion(m: LesionMeasurement, *, segmentation_id: int | None) -> ExportedLesion:
    on_mask = m.segmentation_id == segmentation_id and m.component_label is not None
    label = m.component_label if on_mask else None
    fragments = tuple(int(c) for c in (m.component_labels or [])) if on_mask else ()
    return ExportedLesion(
        tracking_uid=m.lesion.tracking_uid,
        tracking_id=m.lesion.label,
        organ=m.lesion.organ,
        volume_ml=m.effective_volume_ml,
        longest_diameter_mm=m.effective_longest_diameter_mm,
        short_axis_mm=m.effective_short_axis_mm,
        component_label=label,
        component_labels=fragments,
    )


#: Tolerances for matching the mask's header to the corrected geometry a run recorded.
_ORIGIN_TOLERANCE_MM = 1e-3
_DIRECTION_TOLERANCE = 1e-4


def _label_map_on_source_header(label_map: Volume, segmentation: Segmentation) -> Volume:
    """The mask with the header of the volume as read from DICOM, before any correction.

    The orientation step mirrors only the header (direction and origin), never the array,
    so voxel (i, j, k) of the stored mask is voxel (i, j, k) of the source series. The
    geometry before and after comes from the run's ``orientation_standardise`` step.
    """
    run = segmentation.processing_run
    flags = run.flags if run is not None else None
    if not isinstance(flags, dict) or not flags.get("orientation_corrected"):
        return label_map
    step = next(
        (
            s
            for s in run.steps or []
            if isinstance(s, dict) and s.get("name") == "orientation_standardise"
        ),
        None,
    )
    result = (step or {}).get("result") or {}
    keys = ("direction_before", "direction_after", "origin_before_mm", "origin_after_mm")
    if not all(result.get(key) is not None for key in keys):
        raise DicomExportError(
            f"processing run {run.pk} corrected the volume's orientation but did not record "
            "the geometry before the correction, so the mask cannot be placed on the source "
            "images; not exported until a person has reviewed the orientation and the study "
            "is processed again"
        )
    after_ok = np.allclose(
        label_map.direction, np.asarray(result["direction_after"]), atol=_DIRECTION_TOLERANCE
    ) and np.allclose(
        label_map.origin_mm, np.asarray(result["origin_after_mm"]), atol=_ORIGIN_TOLERANCE_MM
    )
    if not after_ok:
        raise DicomExportError(
            f"the mask of segmentation {segmentation.pk} does not carry the corrected "
            f"geometry processing run {run.pk} recorded, so its relation to the source "
            "images is unknown; not exported"
        )
    return Volume(
        array=label_map.array,
        spacing_mm=label_map.spacing_mm,
        origin_mm=tuple(float(v) for v in result["origin_before_mm"]),
        direction=np.asarray(result["direction_before"], dtype=float),
        frame_of_reference_uid=label_map.frame_of_reference_uid,
        kind="label",
    )


def _fingerprint(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def study_dicom_export(
    *, study: Study, send: bool = False, config: PacsConfig | None = None
) -> StudyDicomExport:
    """Write the study's SEG (when a lesion is segmented) and SR; send them if asked.

    Raises `DicomExportError` (prefixed with the study) when the study has nothing to export or its rows do not
    fit together (measurements from two segmentations, a mask file missing).
    """
    try:
        return _study_dicom_export(study=study, send=send, config=config)
    except DicomExportError as exc:
        raise DicomExportError(f"study {study.pk}: {exc}") from exc


def _study_dicom_export(*, study: Study, send: bool, config: PacsConfig | None) -> StudyDicomExport:
    measurements = _measurements_in_force(study)
    segmentation = _measurements_segmentation(measurements)
    series = segmentation.series if segmentation is not None else study.chosen_series
    if series is None:
        raise DicomExportError("no analysed series to refer to")
    model = _segmentation_model(series, segmentation)
    lesions = [
        _lesion(m, segmentation_id=segmentation.pk if segmentation else None) for m in measurements
    ]
    headers = _headers(series)
    time_point = _time_point(study)
    label_map, seg_key = _label_map_and_key(segmentation, lesions)
    content_key = _fingerprint(seg_key, time_point.order, [list(vars(x).values()) for x in lesions])
    latest = DicomExportRecord.objects.filter(study=study).select_related("predecessor").first()
    uids, previous = _export_uids(study, model, seg_key, content_key, latest)

    folder = Path(EXPORT_FOLDER) / f"study-{study.pk}"
    seg = None
    seg_path = ""
    if label_map is not None:
        seg = segmentation_build(
            source_images=headers,
            label_map=label_map,
            lesions=lesions,
            model=model,
            uids=uids,
            software_version=_software_version(),
        )
        seg_path = str(folder / f"SEG-{uids.seg_sop_instance_uid}.dcm")
        dataset_write(dataset=seg, path=Path(settings.DATA_DIR) / seg_path)
    sr = measurement_report_build(
        source_images=headers,
        segmentation=seg,
        lesions=lesions,
        model=model,
        time_point=time_point,
        uids=uids,
        predecessor=_predecessor_document(study, previous),
    )
    sr_path = str(folder / f"SR-{uids.sr_sop_instance_uid}.dcm")
    dataset_write(dataset=sr, path=Path(settings.DATA_DIR) / sr_path)
    if latest is None or latest.sr_sop_instance_uid != uids.sr_sop_instance_uid:
        DicomExportRecord.objects.get_or_create(
            sr_sop_instance_uid=uids.sr_sop_instance_uid,
            defaults={
                "study": study,
                "content_key": content_key,
                "sr_series_instance_uid": uids.sr_series_instance_uid,
                "sr_path": sr_path,
                "seg_sop_instance_uid": uids.seg_sop_instance_uid if seg is not None else "",
                "seg_path": seg_path,
                "predecessor": previous,
            },
        )
    result = StudyDicomExport(
        study_id=study.pk,
        seg_path=seg_path,
        sr_path=sr_path,
        lesions=len(lesions),
        segments=len(seg.SegmentSequence) if seg is not None else 0,
    )
    if send:
        paths = [Path(settings.DATA_DIR) / p for p in (seg_path, sr_path) if p]
        result.transfer = pacs_instances_send(
            study_instance_uid=study.study_instance_uid, paths=paths, config=config
        )
        result.transfer.study = study
        result.transfer.save(update_fields=["study"])
    return result


def _measurements_in_force(study: Study) -> list[LesionMeasurement]:
    """The study's measurements, rejected false positives left out, by lesion label."""
    measurements = list(
        LesionMeasurement.objects.filter(study=study)
        .exclude(review_state=LesionMeasurement.Review.REJECTED)
        .select_related("lesion")
        .order_by("lesion__label")
    )
    if not measurements:
        raise DicomExportError("no lesion measurements to export")
    return measurements


def _measurements_segmentation(measurements: list[LesionMeasurement]) -> Segmentation | None:
    """The one segmentation the measurements' masks come from (None: no mask at all)."""
    segmentation_ids = {
        m.segmentation_id
        for m in measurements
        if m.segmentation_id is not None and m.component_label is not None
    }
    if len(segmentation_ids) > 1:
        raise DicomExportError(
            f"its measurements come from {len(segmentation_ids)} "
            f"segmentations ({', '.join(map(str, sorted(segmentation_ids)))}); "
            "track the patient again so that they come from one"
        )
    if not segmentation_ids:
        return None
    return Segmentation.objects.select_related("series").get(pk=segmentation_ids.pop())


def _segmentation_model(series: Series, segmentation: Segmentation | None) -> SegmentationModel:
    """The algorithm named in the objects: the mask's model, else the series' latest."""
    row = segmentation or Segmentation.objects.filter(series=series).order_by("-created_at").first()
    if row is None:
        return SegmentationModel("RadTrack", _software_version())
    return SegmentationModel(row.model_name, row.model_version)


def _label_map_and_key(
    segmentation: Segmentation | None, lesions: list[ExportedLesion]
) -> tuple[Volume | None, str]:
    """The mask on the source images' header and a key of its content ("" without one)."""
    if segmentation is None or not any(lesion.component_label for lesion in lesions):
        return None, ""
    mask_file = Path(settings.DATA_DIR) / segmentation.mask_path
    if not mask_file.is_file():
        raise DicomExportError(
            f"segmentation {segmentation.pk}: its mask file {segmentation.mask_path} is missing"
        )
    label_map = _label_map_on_source_header(
        volume_read_nifti(path=mask_file, kind="label"), segmentation
    )
    seg_key = _fingerprint(
        segmentation.pk,
        file_sha256(mask_file),
        label_map.origin_mm,
        np.asarray(label_map.direction).tolist(),
        [(x.tracking_uid, x.tracking_id, list(x.labels)) for x in lesions],
    )
    return label_map, seg_key


def _export_uids(
    study: Study,
    model: SegmentationModel,
    seg_key: str,
    content_key: str,
    latest: DicomExportRecord | None,
) -> tuple[ExportUids, DicomExportRecord | None]:
    """UIDs derived from the content, and the SR the new one replaces.

    The same content is rebuilt as the same object (same UID, same predecessor); other
    content replaces the study's latest SR and names it as its predecessor.
    """
    if latest is not None and latest.content_key == content_key:
        previous = latest.predecessor
        sr_uid = latest.sr_sop_instance_uid
    else:
        previous = latest
        sr_uid = synthetic_uid(
            [
                "radtrack-sr",
                study.study_instance_uid,
                content_key,
                previous.sr_sop_instance_uid if previous is not None else "",
            ]
        )
    uids = ExportUids(
        seg_series_instance_uid=synthetic_uid([study.study_instance_uid, "radtrack-seg"]),
        seg_sop_instance_uid=synthetic_uid(["radtrack-seg", seg_key or "none"]),
        sr_series_instance_uid=synthetic_uid([study.study_instance_uid, "radtrack-sr"]),
        sr_sop_instance_uid=sr_uid,
        device_uid=synthetic_uid(["radtrack-device", model.name, model.version]),
    )
    return uids, previous


def _predecessor_document(
    study: Study, previous: DicomExportRecord | None
) -> PredecessorDocument | None:
    if previous is None:
        return None
    return PredecessorDocument(
        study_instance_uid=study.study_instance_uid,
        series_instance_uid=previous.sr_series_instance_uid,
        sop_instance_uid=previous.sr_sop_instance_uid,
    )


def patient_dicom_export(
    *,
    patient: Patient,
    send: bool = False,
    username: str = "",
    user: Any = None,
    config: PacsConfig | None = None,
) -> PatientDicomExport:
    """Export (and send) every study of ``patient`` that has lesion measurements.

    One study's failure is reported and never stops the others. The export is audited
    (``dicom.export``; ``dicom.send`` as well when sent), naming the user or caller.
    """
    outcome = PatientDicomExport()
    studies = (
        Study.objects.filter(patient=patient, lesion_measurements__isnull=False)
        .distinct()
        .chronological()
    )
    if send:
        config = config or PacsConfig.from_settings()
    for study in studies:
        try:
            outcome.exports.append(study_dicom_export(study=study, send=send, config=config))
        except DicomExportError as exc:
            outcome.errors.append(str(exc))
    if outcome.exports:
        audit_record(
            user=user,
            action="dicom.export",
            object=f"patient {patient.pk}",
            patient=patient,
            username=username,
        )
        if send:
            audit_record(
                user=user,
                action="dicom.send",
                object=f"patient {patient.pk}",
                patient=patient,
                username=username,
            )
    return outcome
