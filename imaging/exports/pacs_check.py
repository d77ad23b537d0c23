"""Sending exported SEG and SR objects to the PACS and saying what the PACS actually did.

A PACS that already holds an instance under a SOP Instance UID usually keeps its copy
and still answers the store as a success (Orthanc does, unless told to overwrite), so
the STOW-RS answer alone cannot tell "stored" from "ignored". Each instance is therefore
looked up (WADO-RS) before and after the store and its content compared with ours
(`dataset_digest`: every element outside the File Meta group), giving per instance:

- ``stored``: it was not there, and now is, as sent;
- ``already present``: the same content was there already;
- ``replaced``: other content was there and the PACS took ours;
- ``kept different content``: other content was there and still is: a warning, because
  the PACS shows something else under our UID;
- ``not stored``: absent after the store.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import requests
from pydicom.dataset import Dataset

from imaging.ingest.pacs import PacsConfig, PacsError, pacs_call, pacs_instances_send
from imaging.models import PacsTransfer

__all__ = ["PacsSendReport", "dataset_digest", "pacs_export_send"]


@dataclass
class PacsSendReport:
    """The transfer row, what the PACS did with each instance (by kind), and warnings."""

    transfer: PacsTransfer
    outcomes: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def dataset_digest(dataset: Dataset) -> str:
    """SHA-256 of every element but the File Meta group (which a PACS may rewrite)."""
    digest = hashlib.sha256()
    for element in dataset:
        if element.tag.group == 0x0002:
            continue
        digest.update(f"{element.tag}{element.VR}".encode())
        value = element.value
        if element.VR == "SQ":
            for item in value:
                digest.update(dataset_digest(item).encode())
        elif isinstance(value, bytes | bytearray):
            digest.update(value)
        else:
            digest.update(repr(value).encode())
    return digest.hexdigest()


def _remote_digest(config: PacsConfig, dataset: Dataset) -> str | None:
    """Digest of the PACS's copy of ``dataset``'s instance; None when it has none."""
    client = config.client()

    def retrieve() -> str | None:
        try:
            remote = client.retrieve_instance(
                study_instance_uid=str(dataset.StudyInstanceUID),
                series_instance_uid=str(dataset.SeriesInstanceUID),
                sop_instance_uid=str(dataset.SOPInstanceUID),
            )
        except requests.HTTPError as exc:
            if exc.response is not None and exc.response.status_code == 404:
                return None
            raise
        return dataset_digest(remote)

    return pacs_call(config=config, what="looking the instance up on the PACS", call=retrieve)


def _kind(dataset: Dataset) -> str:
    return "SEG" if str(dataset.get("Modality", "")) == "SEG" else "SR"


def pacs_export_send(
    *, study_instance_uid: str, paths: list[Path], config: PacsConfig | None = None
) -> PacsSendReport:
    """STOW-RS ``paths`` (one study's SEG and SR) and report what the PACS did (module doc)."""
    config = config or PacsConfig.from_settings()
    datasets = [pydicom.dcmread(path) for path in paths]
    ours = {str(ds.SOPInstanceUID): dataset_digest(ds) for ds in datasets}
    try:
        before = {str(ds.SOPInstanceUID): _remote_digest(config, ds) for ds in datasets}
    except PacsError:
        before = {}  # the store below meets the same failure and records it
    transfer = pacs_instances_send(
        study_instance_uid=study_instance_uid, paths=paths, config=config
    )
    report = PacsSendReport(transfer=transfer)
    if transfer.status != PacsTransfer.Status.DONE:
        return report
    for ds in datasets:
        uid = str(ds.SOPInstanceUID)
        try:
            after = _remote_digest(config, ds)
        except PacsError as exc:
            report.warnings.append(f"{_kind(ds)} {uid}: could not be checked on the PACS: {exc}")
            continue
        outcome = _outcome(before.get(uid, _UNKNOWN), after, ours[uid])
        report.outcomes[_kind(ds)] = outcome
        if outcome in ("kept different content", "not stored"):
            report.warnings.append(
                f"{_kind(ds)} {uid}: the PACS {outcome}"
                + (
                    " under this SOP Instance UID (it shows an earlier object, not this one)"
                    if outcome == "kept different content"
                    else ""
                )
            )
    return report


_UNKNOWN = "unknown"


def _outcome(before: str | None, after: str | None, ours: str) -> str:
    """What the PACS did, from its copy's digest before and after, and ours."""
    if after is None:
        return "not stored"
    if before == ours:
        return "already present"
    if after == ours:
        return "stored" if before in (None, _UNKNOWN) else "replaced"
    return "kept different content"
