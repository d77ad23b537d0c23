"""The PACS over DICOMweb: find studies (QIDO-RS), retrieve them (WADO-RS), send (STOW-RS).

Every call has a connect and a read timeout; a connection failure, a timeout or a
server error (HTTP 5xx, 408, 429) is retried with a doubling wait, and what finally
happened is recorded on a `PacsTransfer` per study. A study is never lost: retrieved
instances go through the one ingest service, which keeps what it stored and skips what
it already has, so a retrieve that failed half-way is simply run again (the scheduled
pull retries failed ones). A refusal (another 4xx) is reported at once, not retried.
Messages and logs name transfers, counts and HTTP statuses, never patient attributes.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from django.conf import settings
from django.db.models import Count
from django.utils import timezone
from pydicom.dataset import Dataset

from imaging.ingest.service import FileOutcome, IngestRun
from imaging.ingest.sources import IngestSource
from imaging.models import ANALYSED_MODALITIES, IngestSession, Instance, PacsTransfer, Series, Study
from imaging.pipeline.queue import study_queue
from patients.models import Patient

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: HTTP statuses worth another try: the server is busy or briefly failing.
RETRIABLE_STATUSES = {408, 429, 500, 502, 503, 504}
#: Failed retrieves younger than this are retried by the scheduled pull.
FAILED_RETRY_WINDOW = dt.timedelta(days=30)
#: Accept every stored transfer syntax, so instances come back as the PACS holds them.
ANY_TRANSFER_SYNTAX = (("application/dicom", "*"),)


class PacsError(Exception):
    """A PACS call failed; ``str(exc)`` says what, how often it was tried and why."""

    def __init__(self, message: str, *, attempts: int = 1) -> None:
        super().__init__(message)
        self.attempts = attempts


class PacsNotConfigured(PacsError):
    """No PACS is configured (RADTRACK_PACS_DICOMWEB_URL is unset)."""


@dataclass(frozen=True)
class PacsConfig:
    """Where the PACS is and how patiently to talk to it."""

    url: str
    username: str = ""
    password: str = ""
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0
    attempts: int = 3
    retry_wait_s: float = 2.0

    @classmethod
    def from_settings(cls) -> PacsConfig:
        url = getattr(settings, "RADTRACK_PACS_DICOMWEB_URL", "")
        if not url:
            raise PacsNotConfigured(
                "no PACS is configured: set RADTRACK_PACS_DICOMWEB_URL to its DICOMweb base "
                "URL (e.g. http://pacs:8042/dicom-web)"
            )
        return cls(
            url=url.rstrip("/"),
            username=settings.RADTRACK_PACS_USERNAME,
            password=settings.RADTRACK_PACS_PASSWORD,
            connect_timeout_s=settings.RADTRACK_PACS_CONNECT_TIMEOUT_S,
            read_timeout_s=settings.RADTRACK_PACS_READ_TIMEOUT_S,
            attempts=max(1, settings.RADTRACK_PACS_ATTEMPTS),
            retry_wait_s=settings.RADTRACK_PACS_RETRY_WAIT_S,
        )

    def client(self) -> DICOMwebClient:
        """A DICOMweb client with our timeouts; its own retrying is off (ours counts)."""
        session = requests.Session()
        if self.username:
            session.auth = (self.username, self.password)
        client = DICOMwebClient(
            url=self.url,
            session=session,
            timeout=(self.connect_timeout_s, self.read_timeout_s),
        )
        client.set_http_retry_params(retry=False)
        return client


def _failure_text(exc: Exception) -> tuple[str, bool]:
    """A person's description of a failed request, and whether trying again may help."""
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        status = exc.response.status_code
        reason = exc.response.reason or ""
        text = f"HTTP {status} {reason}".strip()
        if status in RETRIABLE_STATUSES:
            return f"the PACS answered {text}", True
        return f"the PACS refused the request ({text})", False
    if isinstance(exc, requests.ConnectTimeout):
        return "no connection to the PACS within the connect timeout", True
    if isinstance(exc, requests.Timeout):
        return "the PACS did not answer within the read timeout", True
    if isinstance(exc, requests.ConnectionError):
        return "cannot connect to the PACS (connection refused, reset or unreachable)", True
    if isinstance(exc, requests.RequestException):
        return f"the transfer broke off ({type(exc).__name__})", True
    return f"unexpected answer from the PACS ({type(exc).__name__}: {exc})", False


