"""What happened to each file of an import: stored, a duplicate, a conflict or refused,
with the reason; every text is cleaned for the database when the outcome is made."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Literal

from imaging.core.dicom.inspect import text_clean
from imaging.ingest.readers import Inspected

logger = logging.getLogger(__name__)

Status = Literal["stored", "duplicate", "conflict", "rejected"]
#: How an issue's reason names a file that had been acknowledged as stored and is kept
#: unindexed, followed by its path in the store (`acknowledged_kept`).
ACKNOWLEDGED_KEPT_AT = "; this file had been acknowledged as stored: it is kept, not indexed, at "


@dataclass(frozen=True)
class FileOutcome:
    """What happened to one file; its texts are cleaned for the database on creation."""

    name: str
    status: Status
    reason: str = ""
    sop_instance_uid: str = ""
    warnings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", text_clean(self.name))
        object.__setattr__(self, "reason", text_clean(self.reason))
        object.__setattr__(self, "warnings", tuple(text_clean(w) for w in self.warnings))

    def line(self) -> str:
        """One line for a person: what happened to this file and why."""
        text = f"{self.name}: {self.status}"
        if self.reason:
            text += f": {self.reason}"
        return text


def stored_outcome(found: Inspected) -> FileOutcome:
    item = found.item
    return FileOutcome(found.name, "stored", "", item.sop_instance_uid, item.warnings)


def refused_outcome(found: Inspected, reason: str) -> FileOutcome:
    return FileOutcome(found.name, "rejected", reason, found.item.sop_instance_uid)


def repeat_outcome(found: Inspected, stored_dataset_sha256: str) -> FileOutcome:
    """Same data set: a duplicate, whatever File Meta the sender wrote; else a conflict."""
    uid = found.item.sop_instance_uid
    if stored_dataset_sha256 == found.item.dataset_sha256:
        return FileOutcome(found.name, "duplicate", "already stored", uid)
    return FileOutcome(
        found.name,
        "conflict",
        "a different file is already stored under this SOP Instance UID; the stored file is kept",
        uid,
    )


def acknowledged_kept(outcome: FileOutcome, relative: str) -> FileOutcome:
    """``outcome`` of a file its sender was told is stored (a group commit) and that no
    index row can name: a conflict with a file another process indexed meanwhile, or
    values the database refuses. Its bytes stay where they are (the store is
    content-addressed: nothing else is written under that name), and the reason, kept
    as the session's issue, says where, so that ``verify_storage --repair`` keeps it."""
    logger.warning(
        "an acknowledged instance could not be indexed (%s); its file is kept at %s",
        outcome.status,
        relative,
    )
    return dataclasses.replace(outcome, reason=f"{outcome.reason}{ACKNOWLEDGED_KEPT_AT}{relative}")
