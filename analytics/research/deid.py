"""De-identify DICOM data sets by PS3.15 Annex E, driven by the standard's own table.

The profile is the Basic Application Level Confidentiality Profile with four options:
Retain Longitudinal Temporal Information with Modified Dates (every date moves by one
whole number of days per patient, so intervals and times of day are kept), Retain
Patient Characteristics, Clean Descriptors, and Clean Structured Content (without it the
Basic Profile replaces an SR's whole content tree, and a research SR would lose its
measurements). The action of each attribute is read from ``annex_e_table.csv``
(PS3.15 Table E.1-1, edition in its first line); an option's action, when it has one,
overrides the Basic Profile's.

Actions (PS3.15 E.1.1): D dummy value, Z zero length, X remove, K keep, C clean,
U a new UID, the same for the same UID everywhere in one export (so a SEG still refers
to its CT). Where the table offers a choice (``X/Z``, ``Z/D``, ``X/Z/D``) the choice that
keeps every type 1 and type 2 attribute present is taken: D for values, Z for
sequences; ``X/Z/U*`` sequences are kept with their UIDs replaced. Private attributes are
removed. Burned-in annotation cannot be cleaned here, so an image that has it, or may
have it (secondary capture without ``BurnedInAnnotation`` NO), is refused.

The research tables' values are de-identified under the same key and UID map
(`value_pseudonymise`, `text_pseudonymise`: dates moved, UIDs remapped, in free text too).

No Django here: callers pass data sets and get data sets back.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

TABLE_PATH = Path(__file__).with_name("annex_e_table.csv")
#: The options applied, in the order their actions take precedence over the Basic Profile.
OPTIONS = (
    "retain_long_modified_dates",
    "retain_patient_characteristics",
    "clean_descriptors",
    "clean_structured_content",
)
#: CID 7050 De-identification Method codes (DCM): the profile, then each option applied.
METHOD_CODES = (
    ("113100", "Basic Application Confidentiality Profile"),
    ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    ("113108", "Retain Patient Characteristics Option"),
    ("113105", "Clean Descriptors Option"),
    ("113104", "Clean Structured Content Option"),
)
DUMMY_TEXT = "REMOVED"
_DUMMY_BY_VR = {
    "DA": "19000101",
    "TM": "000000",
    "DT": "19000101000000",
    "AS": "000D",
    "IS": "0",
    "DS": "0",
    "PN": "REMOVED",
}
_NUMERIC_VRS = {"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"}
_BINARY_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "UN"}
#: A run of four or more digits (dates, years, identifiers) makes a descriptor unsafe.
_DIGIT_RUN = re.compile(r"\d{4,}")
_CONTACT = re.compile(r"@|\+?\d[\d \-()]{7,}\d")


class DeidentificationRefused(ValueError):
    """An object this profile cannot make safe (burned-in annotation); names why."""


@dataclass(frozen=True)
class ActionTable:
    """Table E.1-1: the action per tag (``ggggeeee``; ``x`` in masks) for this profile."""

    edition: str
    actions: dict[str, str]
    masks: tuple[tuple[str, str], ...]

    def action(self, tag: int) -> str | None:
        key = f"{tag:08x}"
        found = self.actions.get(key)
        if found is not None:
            return found
        for mask, action in self.masks:
            if all(m == "x" or m == k for m, k in zip(mask, key, strict=True)):
                return action
        return None


def action_table_load(path: Path = TABLE_PATH, options: Iterable[str] = OPTIONS) -> ActionTable:
    """Read the table and resolve each attribute's action under ``options``."""
    lines = path.read_text().splitlines()
    edition = lines[0].lstrip("# ").split(",")[0]
    options = tuple(options)
    actions: dict[str, str] = {}
    masks: list[tuple[str, str]] = []
    for row in csv.DictReader(line for line in lines if not line.startswith("#")):
        action = next((row[o] for o in options if row[o]), row["basic"])
        if row["tag"] == "private":
            continue  # private attributes are removed outright (`dataset_deidentify`)
        if "x" in row["tag"]:
            masks.append((row["tag"], action))
        else:
            actions[row["tag"]] = action
    return ActionTable(edition=edition, actions=actions, masks=tuple(masks))


@dataclass
class PatientKey:
    """One patient's replacement identity in one export."""

    pseudonym: str
    offset_days: int
    #: Words that must not survive in any descriptor (name parts, MRN, accession...).
    identifiers: frozenset[str] = frozenset()


