"""An ORU^R01 (HL7 v2.5.1, Chapter 7) for one assessed study, built with hl7apy, and its ACK.

- MSH: RadTrack as sender, the EHR as receiver, UTF-8 (MSH-18), original acknowledgment.
- PID: PID-3 the MRN, its assigning authority the site's MRN system and type MR; name,
  birth date, sex.
- OBR: OBR-3 (filler order number) and OBR-18 the study's accession number, OBR-4
  LOINC 18748-4 "Diagnostic imaging study", OBR-7 the study date, OBR-22 when the
  response was computed, OBR-25 F (final, `analytics.lesions.finality`), P
  (preliminary), or C when the EHR already accepted a final result for the study and
  what RadTrack says now differs (`StudyResult.correction`, decided by
  `analytics.hl7.send` from what the EHR accepted, never from the assessment's own
  revision history): a correction replaces the final result, and when what replaces it
  is not final any more, a result-state OBX says so (pending a radiologist's review,
  and why), so the EHR never keeps showing a signed-off result RadTrack no longer
  stands by.
- OBX, each with OBX-11 the same status: the Study Instance UID (DCM 110180), when
  the result is not final its state (RESSTATE: pending review, the reasons in an NTE),
  the RECIST 1.1 (CR, PR, SD, PD, NE, non-CR/non-PD), volumetric and, when it applies,
  iRECIST categories (CWE, `LOCAL_SYSTEM` codes), the response note (what the category
  rests on, why it is NE or pending), each revision of a category (from, to, why), the
  date a PD from a new lesion is dated from (DT), the sum of target diameters (mm), total
  volume (mL), percent change from baseline and nadir, new lesions (Y/N, HL7 table
  0136), and per target lesion (OBX-4 sub-id = its order) its Tracking Identifier
  (DCM 112039) and UID (DCM 112040), its finding state (confirmed, equivocal,
  not_found, not_assessable; its NTE says why, and also when the lesion's link to
  earlier studies is only provisional), long axis (SCT 103339001, mm), short axis (SCT 103340004, mm) and volume
  (SCT 118565006, mL). Units are UCUM (OBX-6).

A value the lesion does not have at the study (not found, merged into another lesion,
too small to measure, no volume because it was measured by hand, or seen but its size
not assessable because it reaches the edge of what was imaged) is never sent as a
number: its OBX has no value, OBX-11 X ("results cannot be obtained for this
observation", HL7 table 0085), and an NTE after it says why. A lesion a radiologist
confirmed gone measures 0.

A **withdrawal** (`oru_r01_withdrawal_build`) takes back a result the EHR accepted once
RadTrack has none for that study and patient any more (the study was moved to another
patient or removed): sent under the patient it was sent for, OBR-25 C (a correction to
the order's results; HL7 table 0123 has no withdrawn status) and every OBX-11 W ("post
original as wrong, e.g. transmitted for wrong patient", HL7 table 0085), with a RESPWDRN
OBX saying why, and the result's observations (by identifier, without values) marked W.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from dataclasses import asdict, dataclass

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.exceptions import HL7apyException
from hl7apy.parser import parse_message

__all__ = [
    "Ack",
    "AckError",
    "LOCAL_SYSTEM",
    "LesionResult",
    "ResultWithdrawal",
    "StudyResult",
    "ack_read",
    "oru_r01_build",
    "oru_r01_withdrawal_build",
    "study_result_digest",
    "withdrawal_digest",
]

HL7_VERSION = "2.5.1"
#: RadTrack's local code system for OBX-3 and CWE values (HL7 table 0396 "99zzz" form).
LOCAL_SYSTEM = "99RTK"
RESPONSE_DISPLAY = {
    "CR": "Complete response",
    "PR": "Partial response",
    "SD": "Stable disease",
    "PD": "Progressive disease",
    "NE": "Not evaluable",
    "non-CR/non-PD": "Non-CR/non-PD",
    "iCR": "Immune complete response",
    "iPR": "Immune partial response",
    "iSD": "Immune stable disease",
    "iUPD": "Immune unconfirmed progressive disease",
    "iCPD": "Immune confirmed progressive disease",
    "non-iCR/non-iUPD": "Non-iCR/non-iUPD",
}
FINDING_STATE_DISPLAY = {
    "confirmed": "Confirmed",
    "equivocal": "Equivocal, awaiting confirmation",
    "not_found": "Not found, needs review",
    "not_assessable": "Seen, size not assessable",
}
#: HL7 table 0085: no value could be obtained for the observation.
NO_RESULT_STATUS = "X"
#: HL7 table 0085: post original as wrong (a withdrawal; `ResultMessage.result_status`).
WITHDRAWN_STATUS = "W"
#: HL7 table 0123 (OBR-25) and 0085 (OBX-11): a correction that replaces a final result.
CORRECTION_STATUS = "C"
#: The state of a result that is not final (RESSTATE), the reasons in its NTE.
PENDING_STATE = "pending-review^Not final, pending a radiologist's review"
#: The finding state's NTE of a lesion linked to earlier studies only provisionally.
PROVISIONAL_LINK_NOTE = (
    "its link to earlier studies is provisional (placed by anatomical landmarks without a "
    "registration): awaiting a radiologist's review"
)
_CODES = {
    "study_uid": ("110180", "Study Instance UID", "DCM"),
    "recist": ("RECIST11", "RECIST 1.1 overall response", LOCAL_SYSTEM),
    "volumetric": ("VOLRESP", "Volumetric response", LOCAL_SYSTEM),
    "irecist": ("IRECIST", "iRECIST overall response", LOCAL_SYSTEM),
    "note": ("RESPNOTE", "Response assessment note", LOCAL_SYSTEM),
    "result_state": ("RESSTATE", "Result state", LOCAL_SYSTEM),
    "withdrawal": ("RESPWDRN", "Result withdrawn", LOCAL_SYSTEM),
    "revision": ("RESPREV", "Revision of a response category", LOCAL_SYSTEM),
    "dated_from": ("PDDATE", "Progression dated from", LOCAL_SYSTEM),
    "finding_state": ("FINDSTATE", "Finding state", LOCAL_SYSTEM),
    "sum_diameters": ("SOD", "Sum of target lesion diameters", LOCAL_SYSTEM),
    "total_volume": ("TOTVOL", "Total target lesion volume", LOCAL_SYSTEM),
    "pct_baseline": ("PCTBASE", "Change of sum of diameters from baseline", LOCAL_SYSTEM),
    "pct_nadir": ("PCTNADIR", "Change of sum of diameters from nadir", LOCAL_SYSTEM),
    "new_lesions": ("NEWLES", "New lesions", LOCAL_SYSTEM),
    "tracking_id": ("112039", "Tracking Identifier", "DCM"),
    "tracking_uid": ("112040", "Tracking Unique Identifier", "DCM"),
    "long_axis": ("103339001", "Long axis", "SCT"),
    "short_axis": ("103340004", "Short axis", "SCT"),
    "volume": ("118565006", "Volume", "SCT"),
}
_UNITS = {
    "mm": "mm^millimeter^UCUM",
    "mL": "mL^milliliter^UCUM",
    "%": "%^percent^UCUM",
}


class AckError(ValueError):
    """An answer that is not a readable HL7 ACK with an MSA segment."""


@dataclass(frozen=True)
class LesionResult:
    """A target lesion at the study: values in force (a resolved lesion measures 0);
    None where the lesion has no such value here, ``absent_reason`` says why.
    ``finding_state``: confirmed, equivocal, not_found or not_assessable (seen, size not
    assessable: no values), ``state_reason`` why."""

    tracking_id: str
    tracking_uid: str
    long_axis_mm: float | None
    short_axis_mm: float | None
    volume_ml: float | None
    finding_state: str = "confirmed"
    state_reason: str = ""
    absent_reason: str = ""
    #: Linked to earlier studies only by anatomical landmarks (no registration): a
    #: proposal awaiting a radiologist's review.
    link_provisional: bool = False


@dataclass(frozen=True)
class StudyResult:
    """Everything one study's ORU^R01 says (no times of sending)."""

    mrn: str
    mrn_system: str
    family_name: str
    given_name: str
    birth_date: dt.date | None
    sex: str
    study_instance_uid: str
    accession_number: str
    study_date: dt.date | None
    computed_at: dt.datetime
    is_baseline: bool
    recist: str
    volumetric: str
    note: str
    sum_diameters_mm: float | None
    total_volume_ml: float | None
    pct_change_baseline: float | None
    pct_change_nadir: float | None
    new_lesions: bool
    final: bool
    targets: tuple[LesionResult, ...] = ()
    irecist: str = ""
    progression_dated_from: dt.date | None = None
    #: Each category revision, in words ("RECIST 1.1 SD -> PD on ...: why"), oldest first.
    revisions: tuple[str, ...] = ()
    #: Why it is not final (`analytics.lesions.finality.response_pending_reasons`).
    pending: tuple[str, ...] = ()
    #: The EHR accepted a final result for this study and this one says something else:
    #: it goes as a correction (C), final or not (`analytics.hl7.send`).
    correction: bool = False

    @property
    def status(self) -> str:
        """OBR-25 and OBX-11: C a correction of a final result the EHR accepted, else F
        final or P preliminary."""
        if self.correction:
            return CORRECTION_STATUS
        return "F" if self.final else "P"


