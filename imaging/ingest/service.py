"""One ingest service behind every door: folder, upload, REST, C-STORE and DICOMweb.

Each file is checked (`imaging.core.dicom.inspect`), written to the object store and
fsynced, and only then indexed; a batch of files is indexed in one transaction, so a
crash at any moment leaves no row without its file. The same SOP instance sent again
with the same bytes is a duplicate and changes nothing; different bytes under a stored
SOP Instance UID are a conflict and are refused. When an import ends, every image
series that received new instances is queued for processing once the transaction
commits.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from imaging.core.dicom.inspect import (
    DicomRejected,
    HeaderCache,
    InspectedInstance,
    instance_inspect,
)
from imaging.ingest.sources import IngestSource, sources_from_paths
from imaging.models import ANALYSED_MODALITIES, IngestIssue, IngestSession, Instance, Series, Study
from imaging.pipeline.queue import study_queue
from imaging.store import object_write
from patients.audit import audit_record, client_address
from patients.models import Patient

logger = logging.getLogger(__name__)

#: Files written at once: fsync waits on the disk, not the interpreter.
WRITE_THREADS = 8

Status = Literal["stored", "duplicate", "conflict", "rejected"]


@dataclass(frozen=True)
class FileOutcome:
    name: str
    status: Status
    reason: str = ""
    sop_instance_uid: str = ""
    warnings: tuple[str, ...] = ()

    def line(self) -> str:
        """One line for a person: what happened to this file and why."""
        text = f"{self.name}: {self.status}"
        if self.reason:
            text += f": {self.reason}"
        return text


@dataclass
class _Pending:
    name: str
    item: InspectedInstance


@dataclass
class _Staged:
    """A batch whose repeats are sorted out and whose new files are being written."""

    outcomes: dict[int, FileOutcome]
    fresh: list[tuple[int, _Pending]]
    writes: list[Future]


@dataclass
class _Rows:
    """Patient, study and series rows by UID, and which patient and study own each."""

    patients: dict[str, Patient] = field(default_factory=dict)
    studies: dict[str, Study] = field(default_factory=dict)
    series: dict[str, Series] = field(default_factory=dict)
    study_patient: dict[str, str] = field(default_factory=dict)
    series_study: dict[str, str] = field(default_factory=dict)

    def update(self, other: _Rows) -> None:
        self.patients.update(other.patients)
        self.studies.update(other.studies)
        self.series.update(other.series)
        self.study_patient.update(other.study_patient)
        self.series_study.update(other.series_study)


@dataclass
class IngestRun:
    """An ingest session in progress; add sources, then `finish`."""

    source: str
    origin: str = ""
    user: object = None
    process: bool = True
    batch_size: int = 64
    #: Carry on an open session begun by an earlier request (chunked uploads).
    resume: IngestSession | None = None
    session: IngestSession = field(init=False)
    # Rows this run has committed, by UID: later batches of the same series need no
    # queries for them (an association sends one instance per batch).
    _known: _Rows = field(default_factory=_Rows, init=False)
    _headers: HeaderCache = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        if self.resume is not None:
            if self.resume.status != IngestSession.Status.RUNNING:
                raise ValueError(f"ingest session {self.resume.pk} is already closed")
            self.session = self.resume
            return
        self.session = IngestSession.objects.create(
            source=self.source,
            origin=self.origin[:255],
            user=self.user if getattr(self.user, "is_authenticated", False) else None,
        )

    # -- public -------------------------------------------------------------------
    def add(
        self,
        sources: Iterable[IngestSource],
        *,
        on_file: Callable[[FileOutcome], None] | None = None,
    ) -> list[FileOutcome]:
        """Import ``sources``; one bad file never stops the rest.

        Batches overlap: while one batch's files are written and fsynced (waiting on the
        disk), the next batch is read and checked (working the CPU); a batch is indexed
        once its files are safely on disk.
        """
        outcomes: list[FileOutcome] = []
        batch: list[_Pending] = []
        in_flight: _Staged | None = None

        def emit(done: Iterable[FileOutcome]) -> None:
            for outcome in done:
                outcomes.append(outcome)
                if on_file:
                    on_file(outcome)

        with ThreadPoolExecutor(max_workers=WRITE_THREADS) as writer:
            for src in sources:
                pending_or_outcome = self._inspect(src)
                if isinstance(pending_or_outcome, FileOutcome):
                    self._record([pending_or_outcome])
                    emit([pending_or_outcome])
                    continue
                batch.append(pending_or_outcome)
                if len(batch) >= self.batch_size:
                    staged = self._stage(batch, writer)
                    batch = []
                    if in_flight is not None:
                        emit(self._commit(in_flight))
                    in_flight = staged
            if batch:
                staged = self._stage(batch, writer)
                if in_flight is not None:
                    emit(self._commit(in_flight))
                in_flight = staged
            if in_flight is not None:
                emit(self._commit(in_flight))
        return outcomes

    def finish(self, *, failed: str = "") -> IngestSession:
        """Close the session and queue processing of every series that got new images."""

        with transaction.atomic():
            session = IngestSession.objects.select_for_update().get(pk=self.session.pk)
            session.status = IngestSession.Status.FAILED if failed else IngestSession.Status.DONE
            session.finished_at = timezone.now()
            session.save(update_fields=["status", "finished_at"])
            if failed:
                IngestIssue.objects.create(
                    session=session,
                    kind=IngestIssue.Kind.REJECTED,
                    file_name="(session)",
                    reason=failed,
                )
            # Every series that got instances in this session, across all its requests.
            # The study is queued as a whole: its worker chooses the series to analyse.
            touched = Series.objects.filter(instances__ingest_session=session).distinct()
            studies: dict[int, list[Series]] = {}
            for series in touched:
                if series.modality not in ANALYSED_MODALITIES:
                    series.state = Series.State.NOT_ANALYSED
                    series.save(update_fields=["state", "updated_at"])
                elif self.process:
                    studies.setdefault(series.study_id, []).append(series)
                else:
                    series.state = Series.State.STORED
                    series.save(update_fields=["state", "updated_at"])
            for changed in studies.values():
                study_queue(study=changed[0].study, series=changed)
        self.session = session
        return session

    # -- steps --------------------------------------------------------------------
    def _inspect(self, src: IngestSource) -> _Pending | FileOutcome:
        limit = settings.RADTRACK_MAX_UPLOAD_BYTES
        if src.size is not None and src.size > limit:
            return FileOutcome(
                src.name,
                "rejected",
                f"{src.size / 2**20:.1f} MB is over the {limit / 2**20:.0f} MB limit",
            )
        try:
            data = src.read()
        except (OSError, zipfile.BadZipFile, RuntimeError) as exc:
            return FileOutcome(src.name, "rejected", f"cannot be read: {exc}")
        if len(data) > limit:
            return FileOutcome(
                src.name,
                "rejected",
                f"{len(data) / 2**20:.1f} MB is over the {limit / 2**20:.0f} MB limit",
            )
        try:
            return _Pending(src.name, instance_inspect(data, name=src.name, headers=self._headers))
        except DicomRejected as exc:
            return FileOutcome(src.name, "rejected", str(exc))
        except Exception as exc:  # a reader bug must not stop the batch
            logger.exception("unexpected error while reading an incoming file")
            return FileOutcome(src.name, "rejected", f"unreadable ({type(exc).__name__}: {exc})")

    def _stage(self, batch: list[_Pending], writer: ThreadPoolExecutor) -> _Staged:
        """Sort out repeats and misfiled objects, and start writing the rest."""
        outcomes: dict[int, FileOutcome] = {}
        uids = [p.item.sop_instance_uid for p in batch]
        known = dict(
            Instance.objects.filter(sop_instance_uid__in=uids)
            .order_by()
            .values_list("sop_instance_uid", "dataset_sha256")
        )
        seen_in_batch: dict[str, str] = {}
        fresh: list[tuple[int, _Pending]] = []
        for index, pending in enumerate(batch):
            item = pending.item
            uid = item.sop_instance_uid
            previous = known[uid] if uid in known else seen_in_batch.get(uid)
            if previous is not None:
                outcomes[index] = _repeat_outcome(pending, previous)
                continue
            seen_in_batch[item.sop_instance_uid] = item.dataset_sha256
            fresh.append((index, pending))

        fresh, refused = self._check_hierarchy(fresh)
        outcomes.update(refused)
        if len(fresh) == 1:  # one C-STORE: no thread hand-over for a single file
            future: Future = Future()
            future.set_result(_object_store(fresh[0][1].item))
            writes = [future]
        else:
            writes = [writer.submit(_object_store, pending.item) for _, pending in fresh]
        return _Staged(outcomes=outcomes, fresh=fresh, writes=writes)

    def _commit(self, staged: _Staged) -> list[FileOutcome]:
        """Index a staged batch once its files are on disk, in one transaction."""
        outcomes = staged.outcomes
        written: list[tuple[int, _Pending, str]] = []
        for (index, pending), future in zip(staged.fresh, staged.writes, strict=True):
            result = future.result()
            if isinstance(result, OSError):
                outcomes[index] = FileOutcome(
                    pending.name, "rejected", f"could not be stored: {result}"
                )
                continue
            written.append((index, pending, result))
        try:
            with transaction.atomic():
                indexed, rows = self._index(written)
                outcomes.update(indexed)
                ordered = [outcomes[i] for i in sorted(outcomes)]
                # Counters in the same transaction: one commit per batch.
                self._record_rows(ordered)
            self._known.update(rows)
            return ordered
        except IntegrityError:
            # Stored meanwhile by another import, or by an earlier batch of this one
            # (the same file twice): index one by one.
            for entry in written:
                try:
                    with transaction.atomic():
                        indexed, rows = self._index([entry])
                    outcomes.update(indexed)
                    self._known.update(rows)
                except IntegrityError:
                    index, pending, _ = entry
                    previous = (
                        Instance.objects.filter(sop_instance_uid=pending.item.sop_instance_uid)
                        .order_by()
                        .values_list("dataset_sha256", flat=True)
                        .first()
                    )
                    outcomes[index] = _repeat_outcome(pending, previous or "")
        ordered = [outcomes[i] for i in sorted(outcomes)]
        self._record(ordered)
        return ordered

    def _check_hierarchy(
        self, fresh: list[tuple[int, _Pending]]
    ) -> tuple[list[tuple[int, _Pending]], dict[int, FileOutcome]]:
        """Refuse files whose study or series is already filed under another parent."""
        study_owner = dict(self._known.study_patient)
        series_owner = dict(self._known.series_study)
        studies = {p.item.study.study_instance_uid for _, p in fresh} - study_owner.keys()
        if studies:
            study_owner.update(
                Study.objects.filter(study_instance_uid__in=studies)
                .order_by()
                .values_list("study_instance_uid", "patient__patient_id")
            )
        series = {p.item.series.series_instance_uid for _, p in fresh} - series_owner.keys()
        if series:
            series_owner.update(
                Series.objects.filter(series_instance_uid__in=series)
                .order_by()
                .values_list("series_instance_uid", "study__study_instance_uid")
            )
        keep, refused = [], {}
        for index, pending in fresh:
            item = pending.item
            owner = study_owner.setdefault(item.study.study_instance_uid, item.patient.patient_id)
            if owner != item.patient.patient_id:
                refused[index] = FileOutcome(
                    pending.name,
                    "rejected",
                    "its Study Instance UID is already stored under a different Patient ID",
                    item.sop_instance_uid,
                )
                continue
            parent = series_owner.setdefault(
                item.series.series_instance_uid, item.study.study_instance_uid
            )
            if parent != item.study.study_instance_uid:
                refused[index] = FileOutcome(
                    pending.name,
                    "rejected",
                    "its Series Instance UID is already stored under a different study",
                    item.sop_instance_uid,
                )
                continue
            keep.append((index, pending))
        return keep, refused

    def _index(
        self, written: list[tuple[int, _Pending, str]]
    ) -> tuple[dict[int, FileOutcome], _Rows]:
        new, known = _Rows(), self._known
        if not written:
            return {}, new
        rows = []
        outcomes = {}
        added: dict[int, int] = {}
        for index, pending, relative in written:
            item = pending.item
            patient_id = item.patient.patient_id
            study_uid = item.study.study_instance_uid
            series_uid = item.series.series_instance_uid
            patient = (
                new.patients.get(patient_id) or known.patients.get(patient_id) or _patient_for(item)
            )
            study = (
                new.studies.get(study_uid)
                or known.studies.get(study_uid)
                or _study_for(item, patient)
            )
            series = (
                new.series.get(series_uid)
                or known.series.get(series_uid)
                or _series_for(item, study)
            )
            new.patients[patient_id] = patient
            new.studies[study_uid] = study
            new.series[series_uid] = series
            new.study_patient[study_uid] = patient_id
            new.series_study[series_uid] = study_uid
            added[series.pk] = added.get(series.pk, 0) + 1
            rows.append(
                Instance(
                    sop_instance_uid=item.sop_instance_uid,
                    series=series,
                    sop_class_uid=item.sop_class_uid,
                    transfer_syntax_uid=item.transfer_syntax_uid,
                    instance_number=item.instance_number,
                    image_position=list(item.image_position) if item.image_position else None,
                    stored_path=relative,
                    size_bytes=len(item.data),
                    sha256=item.sha256,
                    dataset_sha256=item.dataset_sha256,
                    warnings=list(item.warnings),
                    ingest_session=self.session,
                )
            )
            outcomes[index] = FileOutcome(
                pending.name, "stored", "", item.sop_instance_uid, item.warnings
            )
        Instance.objects.bulk_create(rows)
        now = timezone.now()
        for series_pk, n in added.items():
            Series.objects.filter(pk=series_pk).update(
                slice_count=F("slice_count") + n, updated_at=now
            )
        return outcomes, new

    def _record(self, outcomes: list[FileOutcome]) -> None:
        """Add outcomes to the session's counters and keep its per-file issues."""
        with transaction.atomic():
            self._record_rows(outcomes)

    def _record_rows(self, outcomes: list[FileOutcome]) -> None:
        if not outcomes:
            return
        counter = {
            "stored": "stored",
            "duplicate": "duplicates",
            "conflict": "conflicts",
            "rejected": "rejected",
        }
        increments: dict[str, int] = {"files_seen": 0}
        issues = []
        for outcome in outcomes:
            increments["files_seen"] += 1
            increments[counter[outcome.status]] = increments.get(counter[outcome.status], 0) + 1
            if outcome.status in ("rejected", "conflict"):
                issues.append(
                    IngestIssue(
                        session=self.session,
                        kind=outcome.status,
                        file_name=outcome.name[-1024:],
                        reason=outcome.reason,
                        sop_instance_uid=outcome.sop_instance_uid,
                    )
                )
            for warning in outcome.warnings:
                increments["warnings"] = increments.get("warnings", 0) + 1
                issues.append(
                    IngestIssue(
                        session=self.session,
                        kind=IngestIssue.Kind.WARNING,
                        file_name=outcome.name[-1024:],
                        reason=warning,
                        sop_instance_uid=outcome.sop_instance_uid,
                    )
                )
        IngestSession.objects.filter(pk=self.session.pk).update(
            **{name: F(name) + n for name, n in increments.items()}
        )
        IngestIssue.objects.bulk_create(issues)


