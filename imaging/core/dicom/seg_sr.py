"""Lesion results as DICOM for the PACS: a Segmentation (SEG) and a Measurement Report SR.

Both are built with highdicom from the source series' own headers, so they sit in the
same study as the images (Study Instance UID, patient and study attributes copied from
them, PS3.3 C.7.1 / C.7.2). The SEG (PS3.3 A.51) holds one BINARY segment per lesion,
each with the lesion's Tracking UID (0062,0021) and Tracking ID (0062,0020) and the
model that drew it in Segment Algorithm Name / Segmentation Algorithm Identification
(0062,0009 / 0062,0007); a segment a radiologist added with a click is SEMIAUTOMATIC
(Segment Algorithm Type (0062,0008), naming the click-guided method) and one whose mask
a radiologist edited is MANUAL, and the SR then names that radiologist as its person
observer. The SR is a Comprehensive 3D SR whose content is TID 1500
Measurement Report: one measurement group per lesion with its Tracking Identifier
(TID 4108), the study's Time Point Context (TID 1502), and volume (ml), long axis and
short axis (mm). A lesion segmented at this study is a TID 1411 volumetric group that
references its segment; a lesion without voxels here is a TID 1501 group. A lesion a
radiologist confirmed gone (resolved) measures 0 mm and 0 ml, so the PACS sees its
disappearance.

A measurement the lesion does not have at the study is absent, never a 0: TID 1501 and
TID 1411 make every measurement row optional. A lesion not found (expected, not seen),
merged into another lesion, or present but too small to measure has a group with no
measurement at all, and a Qualitative Evaluation (`FINDING_STATE`, RadTrack's private
codes) saying which; so has a lesion seen but cut by the edge of what was imaged (the
first or last slice, or the field of view: its size not assessable), whose group still
references its segment (where it was seen) but reports no volume, not even the
segment's own, nor axes, since each is only a lower bound. A lesion measured by hand
without a volume has its diameters and no volume; an equivocal new finding keeps its
values and says it is equivocal. A lesion
whose link to the earlier studies is provisional (proposed without a registration, by
anatomical landmarks, and not yet confirmed by a radiologist) says so in a Qualitative
Evaluation of its own (`TRACKING_LINK`), beside any state, so that a reader does not
take its course for a confirmed one. (A NUM content item with an empty Measured Value
Sequence and a Numeric Value Qualifier such as DCM 114010 "Value unknown" is allowed by
PS3.3 C.18.1, but highdicom, and so the readers built on it, cannot read one back; a
missing row is read by every reader.)

Geometry: the label map is a `Volume` in LPS mm whose voxel values are the lesions'
component labels (0 = background); a lesion split into fragments owns several labels,
and its segment holds all of them. It is handed to highdicom as a volume with its own
affine, so the SEG frames carry their true Plane Position (0020,0032) and are matched
to source slices by position, whether or not the volume was resampled. Its axes must
therefore run as the source images' do (rows and columns along Image Orientation
(Patient) (0020,0037), slices along their cross product): a label map whose header was
corrected (a flip) would otherwise land on the wrong slices or mirrored, so it is
refused (the caller maps it back to the source header first).

Volumes: a lesion with a segment has two Volume (SCT 118565006) measurements, each
saying how it was made with a Measurement Method (SCT 370129005): the volume of the
segment's own voxels, which anyone can recompute from the SEG (DCM 126030 "Sum of
segmented voxel method for volume"), and the value in force, RadTrack's partial-volume
volumetry (`PARTIAL_VOLUME_METHOD`) or a radiologist's value (`RADIOLOGIST_METHOD`). The
two differ by design: partial-volume volumetry counts the fraction of each edge voxel
the lesion fills, the mask only whole voxels.

Time points (TID 1502) count dates, not studies: studies of one date are one time point,
as the response assessment reads them (RECIST 1.1 reads the disease at each assessment,
however many scans it took), so a chest CT and an abdomen CT made on the baseline date
are both the Baseline (`sr_codes.time_point_of`).

An SR that replaces an earlier one of the same study names it in the Predecessor
Documents Sequence (0040,A360), PS3.3 C.17.2, so the PACS can show it superseded.
`CONTENT_VERSION` counts changes to what the objects say, so that a new layout gets new
UIDs rather than new bytes under an old one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import Comprehensive3DSRStorage

from imaging.core.dicom.seg_algorithms import (
    ALGORITHM_TYPES,
    drawn_by_reader,
    second_reader_name,
    segment_algorithm_of,
    segment_algorithms,
)
from imaging.core.dicom.seg_geometry import (
    DicomExportError,
    check_orientation,
    check_sources,
    highdicom_volume,
)
from imaging.core.dicom.sr_codes import (
    FINDING_STATE,
    FINDING_STATES,
    MASK_VOLUME_METHOD,
    MILLILITRE,
    ORGAN_SITES,
    PARTIAL_VOLUME_METHOD,
    PROVISIONAL_LINK,
    RADIOLOGIST_METHOD,
    TRACKING_LINK,
    TimePoint,
)
from imaging.core.geometry.volume import Volume

MANUFACTURER = "RadTrack"
#: What the SEG and SR say and how (raised when either changes; it is part of their UIDs).
#: 3: absent measurements are left out, and a finding's state is said (module docstring).
#: 4: a segment a radiologist drew or edited says so, and the SR names the editor.
#: 5: studies of one date are one time point; a provisional link is said.
#: 6: a segment, and the measurements, the liver's second reader drew name that reader.
#: 7: and the lungs' second reader's name theirs.
CONTENT_VERSION = 7
#: States whose lesion has no measurement at all, not even its segment's voxel volume:
#: a lesion cut by the edge of what was imaged has a segment (where it was seen) whose
#: every number is only a lower bound.
SIZE_NOT_ASSESSABLE_STATES = frozenset({"not_assessable"})


@dataclass(frozen=True)
class ExportedLesion:
    """A lesion at one study, with the values in force (a radiologist's override wins).

    ``component_label`` is the lesion's (largest fragment's) value in the label map;
    ``None`` when the lesion has no voxels at this study (resolved, not found, merged,
    measured by hand).
    ``component_labels`` are all its fragments' values (the measurements cover them
    all); empty means ``component_label`` alone. ``tracking_id`` is the readable label
    ("Liver 2"), ``tracking_uid`` the DICOM Tracking UID shared across studies.
    ``volume_ml`` is the volume in force, a radiologist's when ``volume_by_radiologist``;
    ``mask_volume_ml`` the volume of its voxels in the label map (`segment_volumes_ml`),
    None without them. A value the lesion does not have here is None (not found,
    merged, too small to measure, no volume when measured by hand): it is left out of
    the SR, never written as 0. ``state``: "" for a lesion measured as it reads, else a
    key of `FINDING_STATES` (equivocal, not_found, merged, too_small, not_assessable),
    said in the SR; a ``not_assessable`` lesion reports no measurement, its segment's
    voxel volume included (`SIZE_NOT_ASSESSABLE_STATES`).
    ``algorithm_type`` is how its segment was drawn (`ALGORITHM_TYPES`): by the model
    (AUTOMATIC), grown from a radiologist's click (SEMIAUTOMATIC), or edited by hand
    (MANUAL). ``second_reader``: an AUTOMATIC segment drawn by a classical second reader
    (the liver's or the lungs'), not the model (its own Algorithm Identification). ``link_provisional``:
    its link to the earlier studies was proposed without a registration (anatomical
    landmarks) and no radiologist has confirmed it yet.
    """

    tracking_uid: str
    tracking_id: str
    organ: str
    volume_ml: float | None
    longest_diameter_mm: float | None
    short_axis_mm: float | None
    component_label: int | None
    component_labels: tuple[int, ...] = ()
    volume_by_radiologist: bool = False
    mask_volume_ml: float | None = None
    state: str = ""
    algorithm_type: str = "AUTOMATIC"
    link_provisional: bool = False
    second_reader: bool = False

    @property
    def labels(self) -> tuple[int, ...]:
        """Every label-map value of the lesion (none when it has no voxels here)."""
        if self.component_label is None:
            return ()
        return tuple(sorted({int(self.component_label), *map(int, self.component_labels)}))


@dataclass(frozen=True)
class SegmentationModel:
    """The model that drew the masks, as recorded on the segmentation."""

    name: str
    version: str


@dataclass(frozen=True)
class PredecessorDocument:
    """An SR this one replaces: what Predecessor Documents Sequence (0040,A360) cites."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str = Comprehensive3DSRStorage

    def as_dataset(self) -> Dataset:
        ds = Dataset()
        ds.StudyInstanceUID = self.study_instance_uid
        ds.SeriesInstanceUID = self.series_instance_uid
        ds.SOPInstanceUID = self.sop_instance_uid
        ds.SOPClassUID = self.sop_class_uid
        return ds