def study_result_digest(result: StudyResult) -> str:
    """SHA-256 of what the message says, so that an unchanged result is not sent twice.

    When it was computed is left out: every recomputation stamps it, whether or not
    anything the message says changed; so is whether it goes as a correction, which
    depends on what the EHR holds, not on what the result says. Fields added since
    digests were first kept count only when set, so that a result that says what it said
    then keeps its digest (and is not sent again as a change)."""
    content = {k: v for k, v in asdict(result).items() if k not in {"computed_at", "correction"}}
    if not content["pending"]:
        del content["pending"]
    for target in content["targets"]:
        if not target["link_provisional"]:
            del target["link_provisional"]
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class ResultWithdrawal:
    """A result the EHR accepted that RadTrack takes back: the patient it was sent for,
    the study (its accession number and date when RadTrack still has the study), and
    why, in words without another patient's data."""

    mrn: str
    mrn_system: str
    family_name: str
    given_name: str
    birth_date: dt.date | None
    sex: str
    study_instance_uid: str
    accession_number: str
    study_date: dt.date | None
    reason: str


def withdrawal_digest(withdrawal: ResultWithdrawal) -> str:
    """SHA-256 standing for "withdrawn" on the message's row (no result says it)."""
    content = {"withdrawn": withdrawal.study_instance_uid, "mrn": withdrawal.mrn}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def hl7_escape(text: str) -> str:
    """``text`` with HL7's delimiters escaped (v2.5.1 2.7.1), line breaks as ``\\.br\\``."""
    out = text.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\")
    out = out.replace("&", "\\T\\").replace("~", "\\R\\")
    return out.replace("\r\n", "\\.br\\").replace("\n", "\\.br\\").replace("\r", "\\.br\\")


