"""Whether a study's response assessment is final: the one rule every result sent out
follows (HL7 v2 OBR-25 and OBX-11, `analytics.hl7`; FHIR DiagnosticReport.status,
`analytics.fhir`), so the EHR never reads a response as signed off through one door and
as preliminary through the other.

A response is **final** when nothing about it waits for a person:

- its category is not NE (RECIST 1.1, nor iRECIST when it applies);
- no equivocal new lesion awaits confirmation (a PD pending confirmation is not final,
  RECIST 1.1 section 4.3.5) and no possible non-target progression awaits a
  radiologist's decision (section 4.3.3);
- it is not flagged for attention (`ResponseAssessment.needs_attention`: a provisional
  link, a substituted baseline, a target not evaluated);
- no finding at the study is equivocal or not found;
- no lesion it rests on is linked to earlier studies only provisionally (placed by
  anatomical landmarks without a registration: a proposal until a radiologist reviews
  it; `LesionMeasurement.link_provisional`);
- a radiologist reviewed (accepted or edited) every measurement it rests on, this
  study's and every earlier one's (rejected findings left out), and there is at least
  one: no measurement at all is no sign-off.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from analytics.models import ResponseAssessment
from imaging.models import LesionMeasurement

__all__ = [
    "REVIEWED_STATES",
    "UNSETTLED_STATES",
    "measurements_up_to",
    "response_is_final",
    "response_pending_reasons",
]

#: Review states a radiologist signed off.
REVIEWED_STATES = frozenset({LesionMeasurement.Review.ACCEPTED, LesionMeasurement.Review.EDITED})
#: Finding states at the study that keep its response from being final.
UNSETTLED_STATES = frozenset(
    {LesionMeasurement.FindingState.EQUIVOCAL, LesionMeasurement.FindingState.NOT_FOUND}
)


def measurements_up_to(
    assessment: ResponseAssessment, rows: Iterable[LesionMeasurement]
) -> list[LesionMeasurement]:
    """Of ``rows`` (a patient's measurements, rejected findings left out), those the
    response of ``assessment``'s study rests on: at that study and every earlier one (a
    response compares with the baseline and the nadir). Undated studies count: the safe
    side."""
    day = assessment.study.study_date
    return [
        m
        for m in rows
        if m.study_id == assessment.study_id
        or day is None
        or m.study.study_date is None
        or m.study.study_date <= day
    ]


def response_pending_reasons(
    *, assessment: ResponseAssessment, measurements: Sequence[LesionMeasurement]
) -> tuple[str, ...]:
    """Why ``assessment`` is not final, one short phrase each (none: it is final; module
    docstring). ``measurements``: those it rests on (`measurements_up_to`)."""
    a = assessment
    reasons = []
    if a.recist_response == "NE" or a.irecist_response == "NE":
        reasons.append("not evaluable")
    if a.pending_new_lesions:
        reasons.append(f"{a.pending_new_lesions} equivocal new lesion(s) await confirmation")
    if a.possible_non_target_progression:
        reasons.append("possible non-target progression awaits a radiologist's decision")
    if a.needs_attention:
        reasons.append("flagged for a radiologist's attention (see the response note)")
    here = [m for m in measurements if m.study_id == a.study_id]
    if any(m.finding_state in UNSETTLED_STATES for m in here):
        reasons.append("a finding at this study is equivocal or not found")
    if any(m.link_provisional for m in measurements):
        reasons.append("a lesion's link to earlier studies is provisional")
    if not measurements:
        reasons.append("no measurement signed off by a radiologist")
    elif any(m.review_state not in REVIEWED_STATES for m in measurements):
        reasons.append("measurements await a radiologist's review")
    return tuple(reasons)


def response_is_final(
    *, assessment: ResponseAssessment, measurements: Sequence[LesionMeasurement]
) -> bool:
    """Whether ``assessment`` is final (module docstring); ``measurements`` are those it
    rests on (`measurements_up_to`)."""
    return not response_pending_reasons(assessment=assessment, measurements=measurements)