@dataclass(frozen=True)
class ExportUids:
    """UIDs for the objects built; pass the same ones to rebuild the same objects."""

    seg_series_instance_uid: str
    seg_sop_instance_uid: str
    sr_series_instance_uid: str
    sr_sop_instance_uid: str
    device_uid: str


def _segmented(lesions: Sequence[ExportedLesion]) -> list[ExportedLesion]:
    """Lesions with voxels at this study, in label order; labels and UIDs must be unique."""
    labelled = [
        (lesion.component_label, lesion) for lesion in lesions if lesion.component_label is not None
    ]
    segmented = [lesion for _, lesion in sorted(labelled, key=lambda pair: pair[0])]
    labels = [label for lesion in segmented for label in lesion.labels]
    if len(set(labels)) != len(labels):
        raise DicomExportError(f"two lesions share a component label: {sorted(labels)}")
    uids = [lesion.tracking_uid for lesion in lesions]
    if len(set(uids)) != len(uids):
        raise DicomExportError("two lesions share a Tracking UID")
    for lesion in lesions:
        if not lesion.tracking_uid or not lesion.tracking_id:
            raise DicomExportError("every lesion needs a Tracking UID and a readable label")
    return segmented


def segmentation_build(
    *,
    source_images: Sequence[Dataset],
    label_map: Volume,
    lesions: Sequence[ExportedLesion],
    model: SegmentationModel,
    uids: ExportUids,
    software_version: str,
    series_number: int = 9001,
) -> hd.seg.Segmentation:
    """A BINARY DICOM SEG with one segment per segmented lesion, in component-label order.

    ``source_images`` are the headers (pixel data not needed) of the series the label
    map was drawn on. Voxels of labels that belong to no listed lesion (candidates a
    radiologist rejected, say) are left out. Raises `DicomExportError` when the label
    map is not a label volume, is in another frame of reference, or a listed lesion has
    no voxels in it.
    """
    frame_uid = check_sources(source_images)
    if label_map.kind != "label":
        raise DicomExportError(f"the mask must be a label volume; got kind {label_map.kind!r}")
    if label_map.frame_of_reference_uid and label_map.frame_of_reference_uid != frame_uid:
        raise DicomExportError(
            "the label map's Frame of Reference UID differs from the source images'; "
            "it was not drawn on this series"
        )
    check_orientation(label_map, source_images)
    segmented = _segmented(lesions)
    if not segmented:
        raise DicomExportError("no lesion has voxels in the label map: nothing to segment")
    labels = np.asarray(label_map.array)
    segments = np.zeros(labels.shape, dtype=np.uint16 if len(segmented) > 255 else np.uint8)
    descriptions = []
    algorithms = segment_algorithms(model.name, model.version, software_version)
    for number, lesion in enumerate(segmented, start=1):
        if lesion.algorithm_type not in ALGORITHM_TYPES:
            raise DicomExportError(
                f"lesion {lesion.tracking_id!r}: segment algorithm type "
                f"{lesion.algorithm_type!r} is not one of {', '.join(ALGORITHM_TYPES)}"
            )
        for label in lesion.labels:
            if not (labels == label).any():
                raise DicomExportError(
                    f"lesion {lesion.tracking_id!r} has label {label}, "
                    "which has no voxels in the label map"
                )
        # Every fragment: the SR's values are measured over all of them.
        segments[np.isin(labels, lesion.labels)] = number
        sites = [ORGAN_SITES[lesion.organ]] if lesion.organ in ORGAN_SITES else None
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=lesion.tracking_id[:64],
                segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
                segmented_property_type=codes.SCT.Lesion,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues[lesion.algorithm_type],
                algorithm_identification=segment_algorithm_of(lesion, algorithms),
                tracking_uid=lesion.tracking_uid,
                tracking_id=lesion.tracking_id[:64],
                anatomic_regions=sites,
            )
        )
    return hd.seg.Segmentation(
        source_images=list(source_images),
        pixel_array=highdicom_volume(label_map, segments, frame_uid),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=uids.seg_series_instance_uid,
        series_number=series_number,
        sop_instance_uid=uids.seg_sop_instance_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=model.name[:64],
        software_versions=software_version[:64],
        device_serial_number=uids.device_uid[-16:],
        content_label="LESIONS",
        content_description=f"Lesions by {model.name} {model.version}"[:64],
        series_description=f"RadTrack lesions ({model.name} {model.version})"[:64],
    )