def _assigning_authority(system: str) -> str:
    """HD: namespace & universal id & its type (ISO for an OID, else URI)."""
    if system.startswith("urn:oid:"):
        return f"RADTRACK&{hl7_escape(system[len('urn:oid:') :])}&ISO"
    return f"RADTRACK&{hl7_escape(system)}&URI"


def _number(value: float) -> str:
    return f"{value:.4f}".rstrip("0").rstrip(".") if value != 0 else "0"


class _Builder:
    """Adds OBX rows to one order observation group, numbering them."""

    def __init__(self, group, status: str, observed: str) -> None:
        self.group, self.status, self.observed, self.count = group, status, observed, 0

    def add(
        self,
        key: str,
        kind: str,
        value: str,
        *,
        unit: str = "",
        sub_id: str = "",
        note: str = "",
        status: str = "",
    ) -> None:
        """One OBX (``kind`` and ``value``; no value: OBX-11 X unless ``status`` says
        otherwise), then an NTE with ``note``."""
        self.count += 1
        code, text, system = _CODES[key]
        observation = self.group.add_group("ORU_R01_OBSERVATION")
        obx = observation.obx
        obx.obx_1 = str(self.count)
        if value:
            obx.obx_2 = kind
        obx.obx_3 = f"{code}^{text}^{system}"
        if sub_id:
            obx.obx_4 = sub_id
        if value:
            obx.obx_5 = value
        if unit:
            obx.obx_6 = _UNITS[unit]
        obx.obx_11 = status or (self.status if value else NO_RESULT_STATUS)
        if self.observed:
            obx.obx_14 = self.observed
        if note:
            nte = observation.add_segment("NTE")
            nte.nte_1 = "1"
            nte.nte_3 = hl7_escape(note)

    def category(self, key: str, value: str, system: str) -> None:
        if value:
            display = RESPONSE_DISPLAY.get(value, value)
            self.add(key, "CWE", f"{hl7_escape(value)}^{display}^{system}")

    def number(self, key: str, value: float | None, unit: str, sub_id: str = "") -> None:
        if value is not None:
            self.add(key, "NM", _number(value), unit=unit, sub_id=sub_id)

    def lesion_number(
        self, key: str, value: float | None, unit: str, sub_id: str, reason: str
    ) -> None:
        if value is None:
            # No value, never a 0 standing for one: OBX-11 X and the reason.
            self.add(key, "", "", sub_id=sub_id, note=reason or "no value at this study")
        else:
            self.number(key, value, unit, sub_id)


