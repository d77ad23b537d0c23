"""The index rows an import writes: patient, study, series and instance, from what
`imaging.core.dicom.inspect` read; and what decides a repeat (duplicate or conflict) and
a misfiled object (a study or series already filed under another parent)."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db import connection

from imaging.core.dicom.inspect import InspectedInstance
from imaging.core.dicom.part10 import buffer_hashes, dataset_offset
from imaging.models import IngestSession, Instance, Series, Study
from imaging.store import object_read
from patients.models import Patient


@dataclass
class Rows:
    """Patient, study and series rows by UID, and which patient and study own each."""

    patients: dict[str, Patient] = field(default_factory=dict)
    studies: dict[str, Study] = field(default_factory=dict)
    series: dict[str, Series] = field(default_factory=dict)
    study_patient: dict[str, str] = field(default_factory=dict)
    series_study: dict[str, str] = field(default_factory=dict)

    def update(self, other: Rows) -> None:
        self.patients.update(other.patients)
        self.studies.update(other.studies)
        self.series.update(other.series)
        self.study_patient.update(other.study_patient)
        self.series_study.update(other.series_study)


def parents_for(item: InspectedInstance, new: Rows, known: Rows) -> Series:
    """The series row ``item`` belongs to (its patient and study too), made if absent;
    remembered in ``new``."""
    patient_id = item.patient.patient_id
    study_uid = item.study.study_instance_uid
    series_uid = item.series.series_instance_uid
    patient = new.patients.get(patient_id) or known.patients.get(patient_id) or _patient_for(item)
    study = new.studies.get(study_uid) or known.studies.get(study_uid) or _study_for(item, patient)
    series = new.series.get(series_uid) or known.series.get(series_uid) or _series_for(item, study)
    new.patients[patient_id] = patient
    new.studies[study_uid] = study
    new.series[series_uid] = series
    new.study_patient[study_uid] = patient_id
    new.series_study[series_uid] = study_uid
    return series


def instance_row(
    item: InspectedInstance,
    *,
    series: Series,
    relative: str,
    size_bytes: int,
    session: IngestSession,
) -> Instance:
    return Instance(
        sop_instance_uid=item.sop_instance_uid,
        series=series,
        sop_class_uid=item.sop_class_uid,
        transfer_syntax_uid=item.transfer_syntax_uid,
        instance_number=item.instance_number,
        image_position=list(item.image_position) if item.image_position else None,
        stored_path=relative,
        size_bytes=size_bytes,
        sha256=item.sha256,
        dataset_sha256=item.dataset_sha256,
        warnings=list(item.warnings),
        ingest_session=session,
    )


def stored_dataset_hashes(uids: list[str]) -> dict[str, str]:
    """``dataset_sha256`` of the instances already stored under these SOP Instance UIDs.

    One plain query on the unique index: asked once per received instance by the
    listener, where the ORM's own work would be a good part of the cost. A row indexed
    before the data set's hash was kept (migration 0003) has none: it is computed from
    the stored file now and saved, so that a repeat of it is a duplicate, not a conflict.
    """
    if not uids:
        return {}
    table = connection.ops.quote_name(Instance._meta.db_table)
    marks = ", ".join(["%s"] * len(uids))
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT sop_instance_uid, dataset_sha256, stored_path FROM {table} "  # parameters
            f"WHERE sop_instance_uid IN ({marks})",
            list(uids),
        )
        rows = cursor.fetchall()
    return {
        uid: digest or _dataset_hash_backfill(uid, stored_path) for uid, digest, stored_path in rows
    }


def _dataset_hash_backfill(uid: str, stored_path: str) -> str:
    """The data set hash of a stored file indexed without one, saved on its row; empty
    when the file cannot be read (the repeat is then refused as a conflict, and the
    stored row kept, as before)."""
    try:
        data = object_read(stored_path)
        _, digest = buffer_hashes(data, dataset_offset(data))
    except OSError:  # the store's errors, S3's included
        return ""
    Instance.objects.filter(sop_instance_uid=uid, dataset_sha256="").update(dataset_sha256=digest)
    return digest


def owners_of(
    items: list[InspectedInstance], claimed: Rows
) -> tuple[dict[str, str], dict[str, str]]:
    """Who owns each study (Patient ID) and series (Study Instance UID) of ``items``:
    what this import already claimed, then the index."""
    study_owner = dict(claimed.study_patient)
    series_owner = dict(claimed.series_study)
    studies = {i.study.study_instance_uid for i in items} - study_owner.keys()
    if studies:
        study_owner.update(
            Study.objects.filter(study_instance_uid__in=studies)
            .order_by()
            .values_list("study_instance_uid", "patient__patient_id")
        )
    series = {i.series.series_instance_uid for i in items} - series_owner.keys()
    if series:
        series_owner.update(
            Series.objects.filter(series_instance_uid__in=series)
            .order_by()
            .values_list("series_instance_uid", "study__study_instance_uid")
        )
    return study_owner, series_owner


def misfiled_reason(
    item: InspectedInstance, study_owner: dict[str, str], series_owner: dict[str, str]
) -> str:
    """Why ``item`` cannot be filed where its UIDs say ("" when it can); claims its
    study and series for it in the two maps."""
    owner = study_owner.setdefault(item.study.study_instance_uid, item.patient.patient_id)
    if owner != item.patient.patient_id:
        return "its Study Instance UID is already stored under a different Patient ID"
    parent = series_owner.setdefault(item.series.series_instance_uid, item.study.study_instance_uid)
    if parent != item.study.study_instance_uid:
        return "its Series Instance UID is already stored under a different study"
    return ""


def _patient_for(item: InspectedInstance) -> Patient:
    patient, _ = Patient.objects.get_or_create(
        patient_id=item.patient.patient_id,
        defaults={
            "name": item.patient.name,
            "birth_date": item.patient.birth_date,
            "sex": item.patient.sex,
        },
    )
    return patient


def _study_for(item: InspectedInstance, patient: Patient) -> Study:
    attrs = item.study
    study, _ = Study.objects.get_or_create(
        study_instance_uid=attrs.study_instance_uid,
        defaults={
            "patient": patient,
            "study_date": attrs.study_date,
            "study_time": attrs.study_time,
            "accession_number": attrs.accession_number,
            "description": attrs.description,
        },
    )
    return study


def _series_for(item: InspectedInstance, study: Study) -> Series:
    attrs = item.series
    series, _ = Series.objects.get_or_create(
        series_instance_uid=attrs.series_instance_uid,
        defaults={
            "study": study,
            "modality": attrs.modality,
            "series_number": attrs.series_number,
            "description": attrs.description,
            "manufacturer": attrs.manufacturer,
            "kernel": attrs.kernel,
            "body_part": attrs.body_part,
            "rows": attrs.rows,
            "columns": attrs.columns,
            "pixel_spacing_row_mm": attrs.pixel_spacing_row_mm,
            "pixel_spacing_column_mm": attrs.pixel_spacing_column_mm,
            "slice_thickness_mm": attrs.slice_thickness_mm,
            "image_orientation": list(attrs.image_orientation) if attrs.image_orientation else None,
            "patient_position": attrs.patient_position,
            "frame_of_reference_uid": attrs.frame_of_reference_uid,
        },
    )
    return series