def segment_volumes_ml(*, label_map: Volume, lesions: Sequence[ExportedLesion]) -> dict[str, float]:
    """Each segmented lesion's voxel volume (ml) in ``label_map``, by Tracking UID: the
    count of voxels holding any of its labels times the voxel's volume, which is what
    its SEG segment holds (`segmentation_build` writes those voxels on this grid)."""
    labels = np.asarray(label_map.array)
    voxel_ml = float(np.prod(label_map.spacing_mm)) / 1000.0
    return {
        lesion.tracking_uid: float(np.isin(labels, lesion.labels).sum()) * voxel_ml
        for lesion in lesions
        if lesion.labels
    }


def _measurements(
    lesion: ExportedLesion, algorithm: hd.sr.AlgorithmIdentification, *, with_mask: bool
) -> list:
    """Volume(s), long and short axis, those the lesion has. With the segment referenced,
    the mask's own volume comes first; the value in force always says its method
    (module docstring). None for a lesion whose size is not assessable."""
    if lesion.state in SIZE_NOT_ASSESSABLE_STATES:
        return []
    volumes = []
    if with_mask and lesion.mask_volume_ml is not None:
        volumes.append(
            hd.sr.Measurement(
                name=codes.SCT.Volume,
                value=float(lesion.mask_volume_ml),
                unit=MILLILITRE,
                method=MASK_VOLUME_METHOD,
                algorithm_id=algorithm,
            )
        )
    if lesion.volume_ml is not None:
        volumes.append(
            hd.sr.Measurement(
                name=codes.SCT.Volume,
                value=float(lesion.volume_ml),
                unit=MILLILITRE,
                method=RADIOLOGIST_METHOD
                if lesion.volume_by_radiologist
                else PARTIAL_VOLUME_METHOD,
                algorithm_id=None if lesion.volume_by_radiologist else algorithm,
            )
        )
    axes = [
        hd.sr.Measurement(
            name=name, value=float(value), unit=codes.UCUM.Millimeter, algorithm_id=algorithm
        )
        for name, value in (
            (codes.SCT.LongAxis, lesion.longest_diameter_mm),
            (codes.SCT.ShortAxis, lesion.short_axis_mm),
        )
        if value is not None
    ]
    return [*volumes, *axes]


