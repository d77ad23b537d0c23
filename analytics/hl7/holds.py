"""What the EHR holds of RadTrack's results, read from the ORU^R01 messages it accepted
(`patients.models.ResultMessage`): per patient and study, the latest accepted message's
content and status, and whether a final result stands (`analytics.hl7.send` decides
corrections and withdrawals from it)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from analytics.hl7.message import CORRECTION_STATUS, WITHDRAWN_STATUS
from patients.models import ResultMessage

#: Result statuses (OBR-25) of a final result the EHR accepted.
_FINAL_SENT = frozenset({"F", CORRECTION_STATUS})


@dataclass(frozen=True)
class EHRHolds:
    """What the EHR accepted for one study of one patient: the latest accepted message's
    content digest and result status (OBR-25, or W for a withdrawal), and whether a
    final result (F, or a correction C) was accepted since the last withdrawal."""

    digest: str
    result_status: str
    final: bool

    @property
    def withdrawn(self) -> bool:
        return self.result_status == WITHDRAWN_STATUS

    def says(self, digest: str) -> bool:
        """Whether the EHR holds a result saying exactly this (``digest``)."""
        return not self.withdrawn and self.digest == digest


def ehr_holds_of(rows: Iterable[tuple[int, str, str, str]]) -> dict[tuple[int, str], EHRHolds]:
    """``rows``: (patient pk, Study Instance UID, content digest, result status) of the
    accepted messages, newest first; what the EHR holds per patient and study."""
    history: dict[tuple[int, str], list[tuple[str, str]]] = {}
    for patient_id, uid, digest, status in rows:
        history.setdefault((patient_id, uid), []).append((digest, status))
    out = {}
    for key, messages in history.items():
        final = False
        for _, status in messages:
            if status == WITHDRAWN_STATUS:
                break
            if status in _FINAL_SENT:
                final = True
                break
        out[key] = EHRHolds(digest=messages[0][0], result_status=messages[0][1], final=final)
    return out


def accepted_holds(
    *, patient_id: int | None = None, study_uids: set[str] | None = None
) -> dict[tuple[int, str], EHRHolds]:
    """What the EHR holds (`EHRHolds`) per (patient pk, Study Instance UID): of one
    patient or all, of some studies or all."""
    rows = ResultMessage.objects.filter(status=ResultMessage.Status.ACCEPTED)
    if patient_id is not None:
        rows = rows.filter(patient_id=patient_id)
    if study_uids is not None:
        rows = rows.filter(study_instance_uid__in=study_uids)
    return ehr_holds_of(
        rows.order_by("-created_at", "-pk").values_list(
            "patient_id", "study_instance_uid", "content_sha256", "result_status"
        )
    )


def last_accepted(patient_id: int, uid: str) -> ResultMessage | None:
    """The last message about ``uid`` of the patient the EHR accepted."""
    return (
        ResultMessage.objects.filter(
            patient_id=patient_id, study_instance_uid=uid, status=ResultMessage.Status.ACCEPTED
        )
        .order_by("-created_at", "-pk")
        .first()
    )