def _object_store(item: InspectedInstance) -> str | OSError:
    """Write one object to the store (fsynced); its relative path, or the error."""
    try:
        return object_write(item.data, item.sha256)[0]
    except OSError as exc:
        return exc


def _repeat_outcome(pending: _Pending, stored_dataset_sha256: str) -> FileOutcome:
    """Same data set: a duplicate, whatever File Meta the sender wrote; else a conflict."""
    if stored_dataset_sha256 == pending.item.dataset_sha256:
        return FileOutcome(
            pending.name, "duplicate", "already stored", pending.item.sop_instance_uid
        )
    return FileOutcome(
        pending.name,
        "conflict",
        "a different file is already stored under this SOP Instance UID; the stored file is kept",
        pending.item.sop_instance_uid,
    )


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


def ingest_paths(
    *,
    paths: Iterable[Path],
    process: bool = True,
    on_file: Callable[[FileOutcome], None] | None = None,
) -> tuple[IngestSession, list[FileOutcome]]:
    """Import files, folders and zips from disk (``manage.py ingest``)."""
    paths = list(paths)
    run = IngestRun(
        source=IngestSession.Source.FOLDER, origin=", ".join(map(str, paths))[:255], process=process
    )
    outcomes = run.add(sources_from_paths(paths), on_file=on_file)
    return run.finish(), outcomes


def ingest_run(
    *,
    request,
    source: str,
    sources: Iterable[IngestSource],
    process: bool = True,
    resume: IngestSession | None = None,
    close: bool = True,
) -> tuple[IngestSession, list[FileOutcome]]:
    """Import ``sources`` in a session owned by the request's user, and audit it.

    With ``close=False`` the session stays open so that later requests (``resume``)
    add to it, and its series are queued for processing once, when it is closed.
    """
    run = IngestRun(
        source=source,
        origin=client_address(request) or "",
        user=request.user,
        process=process,
        resume=resume,
    )
    try:
        outcomes = run.add(sources)
    except Exception as exc:
        run.finish(failed=f"the import stopped: {type(exc).__name__}")
        raise
    session = run.finish() if close else IngestSession.objects.get(pk=run.session.pk)
    audit_record(request=request, action="images.upload", object=f"ingest session {session.pk}")
    return session, outcomes