def _state_evaluations(lesion: ExportedLesion) -> list[hd.sr.QualitativeEvaluation] | None:
    """The finding's state, when it is not a plain measured lesion, and whether its link
    to the earlier studies is provisional (module docstring); None when neither."""
    evaluations = []
    if lesion.state:
        if lesion.state not in FINDING_STATES:
            raise DicomExportError(
                f"lesion {lesion.tracking_id!r}: unknown finding state {lesion.state!r} (one "
                f"of {', '.join(FINDING_STATES)})"
            )
        evaluations.append(
            hd.sr.QualitativeEvaluation(name=FINDING_STATE, value=FINDING_STATES[lesion.state])
        )
    if lesion.link_provisional:
        evaluations.append(hd.sr.QualitativeEvaluation(name=TRACKING_LINK, value=PROVISIONAL_LINK))
    return evaluations or None


def _referenced_segment(
    segmentation: hd.seg.Segmentation, segment_number: int
) -> hd.sr.ReferencedSegment:
    """A reference to one segment and the source images its frames derive from.

    Built here rather than by ``ReferencedSegment.from_segmentation``, which expects a
    Segment Identification Sequence (0062,000A) in every frame's functional groups;
    with a single segment highdicom moves it to the shared groups.
    """
    shared = segmentation.SharedFunctionalGroupsSequence[0]
    sources: dict[str, str] = {}
    for frame in segmentation.PerFrameFunctionalGroupsSequence:
        identification = frame.get("SegmentIdentificationSequence") or shared.get(
            "SegmentIdentificationSequence"
        )
        if int(identification[0].ReferencedSegmentNumber) != segment_number:
            continue
        for derivation in frame.get("DerivationImageSequence", []):
            for source in derivation.get("SourceImageSequence", []):
                sources.setdefault(source.ReferencedSOPInstanceUID, source.ReferencedSOPClassUID)
    if not sources:
        raise DicomExportError(f"segment {segment_number} has no frame derived from a source image")
    return hd.sr.ReferencedSegment(
        sop_class_uid=segmentation.SOPClassUID,
        sop_instance_uid=segmentation.SOPInstanceUID,
        segment_number=segment_number,
        source_images=[
            hd.sr.SourceImageForSegmentation(class_uid, instance_uid)
            for instance_uid, class_uid in sources.items()
        ],
    )