def _message_open(
    *,
    patient: StudyResult | ResultWithdrawal,
    control_id: str,
    sending_facility: str,
    receiving_application: str,
    receiving_facility: str,
    at: dt.datetime,
    reported_at: dt.datetime,
    status: str,
):
    """An ORU^R01 with its MSH, PID and OBR (OBR-25 ``status``, OBR-22 ``reported_at``):
    the message and its order observation group, for the OBX rows."""
    message = Message("ORU_R01", version=HL7_VERSION, validation_level=VALIDATION_LEVEL.STRICT)
    msh = message.msh
    msh.msh_3 = "RADTRACK"
    msh.msh_4 = hl7_escape(sending_facility)
    msh.msh_5 = hl7_escape(receiving_application)
    msh.msh_6 = hl7_escape(receiving_facility)
    msh.msh_7 = at.strftime("%Y%m%d%H%M%S%z")
    msh.msh_9 = "ORU^R01^ORU_R01"
    msh.msh_10 = control_id
    msh.msh_11 = "P"
    msh.msh_12 = HL7_VERSION
    msh.msh_18 = "UNICODE UTF-8"
    patient_result = message.add_group("ORU_R01_PATIENT_RESULT")
    pid = patient_result.add_group("ORU_R01_PATIENT").pid
    pid.pid_1 = "1"
    pid.pid_3 = f"{hl7_escape(patient.mrn)}^^^{_assigning_authority(patient.mrn_system)}^MR"
    if patient.family_name or patient.given_name:
        pid.pid_5 = f"{hl7_escape(patient.family_name)}^{hl7_escape(patient.given_name)}"
    if patient.birth_date:
        pid.pid_7 = patient.birth_date.strftime("%Y%m%d")
    pid.pid_8 = patient.sex if patient.sex in {"F", "M", "O"} else "U"
    order = patient_result.add_group("ORU_R01_ORDER_OBSERVATION")
    obr = order.obr
    obr.obr_1 = "1"
    if patient.accession_number:
        obr.obr_3 = f"{hl7_escape(patient.accession_number)}^RADTRACK"
        obr.obr_18 = hl7_escape(patient.accession_number)
    obr.obr_4 = "18748-4^Diagnostic imaging study^LN"
    if patient.study_date:
        obr.obr_7 = patient.study_date.strftime("%Y%m%d")
    obr.obr_22 = reported_at.strftime("%Y%m%d%H%M%S%z")
    obr.obr_25 = status
    return message, order


