"""Who an EHR record is about: patient identifiers as (system, value), and matching them.

An identifier is RadTrack's MRN (`Patient.patient_id`, the DICOM PatientID) only when its
system is the site's MRN system, ``settings.RADTRACK_MRN_SYSTEM``: another hospital's
MRN with the same digits, or a national number, is a different identifier. Identifiers
in other systems match a patient only through a `PatientIdentifier` row, which an
import adds when a Patient resource matched by its MRN carries them. A subject that
matches nobody is kept apart with the reason (`subject_match`), and so is one whose MRN
names nobody, or whose MRN and other identifiers name different patients: the MRN is
never overruled by another identifier.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from django.conf import settings

from patients.models import Patient, PatientIdentifier

__all__ = [
    "Identifier",
    "Subject",
    "SubjectMatch",
    "identifier_token",
    "mrn_system",
    "patient_identifiers_add",
    "subject_match",
    "subjects_match",
]

#: HL7 v2-0203 identifier types, the code system FHIR's Identifier.type uses.
V2_IDENTIFIER_TYPE = "http://terminology.hl7.org/CodeSystem/v2-0203"
MRN_TYPE = "MR"


def mrn_system() -> str:
    """The site's MRN system (``RADTRACK_MRN_SYSTEM``)."""
    return settings.RADTRACK_MRN_SYSTEM


@dataclass(frozen=True)
class Identifier:
    """One patient identifier as given: ``system`` is "" when the sender gave none."""

    system: str
    value: str
    type_code: str = ""

    @property
    def is_mrn(self) -> bool:
        return bool(self.value) and self.system == mrn_system()


def identifier_token(identifier: Identifier) -> str:
    """``system|value`` (FHIR token form), or the value alone without a system."""
    return f"{identifier.system}|{identifier.value}" if identifier.system else identifier.value


@dataclass(frozen=True)
class Subject:
    """The identifiers a record gives for its patient (a Patient resource's, or a
    reference's ``identifier``); ``mrn`` is the value in the MRN system, or ""."""

    identifiers: tuple[Identifier, ...]

    @classmethod
    def from_mrn(cls, mrn: str) -> Subject:
        """A subject named by RadTrack's MRN alone (a cohort CSV's ``patient_id``)."""
        return cls((Identifier(mrn_system(), mrn.strip(), MRN_TYPE),))

    @property
    def mrn(self) -> str:
        return next((i.value for i in self.identifiers if i.is_mrn), "")

    @property
    def shown(self) -> str:
        """What the report shows for the subject: the MRN, else the first identifier."""
        if self.mrn:
            return self.mrn
        return identifier_token(self.identifiers[0]) if self.identifiers else "(none)"

    @property
    def others(self) -> tuple[Identifier, ...]:
        """The identifiers in systems other than the MRN's (kept as identifiers)."""
        return tuple(i for i in self.identifiers if i.system and i.value and not i.is_mrn)


@dataclass(frozen=True)
class SubjectMatch:
    """The patient a subject names, or None and why not."""

    patient: Patient | None
    reason: str = ""


def _no_match_reason(subject: Subject) -> str:
    if subject.mrn:
        return "MRN matches no patient"
    if not subject.identifiers:
        return "no patient identifier"
    systems = sorted({i.system for i in subject.identifiers})
    if systems == [""]:
        return (
            "identifier without a system: it cannot be told from another hospital's "
            f"number (RadTrack's MRN system is {mrn_system()})"
        )
    return (
        f"identifier system {', '.join(s or '(none)' for s in systems)} is not RadTrack's "
        f"MRN system ({mrn_system()}) and no patient carries this identifier"
    )


def subjects_match(subjects: Iterable[Subject]) -> dict[Subject, SubjectMatch]:
    """Match every subject in two queries: MRNs, then the other (system, value) pairs."""
    subjects = set(subjects)
    by_mrn = Patient.objects.in_bulk({s.mrn for s in subjects if s.mrn}, field_name="patient_id")
    pairs = {(i.system, i.value) for s in subjects for i in s.others}
    by_pair: dict[tuple[str, str], Patient] = {}
    if pairs:
        values = {value for _, value in pairs}
        for row in PatientIdentifier.objects.filter(value__in=values).select_related("patient"):
            if (row.system, row.value) in pairs:
                by_pair[(row.system, row.value)] = row.patient
    return {subject: _subject_patient(subject, by_mrn, by_pair) for subject in subjects}


def _subject_patient(
    subject: Subject, by_mrn: dict[str, Patient], by_pair: dict[tuple[str, str], Patient]
) -> SubjectMatch:
    """The patient ``subject`` names, from the patients its MRN and other identifiers name.

    An MRN in RadTrack's system decides: one that names nobody is not overruled by
    another identifier (a national number or another hospital's MRN may be known for
    someone else, while the MRN says this is a person RadTrack does not hold), and one
    whose other identifiers belong to a different patient is a conflict. Either way the
    record is kept apart rather than filed under a patient it may not be about.
    """
    found = {by_pair[(i.system, i.value)] for i in subject.others if (i.system, i.value) in by_pair}
    if subject.mrn:
        patient = by_mrn.get(subject.mrn)
        if patient is None and found:
            return SubjectMatch(
                None,
                "MRN matches no patient (another of its identifiers does, but an MRN "
                "RadTrack does not know may be another person); not matched",
            )
        if patient is not None and found - {patient}:
            return SubjectMatch(
                None,
                "its MRN and another of its identifiers belong to different patients; not matched",
            )
        return SubjectMatch(patient, "" if patient else _no_match_reason(subject))
    if len(found) > 1:
        return SubjectMatch(None, "its identifiers belong to different patients; not matched")
    patient = found.pop() if found else None
    return SubjectMatch(patient, "" if patient else _no_match_reason(subject))


def subject_match(subject: Subject) -> SubjectMatch:
    """The patient ``subject`` names (`subjects_match` for one)."""
    return subjects_match([subject])[subject]


def patient_identifiers_add(*, patient: Patient, subject: Subject, source: str) -> list[str]:
    """Keep ``subject``'s identifiers in other systems on ``patient``; the problems found.

    An identifier already kept for this patient is left as it is; one that belongs to
    another patient is not moved (a problem is returned for it).
    """
    problems: list[str] = []
    for identifier in subject.others:
        row, created = PatientIdentifier.objects.get_or_create(
            system=identifier.system[:255],
            value=identifier.value[:128],
            defaults={
                "patient": patient,
                "type_code": identifier.type_code[:16],
                "source": source[:255],
            },
        )
        if not created and row.patient_id != patient.pk:
            problems.append(
                f"identifier in system {identifier.system} already belongs to another "
                "patient; not added"
            )
    return problems