def _measurement_group(
    lesion: ExportedLesion,
    segmentation: hd.seg.Segmentation | None,
    time_point_context: hd.sr.TimePointContext,
    algorithm: hd.sr.AlgorithmIdentification,
) -> (
    hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
    | hd.sr.MeasurementsAndQualitativeEvaluations
):
    """TID 1411 when the lesion has a segment in ``segmentation``, else TID 1501."""
    tracking = hd.sr.TrackingIdentifier(uid=lesion.tracking_uid, identifier=lesion.tracking_id)
    sites = (
        [hd.sr.FindingSite(anatomic_location=ORGAN_SITES[lesion.organ])]
        if lesion.organ in ORGAN_SITES
        else None
    )
    segment_numbers = (
        segmentation.get_segment_numbers(tracking_uid=lesion.tracking_uid)
        if segmentation is not None and lesion.component_label is not None
        else []
    )
    if (
        segment_numbers
        and lesion.mask_volume_ml is None
        and lesion.state not in SIZE_NOT_ASSESSABLE_STATES
    ):
        raise DicomExportError(
            f"lesion {lesion.tracking_id!r} references a segment but its mask volume is not "
            "given (segment_volumes_ml): the SR would report no volume of the SEG it cites"
        )
    common = {
        "tracking_identifier": tracking,
        "time_point_context": time_point_context,
        "finding_type": codes.SCT.Lesion,
        "finding_category": codes.SCT.MorphologicallyAbnormalStructure,
        "algorithm_id": algorithm,
        "finding_sites": sites,
        "measurements": _measurements(lesion, algorithm, with_mask=bool(segment_numbers)),
        "qualitative_evaluations": _state_evaluations(lesion),
    }
    if segmentation is not None and segment_numbers:
        return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            referenced_segment=_referenced_segment(segmentation, segment_numbers[0]),
            **common,
        )
    return hd.sr.MeasurementsAndQualitativeEvaluations(**common)


