"""Export a study's lesions as DICOM SEG and SR files, and send them to the PACS.

Gathers a study's measurements (values in force; findings rejected as false positives,
at that study or for the whole lesion, left out),
its segmentation's label map and the source series' headers, builds the objects with
`imaging.core.dicom.seg_sr`, writes them under ``DATA_DIR/exports/dicom/`` and, when
asked, stores them on the PACS (STOW-RS) and reports what the PACS did with each
(`imaging.exports.pacs_check`). UIDs are derived from the content (and
`CONTENT_VERSION`), so exporting unchanged results again gives the same objects: the
file already written under a UID is reused as it is, never rebuilt with new times, so
one SOP Instance UID always names the same bytes; a file that went missing is rebuilt
with the times of its first export. A radiologist's change gives a new SR instance in
the same series that names the SR it replaces as its predecessor (every SR written is a
`DicomExportRecord`). Studies of one date are one time point (`_time_point`), as the
responses read them. Each lesion's SR volume is reported twice, the segment's own voxel
volume and the value in force, each with its method (`imaging.core.dicom.seg_sr`).
A value a lesion does not have at the study is left out of the SR with the finding's
state said instead, never written as 0 (`_lesion_values`): a lesion not found there,
merged into another, too small to measure, or measured by hand without a volume; a
lesion seen but cut by the edge of what was imaged (finding state ``not_assessable``)
keeps its segment and reports no measurement, its numbers being only lower bounds; a
lesion a radiologist confirmed gone measures 0. A lesion whose link to the earlier
studies is still a proposal (``link_provisional``, as the CSV export has it) says so.

A split lesion's segment holds all its fragments (``component_labels``), as its
measurements do. When the run that made the mask corrected the volume's orientation
(a flipped header; the voxels are untouched), the mask is put back on the source
header by voxel index, using the geometry the run recorded before the correction; a run
flagged as corrected without that record is refused rather than guessed at.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from django.conf import settings
from django.utils import timezone

from imaging.core.dicom.seg_sr import (
    CONTENT_VERSION,
    DicomExportError,
    ExportedLesion,
    ExportUids,
    PredecessorDocument,
    SegmentationModel,
    dataset_write,
    measurement_report_build,
    segment_volumes_ml,
    segmentation_build,
)
from imaging.core.dicom.sr_codes import TimePoint, time_point_of
from imaging.core.dicom.write import synthetic_uid
from imaging.core.geometry.nifti import volume_read_nifti
from imaging.core.geometry.volume import Volume
from imaging.exports.pacs_check import pacs_export_send
from imaging.exports.stamps import content_time_set, first_exported_at
from imaging.ingest.pacs import PacsConfig
from imaging.models import (
    DicomExportRecord,
    Instance,
    LesionMeasurement,
    PacsTransfer,
    Segmentation,
    Series,
    Study,
)
from imaging.store import derived_local, file_sha256, object_local
from patients.audit import audit_record
from patients.models import Patient

EXPORT_FOLDER = "exports/dicom"
Status = LesionMeasurement.Status
State = LesionMeasurement.FindingState
Sizes = tuple[float | None, float | None, float | None]


@dataclass
class StudyDicomExport:
    """What was exported for one study: files relative to DATA_DIR, and any send."""

    study_id: int
    sr_path: str
    seg_path: str = ""
    lesions: int = 0
    segments: int = 0
    transfer: PacsTransfer | None = None
    reused: list[str] = field(default_factory=list)
    pacs: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def line(self) -> str:
        text = f"study {self.study_id}: {self.lesions} lesions, {self.segments} segments"
        text += f"; SEG {self.seg_path or '(none: no lesion segmented)'}; SR {self.sr_path}"
        if self.reused:
            text += f" (unchanged: {' and '.join(self.reused)} reused as written before)"
        if self.transfer is not None:
            text += f"; sent: {self.transfer.status}"
            if self.transfer.error:
                text += f" ({self.transfer.error})"
        if self.pacs:
            text += "; the PACS: " + ", ".join(f"{k} {v}" for k, v in self.pacs.items())
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
    """The study's time point among its patient's studies that were segmented, studies
    of one date being one time point (`time_point_of`: a chest and an abdomen CT of the
    baseline date are both the baseline, as the responses read them). A baseline where
    nothing was found is still the baseline: counting only the studies with lesion rows
    would call the first follow-up with a lesion "Baseline"."""
    studies = list(
        Study.objects.filter(patient_id=study.patient_id, series__segmentations__isnull=False)
        .distinct()
        .chronological()
        .values_list("pk", "study_date")
    )
    if study.pk not in {pk for pk, _ in studies}:
        raise DicomExportError(f"study {study.pk} has no segmentation: nothing to export")
    return time_point_of(study.pk, studies)


def _headers(series: Series) -> list[pydicom.Dataset]:
    """The series' stored instances' headers (no pixel data), for references and evidence."""
    instances = list(Instance.objects.filter(series=series).order_by("pk"))
    if not instances:
        raise DicomExportError(f"series {series.pk} has no stored instances to refer to")
    headers = []
    for instance in instances:
        path = object_local(instance.stored_path)
        try:
            headers.append(pydicom.dcmread(path, stop_before_pixels=True))
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            raise DicomExportError(
                f"stored file of instance {instance.pk} ({instance.stored_path}) cannot be "
                f"read: {exc}"
            ) from exc
    return headers


def _lesion_values(m: LesionMeasurement) -> tuple[Sizes, str]:
    """(volume ml, long axis mm, short axis mm) the lesion has at the study, None for
    those it has not (or cannot be read: seen but cut by the edge of what was imaged),
    and its state for the SR ("" when it reads as measured)."""
    if m.status == Status.MERGED:
        return (None, None, None), "merged"
    if m.status == Status.NOT_FOUND or m.finding_state == State.NOT_FOUND:
        return (None, None, None), "not_found"
    if m.finding_state == State.NOT_ASSESSABLE:
        # Seen (its segment stays), but cut by the edge of what was imaged: every number
        # is only a lower bound, so none is reported.
        return (None, None, None), "not_assessable"
    if m.status == Status.RESOLVED:
        return (0.0, 0.0, 0.0), ""
    if m.too_small:
        return (None, None, None), "too_small"
    sizes = (m.effective_volume_ml, m.effective_longest_diameter_mm, m.effective_short_axis_mm)
    return sizes, "equivocal" if m.finding_state == State.EQUIVOCAL else ""


#: Segment Algorithm Type of a candidate by who drew it (its ``source``, written when a
#: radiologist added, propagated or edited it: `analytics.lesions.review`).
_ALGORITHM_TYPE = {"added": "SEMIAUTOMATIC", "propagated": "SEMIAUTOMATIC", "edited": "MANUAL"}


def _sources(segmentation: Segmentation | None) -> dict[int, dict]:
    """Who drew each candidate a radiologist drew, by component label."""
    if segmentation is None:
        return {}
    return {
        int(c["component_label"]): c["source"]
        for c in segmentation.lesions
        if isinstance(c.get("source"), dict)
    }


def _editor(sources: dict[int, dict], lesions: list[ExportedLesion]) -> str:
    """The radiologist who last drew or edited an exported segment, as a DICOM Person
    Name ("" when none did)."""
    drawn = [sources[x.component_label] for x in lesions if x.component_label in sources]
    drawn = [d for d in drawn if d.get("user")]
    if not drawn:
        return ""
    last = max(drawn, key=lambda d: str(d.get("at", "")))
    return str(last.get("person_name") or f"{last['user']}^")  # a DICOM Person Name


def _lesion(
    m: LesionMeasurement, *, segmentation_id: int | None, sources: dict[int, dict] | None = None
) -> ExportedLesion:
    on_mask = m.segmentation_id == segmentation_id and m.component_label is not None
    (volume, longest, short), state = _lesion_values(m)
    if state in {"merged", "not_found", "too_small"}:
        on_mask = False  # no voxels of its own at this study
    label = m.component_label if on_mask else None
    fragments = tuple(int(c) for c in (m.component_labels or [])) if on_mask else ()
    return ExportedLesion(
        tracking_uid=m.lesion.tracking_uid,
        tracking_id=m.lesion.label,
        organ=m.lesion.organ,
        volume_ml=volume,
        longest_diameter_mm=longest,
        short_axis_mm=short,
        component_label=label,
        component_labels=fragments,
        volume_by_radiologist=m.override_volume_ml is not None,
        state=state,
        link_provisional=m.link_provisional,
        second_reader=m.origin == LesionMeasurement.Origin.SECOND_READER,
        algorithm_type=_ALGORITHM_TYPE.get(
            ((sources or {}).get(label) or {}).get("kind", ""), "AUTOMATIC"
        )
        if label is not None
        else "AUTOMATIC",
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
    exported_at = timezone.now()
    measurements = _measurements_in_force(study)
    segmentation = _measurements_segmentation(measurements)
    series = segmentation.series if segmentation is not None else study.chosen_series
    if series is None:
        raise DicomExportError("no analysed series to refer to")
    model = _segmentation_model(series, segmentation)
    sources = _sources(segmentation)
    lesions = [
        _lesion(m, segmentation_id=segmentation.pk if segmentation else None, sources=sources)
        for m in measurements
    ]
    headers = _headers(series)
    time_point = _time_point(study)
    label_map, seg_key = _label_map_and_key(segmentation, lesions)
    if label_map is not None:
        volumes = segment_volumes_ml(label_map=label_map, lesions=lesions)
        lesions = [replace(x, mask_volume_ml=volumes.get(x.tracking_uid)) for x in lesions]
    content_key = _fingerprint(
        CONTENT_VERSION, seg_key, time_point.order, [list(vars(x).values()) for x in lesions]
    )
    latest = DicomExportRecord.objects.filter(study=study).select_related("predecessor").first()
    uids, previous = _export_uids(study, model, seg_key, content_key, latest)

    folder = Path(EXPORT_FOLDER) / f"study-{study.pk}"
    result = StudyDicomExport(study_id=study.pk, sr_path="", lesions=len(lesions))
    seg = None
    if label_map is not None:
        result.seg_path = str(folder / f"SEG-{uids.seg_sop_instance_uid}.dcm")

        def build_seg() -> hd.seg.Segmentation:
            return segmentation_build(
                source_images=headers,
                label_map=label_map,
                lesions=lesions,
                model=model,
                uids=uids,
                software_version=_software_version(),
            )

        seg = _stored_or_built(
            result, "SEG", result.seg_path, uids.seg_sop_instance_uid, build_seg, exported_at
        )
        result.segments = len(seg.SegmentSequence)
    result.sr_path = str(folder / f"SR-{uids.sr_sop_instance_uid}.dcm")
    _stored_or_built(
        result,
        "SR",
        result.sr_path,
        uids.sr_sop_instance_uid,
        lambda: measurement_report_build(
            source_images=headers,
            segmentation=seg,
            lesions=lesions,
            model=model,
            time_point=time_point,
            uids=uids,
            predecessor=_predecessor_document(study, previous),
            editor=_editor(sources, lesions),
            software_version=_software_version(),
        ),
        exported_at,
    )
    if latest is None or latest.sr_sop_instance_uid != uids.sr_sop_instance_uid:
        _export_record(study, result, uids, content_key, previous, exported_at, seg is not None)
    if send:
        _send(study, result, config)
    return result


def _export_record(
    study: Study, result: StudyDicomExport, uids: ExportUids, content_key: str,
    previous: DicomExportRecord | None, exported_at: dt.datetime, with_seg: bool,
) -> None:  # fmt: skip
    """The record of a new SR (and SEG) of ``study``: its UIDs, paths and predecessor."""
    DicomExportRecord.objects.get_or_create(
        sr_sop_instance_uid=uids.sr_sop_instance_uid,
        defaults={
            "study": study, "content_key": content_key, "predecessor": previous,
            "sr_series_instance_uid": uids.sr_series_instance_uid, "sr_path": result.sr_path,
            "seg_sop_instance_uid": uids.seg_sop_instance_uid if with_seg else "",
            "seg_path": result.seg_path, "created_at": exported_at,
        },
    )  # fmt: skip


def _send(study: Study, result: StudyDicomExport, config: PacsConfig | None) -> None:
    """Store the objects on the PACS and note what it did with each (`pacs_export_send`)."""
    paths = [Path(settings.DATA_DIR) / p for p in (result.seg_path, result.sr_path) if p]
    report = pacs_export_send(
        study_instance_uid=study.study_instance_uid, paths=paths, config=config
    )
    result.transfer = report.transfer
    result.transfer.study = study
    result.transfer.save(update_fields=["study"])
    result.pacs = report.outcomes
    result.warnings += report.warnings


def _stored_or_built(
    result: StudyDicomExport,
    kind: str,
    relative: str,
    sop_instance_uid: str,
    build,
    exported_at: dt.datetime,
):
    """The object already written under ``sop_instance_uid`` as it is, else built now and
    written with the times of its first export (``exported_at`` when this is the first:
    the time the export's record keeps, so that a rebuild of a lost file stamps the same
    second)."""
    path = Path(settings.DATA_DIR) / relative
    if path.is_file():
        try:
            stored = pydicom.dcmread(path)
        except (OSError, pydicom.errors.InvalidDicomError):
            stored = None
        if stored is not None and str(stored.get("SOPInstanceUID", "")) == sop_instance_uid:
            result.reused.append(kind)
            return hd.seg.Segmentation.from_dataset(stored) if kind == "SEG" else stored
    started = dt.datetime.now()
    dataset = build()
    first = first_exported_at(kind, sop_instance_uid) or exported_at
    content_time_set(dataset, first, built_after=started)
    dataset_write(dataset=dataset, path=path)
    return dataset


def _measurements_in_force(study: Study) -> list[LesionMeasurement]:
    """The study's measurements by lesion label, false positives left out: a row a
    radiologist rejected, and every row of a lesion whose rejection holds for the whole
    identity (finding state ``rejected``)."""
    measurements = list(
        LesionMeasurement.objects.filter(study=study)
        .exclude(review_state=LesionMeasurement.Review.REJECTED)
        .exclude(finding_state=State.REJECTED)
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
    try:
        mask_file = derived_local(segmentation.mask_path)
    except FileNotFoundError:
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