def _message_text(message) -> str:
    if not message.validate():
        raise HL7apyException("the ORU^R01 does not validate against HL7 v2.5.1")
    return message.to_er7()


def oru_r01_build(
    *,
    result: StudyResult,
    control_id: str,
    sending_facility: str,
    receiving_application: str,
    receiving_facility: str,
    at: dt.datetime,
) -> str:
    """The ORU^R01 for ``result`` as ER7 text (segments separated by CR), validated by
    hl7apy against the v2.5.1 message structure (module docstring)."""
    status = result.status
    message, order = _message_open(
        patient=result,
        control_id=control_id,
        sending_facility=sending_facility,
        receiving_application=receiving_application,
        receiving_facility=receiving_facility,
        at=at,
        reported_at=result.computed_at,
        status=status,
    )
    observed = result.study_date.strftime("%Y%m%d") if result.study_date else ""
    _observations(_Builder(order, status, observed), result)
    return _message_text(message)


#: The observations of a study's result, by identifier, that a withdrawal marks W.
_WITHDRAWN_KEYS = (
    "recist",
    "volumetric",
    "irecist",
    "note",
    "sum_diameters",
    "total_volume",
    "pct_baseline",
    "pct_nadir",
    "new_lesions",
)


def oru_r01_withdrawal_build(
    *,
    withdrawal: ResultWithdrawal,
    control_id: str,
    sending_facility: str,
    receiving_application: str,
    receiving_facility: str,
    at: dt.datetime,
) -> str:
    """The ORU^R01 that withdraws the result the EHR holds for ``withdrawal``'s study and
    patient (module docstring), as ER7 text validated like `oru_r01_build`'s."""
    message, order = _message_open(
        patient=withdrawal,
        control_id=control_id,
        sending_facility=sending_facility,
        receiving_application=receiving_application,
        receiving_facility=receiving_facility,
        at=at,
        reported_at=at,
        status=CORRECTION_STATUS,
    )
    observed = withdrawal.study_date.strftime("%Y%m%d") if withdrawal.study_date else ""
    rows = _Builder(order, WITHDRAWN_STATUS, observed)
    rows.add("study_uid", "ST", hl7_escape(withdrawal.study_instance_uid))
    rows.add("withdrawal", "TX", hl7_escape(withdrawal.reason))
    for key in _WITHDRAWN_KEYS:
        rows.add(key, "", "", status=WITHDRAWN_STATUS)
    return _message_text(message)