@dataclass
class UidMap:
    """Old UID -> new UID under one export's secret salt: the same UID maps the same way
    in every object, and nobody without the salt can map it back."""

    salt: bytes
    mapped: dict[str, str] = field(default_factory=dict)

    def __call__(self, uid: str) -> str:
        uid = str(uid).strip()
        if not uid:
            return uid
        if uid not in self.mapped:
            digest = hashlib.sha256(self.salt + uid.encode()).digest()
            self.mapped[uid] = "2.25." + str(int.from_bytes(digest[:16], "big"))
        return self.mapped[uid]


def date_shift(value: str, offset_days: int) -> str:
    """A DA value (``YYYYMMDD``) moved by ``offset_days``; unreadable dates become empty."""
    value = value.strip()
    try:
        day = dt.datetime.strptime(value[:8], "%Y%m%d").date()
    except ValueError:
        return ""
    return (day + dt.timedelta(days=offset_days)).strftime("%Y%m%d")


def datetime_shift(value: str, offset_days: int) -> str:
    """A DT value with its date part moved; the time of day and offset are kept."""
    value = value.strip()
    shifted = date_shift(value[:8], offset_days)
    return shifted + value[8:] if shifted else ""


#: What free text says in its place when it cannot be made safe (`text_pseudonymise`).
TEXT_REMOVED = "[removed: could not be de-identified]"
#: The dates and UIDs free text carries, each token whole: a DICOM UID (four or more
#: numeric components, PS3.5 9.1); an ISO 8601 calendar date (``2024-04-10``), alone or
#: as a date-time's date part; a DA date (``20240410``, PS3.5 6.2) of 1900-2099, alone
#: or as a DT value's date part (``20240410093000``).
_TEXT_TOKENS = re.compile(
    r"(?<![\w.])(?:"
    r"(?P<uid>[0-2](?:\.\d+){3,})(?!\w|\.\d)"
    r"|(?P<iso>\d{4}-\d{2}-\d{2})(?!\d)"
    r"|(?P<da>(?:19|20)\d{6})(?P<time>\d{2,6}(?:\.\d{1,6})?)?(?!\w|\.\d)"
    r")"
)
#: What is left of free text once its ISO and DA dates and UIDs are taken out that may
#: still be a date in another form (a year; 10/04/2024; 10.04.2024): it cannot be moved
#: safely, so the text is not exported. A number such as 2015.3 or a code such as LOINC
#: 2039-6 is no year.
_OTHER_DATE = re.compile(
    r"(?<![\w.])(?:19|20)\d{2}(?!\w|[.-]\d)"
    r"|(?<![\w.])\d{1,2}/\d{1,2}/\d{2,4}(?!\d)"
    r"|(?<![\w.])\d{1,2}\.\d{1,2}\.\d{4}(?!\d)"
)


def _iso_date_shift(value: str, offset_days: int) -> str | None:
    try:
        day = dt.date.fromisoformat(value)
    except ValueError:
        return None
    return (day + dt.timedelta(days=offset_days)).isoformat()


def text_pseudonymise(text: str, *, key: PatientKey, uids: UidMap) -> str:
    """Free text with its dates moved by the patient's offset and its UIDs remapped.

    ISO 8601 dates (a date-time's date part too: the time of day and zone are kept) and
    DA dates move by ``key.offset_days``; DICOM UIDs go through ``uids``, as the UID
    columns do. Text that cannot be made so (an ISO date that is no date, a date in
    another form such as a bare year or 10/04/2024, or an identifier of the patient in
    ``key.identifiers`` as a word) is replaced whole by `TEXT_REMOVED`. JSON text (a list
    or an object) is treated value by value and stays JSON.
    """
    if not text:
        return text
    if text[0] in "[{":
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        if isinstance(parsed, list | dict):
            return json.dumps(value_pseudonymise(parsed, key=key, uids=uids))
    if _OTHER_DATE.search(_TEXT_TOKENS.sub(" ", text)) or _names_patient(text, key):
        return TEXT_REMOVED
    unsafe = False

    def token(match: re.Match[str]) -> str:
        nonlocal unsafe
        if match["uid"]:
            return uids(match["uid"])
        if match["iso"]:
            shifted = _iso_date_shift(match["iso"], key.offset_days)
            unsafe = unsafe or shifted is None
            return shifted or ""
        shifted = date_shift(match["da"], key.offset_days)
        if not shifted:  # digits that are no date: a number, kept
            return match[0]
        return shifted + (match["time"] or "")

    rewritten = _TEXT_TOKENS.sub(token, text)
    return TEXT_REMOVED if unsafe else rewritten