def pacs_call(
    *,
    config: PacsConfig,
    what: str,
    call: Callable[[], T],
    on_attempt: Callable[[int], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``call`` with ``config``'s retry policy; raise `PacsError` naming ``what``.

    ``on_attempt(n)`` is told of each attempt before it starts.
    """
    wait = config.retry_wait_s
    for attempt in range(1, config.attempts + 1):
        if on_attempt is not None:
            on_attempt(attempt)
        try:
            return call()
        except (requests.RequestException, ValueError, KeyError) as exc:
            text, retriable = _failure_text(exc)
            if not retriable or attempt == config.attempts:
                tries = f"after {attempt} attempt{'s' if attempt > 1 else ''}"
                raise PacsError(f"{what}: {text} ({tries})", attempts=attempt) from exc
            logger.warning(
                "%s: %s; attempt %d of %d, next in %.1f s",
                what,
                text,
                attempt,
                config.attempts,
                wait,
            )
            sleep(wait)
            wait *= 2
    raise AssertionError("unreachable")


# -- QIDO-RS ----------------------------------------------------------------------
@dataclass(frozen=True)
class RemoteStudy:
    """A study the PACS holds, as QIDO-RS describes it."""

    study_instance_uid: str
    study_date: dt.date | None
    instances: int | None


def _remote_study(item: dict) -> RemoteStudy:
    ds = Dataset.from_json(item)
    uid = str(ds.get("StudyInstanceUID", ""))
    if not uid:
        raise ValueError("a QIDO-RS study result has no Study Instance UID")
    date_text = str(ds.get("StudyDate", "") or "")
    try:
        study_date = dt.datetime.strptime(date_text[:8], "%Y%m%d").date() if date_text else None
    except ValueError:
        study_date = None
    count = ds.get("NumberOfStudyRelatedInstances")
    return RemoteStudy(uid, study_date, int(count) if count not in (None, "") else None)


def pacs_studies_find(
    *,
    config: PacsConfig,
    since: dt.date | None = None,
    study_instance_uid: str = "",
    patient_id: str = "",
) -> list[RemoteStudy]:
    """Studies on the PACS with Study Date on or after ``since``, or of one patient
    (Patient ID, any date) (QIDO-RS, PS3.18 10.6)."""
    filters: dict[str, str] = {}
    if since is not None:
        filters["StudyDate"] = f"{since:%Y%m%d}-"
    if study_instance_uid:
        filters["StudyInstanceUID"] = study_instance_uid
    if patient_id:
        filters["PatientID"] = patient_id
    client = config.client()
    items = pacs_call(
        config=config,
        what="searching the PACS for studies (QIDO-RS)",
        call=lambda: client.search_for_studies(
            search_filters=filters,
            fields=["NumberOfStudyRelatedInstances", "StudyDate"],
            get_remaining=True,
        ),
    )
    return [_remote_study(item) for item in items]


def _remote_instances(client: DICOMwebClient, study_instance_uid: str) -> set[str]:
    items = client.search_for_instances(
        study_instance_uid=study_instance_uid, fields=["SOPInstanceUID"], get_remaining=True
    )
    uids = set()
    for item in items:
        uid = str(Dataset.from_json(item).get("SOPInstanceUID", ""))
        if uid:
            uids.add(uid)
    return uids


# -- WADO-RS ----------------------------------------------------------------------
def _part10_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def wado_ingest_sources(datasets: Iterator[Dataset], counter: list[int]) -> Iterator[IngestSource]:
    """Retrieved data sets as ingest sources, in Part 10 form; ``counter[0]`` counts them.

    pydicom writes a data set it read back element for element, so the bytes after the
    File Meta are the PACS's, and ingest recognises an instance it already has.
    """
    for ds in datasets:
        counter[0] += 1
        data = _part10_bytes(ds)
        yield IngestSource(f"WADO-RS instance {counter[0]}", (lambda d=data: d), len(data))


def _transfer_finish(transfer: PacsTransfer, *, error: str = "") -> PacsTransfer:
    transfer.status = PacsTransfer.Status.FAILED if error else PacsTransfer.Status.DONE
    transfer.error = error
    transfer.finished_at = timezone.now()
    transfer.study = Study.objects.filter(study_instance_uid=transfer.study_instance_uid).first()
    transfer.save()
    if error:
        logger.error("PACS transfer %s failed: %s", transfer.pk, error)
    return transfer


def pacs_study_retrieve(
    *,
    study_instance_uid: str,
    config: PacsConfig | None = None,
    trigger: str = PacsTransfer.Trigger.MANUAL,
    process: bool = True,
    on_file: Callable[[FileOutcome], None] | None = None,
) -> PacsTransfer:
    """Bring every instance of one study that RadTrack lacks in from the PACS.

    Lists the study's instances (QIDO-RS); when any is missing here, retrieves the study
    (WADO-RS, as stored) into one ingest session, which skips what is already stored.
    Retried as a whole on a failure, since each attempt only adds what is missing. The
    transfer ends ``done`` when every instance the PACS listed is stored here, and
    ``failed`` with the reason otherwise, also when an error (the database going away)
    stops it: the next retrieve of the study closes its session and queues what it stored.
    """
    config = config or PacsConfig.from_settings()
    transfer = PacsTransfer.objects.create(
        direction=PacsTransfer.Direction.RETRIEVE,
        study_instance_uid=study_instance_uid,
        pacs_url=config.url[:255],
        trigger=trigger,
    )
    retrieve = _StudyRetrieve(
        config=config, client=config.client(), transfer=transfer, process=process, on_file=on_file
    )
    error = ""
    remote: set[str] = set()
    try:
        try:
            remote = pacs_call(
                config=config,
                what="retrieving a study from the PACS (QIDO-RS, WADO-RS)",
                call=retrieve.attempt,
                on_attempt=retrieve.attempt_count,
            )
        except PacsError as exc:
            error = str(exc)
        if retrieve.run is not None:
            retrieve.run.finish(failed=error)
        if remote and not error:
            _unqueued_queue(transfer, process=process)
    except BaseException as exc:
        # Raised on, for the task's automatic retry; the transfer is closed all the same.
        where = f" in ingest session {retrieve.run.session.pk}" if retrieve.run else ""
        stopped = (
            f"the retrieve stopped ({type(exc).__name__}){where}; what it stored is kept, "
            "and the next retrieve of the study queues it"
        )
        error = f"{error}; {stopped}" if error else stopped
        raise
    finally:
        transfer.instances = retrieve.received[0]
        transfer = _transfer_finish(transfer, error=error or retrieve.absent_error(remote))
    return transfer


def _unqueued_queue(transfer: PacsTransfer, *, process: bool) -> None:
    """Queue what earlier retrieves of the study stored and never queued, having stopped
    before closing their ingest session (the database went away): each such session is
    closed now, which queues its series, then every series of the study that holds
    instances and was never queued (receiving or stored) is queued."""
    uid = transfer.study_instance_uid
    # The session of a closed transfer is no longer worked on: nothing else closes it.
    for old in PacsTransfer.objects.filter(
        direction=PacsTransfer.Direction.RETRIEVE,
        study_instance_uid=uid,
        ingest_session__status=IngestSession.Status.RUNNING,
    ).exclude(status=PacsTransfer.Status.RUNNING):
        session = IngestSession.objects.get(pk=old.ingest_session_id)
        run = IngestRun(source=session.source, process=process, resume=session, claim=False)
        run.finish(failed=f"closed by PACS transfer {transfer.pk}: {old.error}")
    states = [Series.State.RECEIVING] + ([Series.State.STORED] if process else [])
    series = Series.objects.filter(study__study_instance_uid=uid, state__in=states)
    queue = []
    for one in series.filter(instances__isnull=False).select_related("study").distinct():
        if process and one.modality in ANALYSED_MODALITIES:
            queue.append(one)
            continue
        analysed = one.modality in ANALYSED_MODALITIES
        one.state = Series.State.STORED if analysed else Series.State.NOT_ANALYSED
        one.save(update_fields=["state", "updated_at"])
    if queue:
        logger.info("PACS transfer %s: %d series never queued are queued", transfer.pk, len(queue))
        study_queue(study=queue[0].study, series=queue)


def _stored_of(sop_instance_uids: set[str]) -> set[str]:
    return set(
        Instance.objects.filter(sop_instance_uid__in=sop_instance_uids).values_list(
            "sop_instance_uid", flat=True
        )
    )


@dataclass
class _StudyRetrieve:
    """One study's retrieve: each attempt lists the study and fetches it when anything
    is missing, into one ingest session shared by every attempt."""

    config: PacsConfig
    client: DICOMwebClient
    transfer: PacsTransfer
    process: bool
    on_file: Callable[[FileOutcome], None] | None
    run: IngestRun | None = None
    received: list[int] = field(default_factory=lambda: [0])

    def attempt_count(self, n: int) -> None:
        self.transfer.attempts = n
        self.transfer.save(update_fields=["attempts"])

    def attempt(self) -> set[str]:
        uid = self.transfer.study_instance_uid
        remote = _remote_instances(self.client, uid)
        if not remote:
            raise PacsError("the PACS lists no instances for this study")
        if not remote - _stored_of(remote):
            return remote
        if self.run is None:
            self.run = IngestRun(
                source=IngestSession.Source.DICOMWEB,
                origin=f"WADO-RS {self.config.url}"[:255],
                process=self.process,
            )
            self.transfer.ingest_session = self.run.session
            self.transfer.save(update_fields=["ingest_session"])
        datasets = self.client.iter_study(uid, media_types=ANY_TRANSFER_SYNTAX)
        self.run.add(wado_ingest_sources(datasets, self.received), on_file=self.on_file)
        return remote

    def absent_error(self, remote: set[str]) -> str:
        """Why the transfer failed although every call succeeded ("" when it did not)."""
        absent = len(remote - _stored_of(remote))
        if not absent:
            return ""
        session = self.run.session.pk if self.run else "-"
        return (
            f"{absent} of {len(remote)} instances were not stored; "
            f"see ingest session {session} for the reasons"
        )


@dataclass
class PullSummary:
    """What one pull did: the transfers it made and studies already complete here."""

    transfers: list[PacsTransfer] = field(default_factory=list)
    up_to_date: int = 0
    error: str = ""

    @property
    def failed(self) -> list[PacsTransfer]:
        return [t for t in self.transfers if t.status == PacsTransfer.Status.FAILED]

    def line(self) -> str:
        done = len(self.transfers) - len(self.failed)
        text = (
            f"pacs_pull: {len(self.transfers) + self.up_to_date} studies: {done} retrieved, "
            f"{self.up_to_date} already complete, {len(self.failed)} failed"
        )
        if self.error:
            text += f"; {self.error}"
        return text


def _failed_retrieves_to_retry(exclude: Iterable[str]) -> list[str]:
    """Study UIDs whose latest recent retrieve failed: the next pull tries them again."""
    since = timezone.now() - FAILED_RETRY_WINDOW
    latest: dict[str, str] = {}
    for uid, status in (
        PacsTransfer.objects.filter(
            direction=PacsTransfer.Direction.RETRIEVE, started_at__gte=since
        )
        .order_by("started_at", "pk")
        .values_list("study_instance_uid", "status")
    ):
        latest[uid] = status
    skip = set(exclude)
    return sorted(
        uid
        for uid, status in latest.items()
        if status == PacsTransfer.Status.FAILED and uid not in skip
    )


def pacs_pull(
    *,
    since: dt.date | None = None,
    study_instance_uid: str = "",
    config: PacsConfig | None = None,
    trigger: str = PacsTransfer.Trigger.MANUAL,
    process: bool = True,
    on_transfer: Callable[[PacsTransfer], None] | None = None,
) -> PullSummary:
    """Retrieve one study, or every study from ``since`` on that RadTrack lacks.

    A study whose instance count here already matches the PACS's is skipped without a
    transfer. A scheduled pull also retries every study whose last retrieve failed. A
    failed search is reported in the summary; the next pull's look-back covers it.
    """
    config = config or PacsConfig.from_settings()
    summary = PullSummary()

    def retrieve(uid: str) -> None:
        transfer = pacs_study_retrieve(
            study_instance_uid=uid, config=config, trigger=trigger, process=process
        )
        summary.transfers.append(transfer)
        if on_transfer is not None:
            on_transfer(transfer)

    if study_instance_uid:
        retrieve(study_instance_uid)
        return summary
    try:
        remote = pacs_studies_find(config=config, since=since)
    except PacsError as exc:
        summary.error = str(exc)
        remote = []
        logger.error("scheduled PACS search failed: %s", exc)
    local_counts = dict(
        Study.objects.filter(study_instance_uid__in=[r.study_instance_uid for r in remote])
        .order_by()
        .values_list("study_instance_uid")
        .annotate(n=Count("series__instances"))
    )
    seen: list[str] = []

    def take(studies: list[RemoteStudy], counts: dict[str, int]) -> None:
        for study in studies:
            if study.study_instance_uid in seen:
                continue
            seen.append(study.study_instance_uid)
            have = counts.get(study.study_instance_uid, 0)
            # Equal counts: complete. Any other count, more here included (images from
            # another door), is settled by the retrieve, which compares SOP Instance UIDs.
            if study.instances is not None and have == study.instances:
                summary.up_to_date += 1
                continue
            retrieve(study.study_instance_uid)

    take(remote, local_counts)
    if trigger == PacsTransfer.Trigger.SCHEDULE:
        _priors_take(config=config, since=since, remote=remote, take=take, summary=summary)
        for uid in _failed_retrieves_to_retry(seen):
            retrieve(uid)
    return summary


def _priors_take(*, config, since, remote, take, summary) -> None:
    """Earlier studies of the patients seen in this look-back, whatever their date.

    A prior loaded into the PACS late (from another hospital, a restored archive) keeps
    its old Study Date, so the date search never finds it; the follow-up it belongs to
    needs it as the baseline.
    """

    patient_ids = set()
    for study in remote:
        local = Study.objects.filter(study_instance_uid=study.study_instance_uid).first()
        if local is not None:
            patient_ids.add(local.patient.patient_id)
    if since is not None:
        start = timezone.make_aware(dt.datetime.combine(since, dt.time()))
        patient_ids |= set(
            Patient.objects.filter(studies__created_at__gte=start).values_list(
                "patient_id", flat=True
            )
        )
    for patient_id in sorted(patient_ids):
        try:
            studies = pacs_studies_find(config=config, patient_id=patient_id)
        except PacsError as exc:
            summary.error = f"{summary.error}; {exc}" if summary.error else str(exc)
            logger.error("PACS search for a patient's earlier studies failed: %s", exc)
            continue
        counts = dict(
            Study.objects.filter(study_instance_uid__in=[r.study_instance_uid for r in studies])
            .order_by()
            .values_list("study_instance_uid")
            .annotate(n=Count("series__instances"))
        )
        take(studies, counts)


# -- STOW-RS ----------------------------------------------------------------------
def pacs_instances_send(
    *,
    study_instance_uid: str,
    paths: list[Path],
    config: PacsConfig | None = None,
) -> PacsTransfer:
    """Store DICOM files of one study on the PACS (STOW-RS, PS3.18 10.5).

    The transfer is ``done`` when the PACS accepted every instance, and ``failed`` with
    its Failure Reasons (0008,1197) otherwise. Sending the same files again is safe: the
    PACS keeps one copy per SOP Instance UID.
    """
    config = config or PacsConfig.from_settings()
    transfer = PacsTransfer.objects.create(
        direction=PacsTransfer.Direction.SEND,
        study_instance_uid=study_instance_uid,
        pacs_url=config.url[:255],
    )
    client = config.client()
    datasets = [pydicom.dcmread(path) for path in paths]

    def on_attempt(n: int) -> None:
        transfer.attempts = n
        transfer.save(update_fields=["attempts"])

    try:
        response = pacs_call(
            config=config,
            what=f"sending {len(datasets)} instances to the PACS (STOW-RS)",
            call=lambda: client.store_instances(
                datasets=datasets, study_instance_uid=study_instance_uid
            ),
            on_attempt=on_attempt,
        )
    except PacsError as exc:
        return _transfer_finish(transfer, error=str(exc))
    failed = list(response.get("FailedSOPSequence", []))
    accepted = {
        str(item.ReferencedSOPInstanceUID)
        for item in response.get("ReferencedSOPSequence", [])
        if "ReferencedSOPInstanceUID" in item
    }
    transfer.instances = len(accepted)
    error = ""
    if failed:
        reasons = sorted({f"0x{int(item.get('FailureReason', 0)):04X}" for item in failed})
        error = f"the PACS refused {len(failed)} of {len(datasets)} instances (Failure Reason {', '.join(reasons)})"
    elif len(accepted) < len(datasets):
        error = f"the PACS confirmed {len(accepted)} of {len(datasets)} instances"
    return _transfer_finish(transfer, error=error)


def pacs_transfers_recent(*, limit: int = 10) -> list[PacsTransfer]:
    """The latest transfers to and from the PACS, newest first (pipeline page)."""
    return list(PacsTransfer.objects.order_by("-started_at", "-pk")[:limit])