def _observations(rows: _Builder, result: StudyResult) -> None:
    rows.add("study_uid", "ST", hl7_escape(result.study_instance_uid))
    if not result.final:
        why = "; ".join(result.pending) or "awaiting a radiologist's review"
        if result.correction:
            why = (
                "replaces the final result sent earlier, which RadTrack no longer stands "
                f"by; not final: {why}"
            )
        rows.add("result_state", "CWE", f"{PENDING_STATE}^{LOCAL_SYSTEM}STATE", note=why)
    rows.category("recist", result.recist, f"{LOCAL_SYSTEM}RECIST")
    rows.category("volumetric", result.volumetric, f"{LOCAL_SYSTEM}VOLUMETRIC")
    rows.category("irecist", result.irecist, f"{LOCAL_SYSTEM}IRECIST")
    if result.note:
        rows.add("note", "TX", hl7_escape(result.note))
    for revision in result.revisions:
        rows.add("revision", "TX", hl7_escape(revision))
    if result.progression_dated_from is not None:
        rows.add("dated_from", "DT", result.progression_dated_from.strftime("%Y%m%d"))
    rows.number("sum_diameters", result.sum_diameters_mm, "mm")
    rows.number("total_volume", result.total_volume_ml, "mL")
    if not result.is_baseline:
        rows.number("pct_baseline", result.pct_change_baseline, "%")
        rows.number("pct_nadir", result.pct_change_nadir, "%")
    flag = "Y^Yes^HL70136" if result.new_lesions else "N^No^HL70136"
    rows.add("new_lesions", "CWE", flag)
    for order, lesion in enumerate(result.targets, start=1):
        sub_id = str(order)
        rows.add("tracking_id", "ST", hl7_escape(lesion.tracking_id), sub_id=sub_id)
        rows.add("tracking_uid", "ST", hl7_escape(lesion.tracking_uid), sub_id=sub_id)
        state = FINDING_STATE_DISPLAY.get(lesion.finding_state, lesion.finding_state)
        note = lesion.state_reason
        if lesion.link_provisional:
            note = "; ".join(n for n in (note, PROVISIONAL_LINK_NOTE) if n)
        rows.add(
            "finding_state",
            "CWE",
            f"{hl7_escape(lesion.finding_state)}^{state}^{LOCAL_SYSTEM}STATE",
            sub_id=sub_id,
            note=note,
        )
        why = lesion.absent_reason
        rows.lesion_number("long_axis", lesion.long_axis_mm, "mm", sub_id, why)
        rows.lesion_number("short_axis", lesion.short_axis_mm, "mm", sub_id, why)
        rows.lesion_number("volume", lesion.volume_ml, "mL", sub_id, why)


@dataclass(frozen=True)
class Ack:
    """An ACK's MSA-1 code (AA, AE, AR, or CA/CE/CR in enhanced mode), MSA-2 and text."""

    code: str
    control_id: str
    text: str

    @property
    def accepted(self) -> bool:
        return self.code in {"AA", "CA"}

    @property
    def retry(self) -> bool:
        """AE (application error) may pass on a retry; AR (reject) will not."""
        return self.code in {"AE", "CE"}


#: MSA-1 (HL7 table 0008): original mode AA/AE/AR, enhanced mode CA/CE/CR.
ACK_CODES = frozenset({"AA", "AE", "AR", "CA", "CE", "CR"})
#: Control characters but tab: none belongs in the text kept (PostgreSQL refuses NUL).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def ack_read(text: str) -> Ack:
    """The MSA of an ACK (any v2 version); `AckError` when there is none or its code is
    not one of `ACK_CODES`. The EHR's text (MSA-3, ERR-8) comes back without control
    characters: it is kept on the message's row."""
    try:
        message = parse_message(text.replace("\n", "\r").strip(), find_groups=False)
        msa = message.msa
        code = msa.msa_1.value.strip()
        control_id = _CONTROL.sub("", msa.msa_2.value).strip()
        said = msa.msa_3.value.strip() if msa.msa_3 else ""
    except (HL7apyException, AttributeError, IndexError, ValueError) as exc:
        raise AckError(f"the answer is not an HL7 ACK ({type(exc).__name__})") from exc
    if not code:
        raise AckError("the ACK has no acknowledgment code (MSA-1)")
    if code not in ACK_CODES:
        shown = _CONTROL.sub("?", code)[:10]
        raise AckError(f"the ACK's acknowledgment code (MSA-1) {shown!r} is not an HL7 one")
    errors = [str(e.err_8.value) for e in message.children if e.name == "ERR" and e.err_8.value]
    said = _CONTROL.sub("", "; ".join([said, *errors])).strip("; ")
    return Ack(code=code, control_id=control_id, text=said)