def _names_patient(text: str, key: PatientKey) -> bool:
    lowered = text.lower()
    return any(
        re.search(rf"(?<!\w){re.escape(word)}(?!\w)", lowered) for word in key.identifiers if word
    )


def value_pseudonymise(value: Any, *, key: PatientKey, uids: UidMap) -> Any:
    """One table value de-identified by its type: a date or date-time (pandas'
    ``Timestamp`` too) moved by the patient's offset, text by `text_pseudonymise`, the
    items of a list, tuple or dict one by one; anything else (numbers, booleans, None)
    as it is. Driven by the value rather than a list of columns, so that a column added
    to a table later is covered."""
    if isinstance(value, dt.date):  # dt.datetime and pandas' Timestamp and NaT too
        return value + dt.timedelta(days=key.offset_days)
    if isinstance(value, str):
        return text_pseudonymise(value, key=key, uids=uids)
    if isinstance(value, dict):
        return {k: value_pseudonymise(v, key=key, uids=uids) for k, v in value.items()}
    if isinstance(value, list | tuple):
        items = [value_pseudonymise(v, key=key, uids=uids) for v in value]
        return items if isinstance(value, list) else tuple(items)
    return value


def descriptor_clean(value: str, key: PatientKey) -> str:
    """Clean Descriptors: the text if nothing in it can identify the patient, else empty.

    Unsafe: any identifier of the patient (name part, MRN, accession number; case
    ignored), a run of four or more digits (dates, years, numbers), an e-mail address or
    telephone number. Descriptions such as "CT chest 2.5mm" pass.
    """
    text = str(value)
    lowered = text.lower()
    if any(word and word in lowered for word in key.identifiers):
        return ""
    if _DIGIT_RUN.search(text) or _CONTACT.search(text):
        return ""
    return text


@dataclass
class Deidentifier:
    """Applies one export's profile: the table, the UID map, and a patient's key."""

    table: ActionTable
    uids: UidMap

    def dataset_deidentify(self, dataset: Dataset, *, key: PatientKey) -> Dataset:
        """De-identify ``dataset`` in place (file meta included) and return it.

        Raises `DeidentificationRefused` for burned-in annotation.
        """
        burned_in_check(dataset)
        dataset.remove_private_tags()
        self._walk(dataset, key)
        self._identity_set(dataset, key)
        if getattr(dataset, "file_meta", None) is not None:
            meta = dataset.file_meta
            if "MediaStorageSOPInstanceUID" in meta:
                meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
            for keyword in ("SourceApplicationEntityTitle", "SendingApplicationEntityTitle",
                            "ReceivingApplicationEntityTitle", "PrivateInformationCreatorUID",
                            "PrivateInformation"):  # fmt: skip
                if keyword in meta:
                    delattr(meta, keyword)
        return dataset

    # -- the walk over every element, nested sequences included ---------------------
    def _walk(self, dataset: Dataset, key: PatientKey) -> None:
        for element in list(dataset):
            action = self.table.action(element.tag)
            if action is None:
                self._unlisted(dataset, element, key)
            else:
                self._apply(dataset, element, action, key)

    def _unlisted(self, dataset: Dataset, element, key: PatientKey) -> None:
        """Attributes the table does not list are kept; UIDs in them still map, and
        sequences are walked (an unlisted sequence may hold listed attributes)."""
        if element.VR == "SQ":
            for item in element.value:
                self._walk(item, key)
        elif element.VR == "UI":
            self._uid_replace(element)

    def _apply(self, dataset: Dataset, element, action: str, key: PatientKey) -> None:
        choice = _choose(action, element.VR)
        if choice == "X":
            del dataset[element.tag]
        elif choice == "K":
            if element.VR == "SQ":
                for item in element.value:
                    self._walk(item, key)
        elif choice == "Z":
            element.value = Sequence([]) if element.VR == "SQ" else _empty(element.VR)
        elif choice == "D" and element.VR != "UI":
            element.value = _dummy(element.VR)
        elif choice in {"U", "D"}:
            if element.VR == "SQ":  # X/Z/U*: kept, with every UID inside replaced
                for item in element.value:
                    self._walk(item, key)
            else:
                self._uid_replace(element)
        elif choice == "C":
            self._clean(dataset, element, key)
        else:
            raise ValueError(f"unknown Annex E action {action!r} for {element.tag}")

    def _uid_replace(self, element) -> None:
        if element.VM > 1:
            element.value = [_uid_mapped(v, self.uids) for v in element.value]
        elif element.value:
            element.value = _uid_mapped(element.value, self.uids)

    def _clean(self, dataset: Dataset, element, key: PatientKey) -> None:
        """C: dates shift, times stay (whole-day shifts), texts are cleaned, sequences
        (SR content, acquisition context) are walked with the same rules."""
        vr = element.VR
        if element.keyword == "TimezoneOffsetFromUTC":
            return  # kept with the option: the shift is whole days
        if vr == "SQ":
            for item in element.value:
                self._walk(item, key)
                self._content_item_clean(item, key)
        elif vr == "DA":
            element.value = _each(element.value, lambda v: date_shift(v, key.offset_days))
        elif vr == "DT":
            element.value = _each(element.value, lambda v: datetime_shift(v, key.offset_days))
        elif vr == "TM":
            return
        elif vr in {"LO", "SH", "ST", "LT", "UT", "UC", "CS"}:
            element.value = _each(element.value, lambda v: descriptor_clean(v, key))
        elif vr == "PN":
            element.value = key.pseudonym
        elif vr in _BINARY_VRS:
            del dataset[element.tag]

    def _content_item_clean(self, item: Dataset, key: PatientKey) -> None:
        """Clean Structured Content: a TEXT item's value (Text Value is not in the table;
        the item's dates, UIDs and person names are, and the walk has handled them)."""
        if item.get("ValueType", "") == "TEXT" and "TextValue" in item:
            item.TextValue = descriptor_clean(item.TextValue, key) or DUMMY_TEXT

    def _identity_set(self, dataset: Dataset, key: PatientKey) -> None:
        """The pseudonym, and what was done (PS3.15 E.1.1 and the method codes)."""
        dataset.PatientName = key.pseudonym
        dataset.PatientID = key.pseudonym
        dataset.PatientIdentityRemoved = "YES"
        dataset.LongitudinalTemporalInformationModified = "MODIFIED"
        dataset.DeidentificationMethod = f"PS3.15 Annex E ({self.table.edition})"[:64]
        codes = []
        for value, meaning in METHOD_CODES:
            code = Dataset()
            code.CodeValue = value
            code.CodingSchemeDesignator = "DCM"
            code.CodeMeaning = meaning
            codes.append(code)
        dataset.DeidentificationMethodCodeSequence = Sequence(codes)