def _device_observer(model: SegmentationModel, uids: ExportUids) -> hd.sr.ObserverContext:
    """The model as the observing device (TID 1004)."""
    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=uids.device_uid,
            name=model.name[:64],
            manufacturer_name=MANUFACTURER,
            model_name=f"{model.name} {model.version}"[:64],
        ),
    )


def _person_observer(name: str) -> hd.sr.ObserverContext:
    """The radiologist who edited the segments as the observing person (TID 1003)."""
    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(name=name[:64]),
    )


def measurement_report_build(
    *,
    source_images: Sequence[Dataset],
    segmentation: hd.seg.Segmentation | None,
    lesions: Sequence[ExportedLesion],
    model: SegmentationModel,
    time_point: TimePoint,
    uids: ExportUids,
    series_number: int = 9002,
    predecessor: PredecessorDocument | None = None,
    editor: str = "",
    software_version: str = "",
) -> hd.sr.Comprehensive3DSR:
    """A TID 1500 Measurement Report with one measurement group per lesion.

    ``predecessor`` is the SR of this study this one replaces (values changed): it is
    cited in the Predecessor Documents Sequence (0040,A360). ``editor`` names the
    radiologist who last drew or edited a segment of the study: the report's person
    observer (TID 1003), beside the model as device observer (TID 1004). The measurements
    of a lesion a second reader (the liver's, the lungs') drew name that reader, at ``software_version``
    (RadTrack's), as their algorithm; every other lesion's name the model.

    Values are the ones in force (volume in ml, long and short axis in mm, PS3.16
    SCT 118565006, 103339001, 103340004). A lesion with a segment in ``segmentation``
    references it (TID 1411) and also reports the segment's own voxel volume
    (``mask_volume_ml``, method DCM 126030); a lesion without one (no voxels here, or no
    SEG at all) is a TID 1501 group. Values the lesion does not have are left out and
    its state said instead (module docstring). Every group carries the lesion's Tracking Identifier (TID 4108) and
    the study's Time Point Context (TID 1502).
    """
    check_sources(source_images)
    if not lesions:
        raise DicomExportError("no lesions to report: a measurement report needs one group")
    _segmented(lesions)
    algorithm = hd.sr.AlgorithmIdentification(name=model.name[:64], version=model.version[:64])
    time_point_context = hd.sr.TimePointContext(
        time_point=time_point.label,
        time_point_type=time_point.code,
        time_point_order=time_point.order,
    )
    version = (software_version or "unversioned")[:64]
    groups = [
        _measurement_group(
            lesion,
            segmentation,
            time_point_context,
            hd.sr.AlgorithmIdentification(name=second_reader_name(lesion.organ), version=version)
            if drawn_by_reader(lesion.second_reader, lesion.algorithm_type)
            else algorithm,
        )
        for lesion in sorted(lesions, key=lambda lesion: lesion.tracking_id)
    ]
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_person_context=_person_observer(editor) if editor else None,
            observer_device_context=_device_observer(model, uids),
        ),
        procedure_reported=codes.cid100.CTUnspecifiedBodyRegion,
        imaging_measurements=groups,
    )
    evidence = list(source_images) + ([segmentation] if segmentation is not None else [])
    return hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=uids.sr_series_instance_uid,
        series_number=series_number,
        sop_instance_uid=uids.sr_sop_instance_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        # Machine measurements: neither final nor verified until a radiologist signs.
        is_final=False,
        is_verified=False,
        series_description="RadTrack lesion measurements",
        previous_versions=[predecessor.as_dataset()] if predecessor is not None else None,
    )


def dataset_write(*, dataset: Dataset, path: Path) -> Path:
    """Write ``dataset`` as a DICOM Part 10 file (preamble, DICM, File Meta) at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path, enforce_file_format=True)
    return path