def burned_in_check(dataset: Dataset) -> None:
    """Refuse an image with (or, for secondary captures, possibly with) burned-in text."""
    flag = str(dataset.get("BurnedInAnnotation", "")).upper()
    if flag == "YES":
        raise DeidentificationRefused(
            "BurnedInAnnotation is YES: identifying text in the pixels cannot be cleaned here"
        )
    secondary = str(dataset.get("SOPClassUID", "")).startswith("1.2.840.10008.5.1.4.1.1.7")
    if secondary and flag != "NO":
        raise DeidentificationRefused(
            "a secondary capture image that does not say BurnedInAnnotation NO"
        )


#: UIDs under this root are the standard's own (SOP classes, transfer syntaxes, coding
#: schemes, well-known frames of reference): they name no patient and must stay.
STANDARD_UID_ROOT = "1.2.840.10008."


def _uid_mapped(uid, uids: UidMap) -> str:
    return str(uid) if str(uid).startswith(STANDARD_UID_ROOT) else uids(uid)


def _choose(action: str, vr: str) -> str:
    """One action from a table choice, keeping type 1 and 2 attributes present."""
    if "/" not in action:
        return action
    choices = action.split("/")
    if "U*" in choices:
        return "U"
    if vr == "SQ":
        return "Z" if "Z" in choices else choices[0]
    if "D" in choices:
        return "D"
    return "Z" if "Z" in choices else choices[0]


def _empty(vr: str):
    if vr in _NUMERIC_VRS:
        return None
    if vr in _BINARY_VRS:
        return b""
    return ""


def _dummy(vr: str):
    if vr in _NUMERIC_VRS:
        return 0
    if vr in _BINARY_VRS:
        return b""
    if vr == "SQ":
        return Sequence([])
    return _DUMMY_BY_VR.get(vr, DUMMY_TEXT)


def _each(value, change):
    if isinstance(value, pydicom.multival.MultiValue | list):
        return [change(str(v)) for v in value]
    return change(str(value)) if value is not None else value
