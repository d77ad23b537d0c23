"""iRECIST time point responses beside RECIST 1.1, for a patient on immunotherapy.

Source: Seymour L, Bogaerts J, Perrone A, et al. iRECIST: guidelines for response
criteria for use in trials testing immunotherapeutics. Lancet Oncol 2017;18:e143-e152
(its Table 2, the time point responses with and without a previous iUPD), and the
RECIST working group's iRECIST questions and answers. The lesion measurements and the
RECIST 1.1 reading of each time point are `analytics.lesions.core.assess`'s.

- RECIST 1.1 progression (targets, non-targets or new lesions) is iUPD, unconfirmed;
  so is a baseline lesion back after a complete response, which RECIST 1.1 reads as PD
  (`analytics.lesions.core.assess`): a target back counts with the targets, any other
  lesion with the non-targets.
- It is confirmed (iCPD) at the next assessment, 4 to 8 weeks later (`CONFIRM_MIN_DAYS`,
  `CONFIRM_MAX_DAYS`), by a further increase in what progressed (the targets' sum by
  5 mm or more from the iUPD; the non-targets by any increase, a radiologist's call; the
  new target lesions' sum by 5 mm or more), by another new lesion, or by RECIST 1.1
  progression in a category that had not progressed. An assessment under 4 weeks after
  the iUPD does not confirm it (said in the notes); one over 8 weeks still decides,
  with a note that the window was missed. A targets' sum with a target not evaluated
  (at the iUPD or now) is never compared: the confirmation cannot rest on it, and the
  notes say so.
- Without that, and when what progressed no longer does (targets back under the PD
  line, the new lesions gone or the targets shrinking further since the iUPD: the
  working group's scenario B), the bar is reset and the time point is iCR, iPR or iSD
  from the lesions present at baseline; otherwise it stays iUPD. What was not evaluated
  never resets it: a target not evaluated, a new lesion of the iUPD not evaluated, a
  lesion back after a complete response still there or not evaluated.
- New lesions are sorted when first seen into new target lesions (measurable, up to 5
  in all and 2 per organ, RECIST 1.1 section 4.2) and new non-target lesions; their sum
  is kept apart from the targets' sum. After a reset, new lesions make iUPD again only
  when another one appears or the new targets' sum meets RECIST 1.1 progression.
- iCPD ends the course: later time points read iCPD.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from analytics.lesions.core.assess import RecistAssessment
from analytics.lesions.core.readings import StudyReading
from analytics.lesions.core.recist import (
    MAX_TARGETS_PER_ORGAN,
    MAX_TARGETS_TOTAL,
    PD,
    lesion_measurable,
    overall_response,
    target_progression,
)
from analytics.lesions.core.returns import lesion_present

__all__ = [
    "CONFIRM_MAX_DAYS",
    "CONFIRM_MIN_DAYS",
    "FURTHER_INCREASE_MM",
    "IrecistAssessment",
    "irecist_assess",
    "irecist_category",
]

CONFIRM_MIN_DAYS = 28
CONFIRM_MAX_DAYS = 56
FURTHER_INCREASE_MM = 5.0

I_CR, I_PR, I_SD, I_UPD, I_CPD = "iCR", "iPR", "iSD", "iUPD", "iCPD"
NON_ICR_NON_IUPD = "non-iCR/non-iUPD"
_FROM_RECIST = {"CR": I_CR, "PR": I_PR, "SD": I_SD, "non-CR/non-PD": NON_ICR_NON_IUPD, "NE": "NE"}


@dataclass(frozen=True)
class IrecistAssessment:
    """iRECIST at one study: the category (None at baseline), the new target lesions'
    sum, which new lesions are targets and which not, and what the category rests on."""

    study_uid: str
    study_date: dt.date
    category: str | None
    new_target_sum_mm: float = math.nan
    new_target_uids: tuple[str, ...] = ()
    new_non_target_uids: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def irecist_category(recist_category: str) -> str:
    """The iRECIST name of a RECIST 1.1 category without progression."""
    return _FROM_RECIST[recist_category]


@dataclass
class _Unconfirmed:
    """An iUPD waiting for confirmation: when, what progressed, and the values then
    (``target_sum_mm`` None when a target was not evaluated: a partial sum is never
    compared; ``reappeared_uids``: baseline lesions back after a complete response;
    ``non_target_pd``: the non-target disease itself progressed, not only a lesion back)."""

    date: dt.date
    categories: frozenset[str]
    target_sum_mm: float | None
    new_target_sum_mm: float
    new_uids: frozenset[str]
    non_target_volume_ml: float
    reappeared_uids: frozenset[str] = frozenset()
    targets_not_evaluated: int = 0
    non_target_pd: bool = False


@dataclass
class _State:
    unconfirmed: _Unconfirmed | None = None
    confirmed: dt.date | None = None
    known_new: set[str] = field(default_factory=set)
    new_targets: list[str] = field(default_factory=list)
    new_non_targets: list[str] = field(default_factory=list)
    new_target_sums: list[float] = field(default_factory=list)


def irecist_assess(
    *, timeline: Sequence[StudyReading], recist: Sequence[RecistAssessment]
) -> tuple[IrecistAssessment, ...]:
    """iRECIST at every study, from the RECIST 1.1 assessment of the same timeline
    (module docstring)."""
    studies = sorted(timeline, key=lambda s: s.study_date)
    state = _State()
    out = []
    for study, r in zip(studies, recist, strict=True):
        if r.is_baseline:
            out.append(IrecistAssessment(study.study_uid, study.study_date, None))
            continue
        _new_lesions_sort(study, r, state)
        new_sum = _new_target_sum(study, state)
        category, notes = _timepoint(study, r, state, new_sum)
        if category not in ("NE", I_UPD, I_CPD) and not math.isnan(new_sum):
            state.new_target_sums.append(new_sum)
        out.append(
            IrecistAssessment(
                study_uid=study.study_uid,
                study_date=study.study_date,
                category=category,
                new_target_sum_mm=new_sum,
                new_target_uids=tuple(state.new_targets),
                new_non_target_uids=tuple(state.new_non_targets),
                notes=tuple(notes),
            )
        )
    return tuple(out)


def _new_lesions_sort(study: StudyReading, r: RecistAssessment, state: _State) -> None:
    """New lesions seen for the first time: measurable ones become new target lesions
    while there is room (5 in all, 2 per organ), the others new non-target lesions."""
    fresh = [
        reading
        for uid in r.new_lesion_uids
        if uid not in state.new_targets
        and uid not in state.new_non_targets
        and (reading := study.reading(uid)) is not None
    ]
    fresh.sort(key=lambda x: (-x.size_mm, x.lesion_uid))
    organs = [x.organ if (x := study.reading(u)) else "" for u in state.new_targets]
    for reading in fresh:
        room = len(state.new_targets) < MAX_TARGETS_TOTAL
        organ_room = organs.count(reading.organ) < MAX_TARGETS_PER_ORGAN
        if (
            room
            and organ_room
            and lesion_measurable(reading, slice_thickness_mm=study.slice_thickness_mm)
        ):
            state.new_targets.append(reading.lesion_uid)
            organs.append(reading.organ)
        else:
            state.new_non_targets.append(reading.lesion_uid)


def _new_target_sum(study: StudyReading, state: _State) -> float:
    """The new target lesions' sum of diameters (NaN when one is not evaluated)."""
    total = 0.0
    for uid in state.new_targets:
        reading = study.reading(uid)
        if reading is None or not reading.evaluated:
            return math.nan
        total += 0.0 if reading.merged_into else reading.size_mm
    return total


def _timepoint(
    study: StudyReading, r: RecistAssessment, state: _State, new_sum: float
) -> tuple[str, list[str]]:
    """The iRECIST category at one follow-up and its notes (module docstring)."""
    if state.confirmed is not None:
        return I_CPD, [f"progression confirmed (iCPD) on {state.confirmed}"]
    if r.category == "NE":
        pending = state.unconfirmed
        note = ["not evaluable"] + (
            [f"the iUPD of {pending.date} still awaits confirmation"] if pending else []
        )
        return "NE", note
    if state.unconfirmed is None:
        return _without_iupd(study, r, state, new_sum)
    return _after_iupd(study, r, state, new_sum)


def _progressed(r: RecistAssessment, state: _State, new_sum: float) -> frozenset[str]:
    """The categories in RECIST 1.1 progression now. New lesions count the first time
    they appear; after a reset, only another new lesion or the new targets' sum meeting
    RECIST 1.1 progression over its nadir does (the working group's answers). A lesion
    back after a complete response is progression of its category, as in RECIST 1.1."""
    out = set()
    if _target_progresses(r):
        out.add("target")
    if _non_target_progresses(r):
        out.add("non-target")
    unseen = set(r.new_lesion_uids) - state.known_new
    grown = bool(state.new_target_sums) and target_progression(
        sum_mm=new_sum, nadir_sum_mm=min(state.new_target_sums)
    )
    if unseen or (not math.isnan(new_sum) and grown):
        out.add("new lesions")
    return frozenset(out)


def _target_progresses(r: RecistAssessment) -> bool:
    """RECIST 1.1 target progression, or a target back after a complete response."""
    return r.target_response == PD or bool(set(r.reappeared_uids) & set(r.target_uids))


def _non_target_progresses(r: RecistAssessment) -> bool:
    """RECIST 1.1 non-target progression, or a non-target back after a complete response."""
    return r.non_target_response == PD or bool(set(r.reappeared_uids) - set(r.target_uids))


def _without_iupd(
    study: StudyReading, r: RecistAssessment, state: _State, new_sum: float
) -> tuple[str, list[str]]:
    """No iUPD waiting: RECIST 1.1 progression is iUPD, anything else its i-name."""
    progressed = _progressed(r, state, new_sum)
    if progressed:
        state.unconfirmed = _Unconfirmed(
            date=study.study_date,
            categories=progressed,
            target_sum_mm=None if r.targets_not_evaluated else r.sum_diameters_mm,
            new_target_sum_mm=new_sum,
            new_uids=frozenset(r.new_lesion_uids),
            non_target_volume_ml=r.non_target_volume_ml,
            reappeared_uids=frozenset(r.reappeared_uids),
            targets_not_evaluated=r.targets_not_evaluated,
            non_target_pd=r.non_target_response == PD,
        )
        state.known_new |= set(r.new_lesion_uids)
        notes = [
            f"unconfirmed progression ({', '.join(sorted(progressed))}): to be confirmed "
            f"{CONFIRM_MIN_DAYS // 7} to {CONFIRM_MAX_DAYS // 7} weeks later (iRECIST)"
        ]
        if r.reappeared_uids:
            notes.append(
                "a lesion back after a complete response, which RECIST 1.1 reads as PD, is "
                "unconfirmed progression in iRECIST"
            )
        if r.targets_not_evaluated and "target" in progressed:
            notes.append(_partial_sum_note(r.targets_not_evaluated, "at this iUPD"))
        return I_UPD, notes
    return irecist_category(_without_known_new(r)), []


def _without_known_new(r: RecistAssessment) -> str:
    """The RECIST 1.1 category with new lesions already known left out (they count in
    iRECIST only through their own progression)."""
    return overall_response(
        target=r.target_response, non_target=r.non_target_response, new_lesions=False
    )


def _confirms(
    study: StudyReading, r: RecistAssessment, pending: _Unconfirmed, new_sum: float
) -> list[str]:
    """What confirms the pending iUPD now (empty: nothing)."""
    why = []
    if "target" in pending.categories and (grown := _sum_growth(r, pending)) is not None:
        if grown >= FURTHER_INCREASE_MM:
            why.append(f"the targets' sum grew a further {grown:.1f} mm")
    elif "target" not in pending.categories and _target_progresses(r):
        why.append("the targets now progress")
    if study.non_target_unequivocal_progression:
        why.append("the non-target disease increased (a radiologist's verdict)")
    elif "non-target" not in pending.categories and _non_target_progresses(r):
        why.append("the non-target disease now progresses")
    another = set(r.new_lesion_uids) - pending.new_uids
    if another:
        why.append(f"{len(another)} more new lesion{'s' if len(another) > 1 else ''}")
    further = new_sum - pending.new_target_sum_mm
    if not math.isnan(further) and pending.new_uids and further >= FURTHER_INCREASE_MM:
        why.append(f"the new target lesions grew a further {further:.1f} mm")
    return why


def _sum_growth(r: RecistAssessment, pending: _Unconfirmed) -> float | None:
    """The targets' sum now less at the iUPD; None when either is partial (a target not
    evaluated): a partial sum compared with a complete one measures what was missing."""
    if pending.target_sum_mm is None or r.targets_not_evaluated:
        return None
    return r.sum_diameters_mm - pending.target_sum_mm


def _partial_sum_note(not_evaluated: int, where: str) -> str:
    """Why the targets' sum cannot confirm (or reset) an iUPD."""
    count = "a target" if not_evaluated == 1 else f"{not_evaluated} targets"
    return (
        f"the targets' sum {where} is partial ({count} not evaluated): whether the targets "
        "grew further cannot rest on it (iRECIST compares complete sums only)"
    )


def _after_iupd(
    study: StudyReading, r: RecistAssessment, state: _State, new_sum: float
) -> tuple[str, list[str]]:
    """An iUPD waits: confirmed (iCPD), kept (iUPD) or reset (module docstring)."""
    pending = state.unconfirmed
    assert pending is not None  # only called while an iUPD waits for confirmation
    days = (study.study_date - pending.date).days
    why = _confirms(study, r, pending, new_sum)
    state.known_new |= set(r.new_lesion_uids)
    notes = []
    if "target" in pending.categories and pending.target_sum_mm is None:
        notes.append(
            _partial_sum_note(pending.targets_not_evaluated, f"at the iUPD of {pending.date}")
        )
    if "target" in pending.categories and r.targets_not_evaluated:
        notes.append(_partial_sum_note(r.targets_not_evaluated, "here"))
    if days > CONFIRM_MAX_DAYS:
        notes.append(
            f"{days} days after the iUPD of {pending.date}: later than the 4 to 8 weeks "
            "iRECIST asks for the confirming assessment"
        )
    if why and days >= CONFIRM_MIN_DAYS:
        state.confirmed, state.unconfirmed = study.study_date, None
        return I_CPD, [f"the iUPD of {pending.date} is confirmed: {'; '.join(why)}", *notes]
    if why:
        return I_UPD, [
            f"{days} days after the iUPD of {pending.date}: under 4 weeks, so this "
            f"assessment does not confirm it ({'; '.join(why)})",
            *notes,
        ]
    if _resolved(study, r, pending):
        state.unconfirmed = None
        category = irecist_category(_without_known_new(r))
        return category, [f"the iUPD of {pending.date} was not confirmed: the bar is reset", *notes]
    if _non_target_undecided(study, r, pending):
        notes.append(
            "the non-target progression was a radiologist's verdict: whether it increased "
            "further (iCPD) or no longer progresses (reset) is theirs to say at this study"
        )
    return I_UPD, [f"the iUPD of {pending.date} is neither confirmed nor resolved", *notes]


def _non_target_undecided(study: StudyReading, r: RecistAssessment, pending: _Unconfirmed) -> bool:
    """An iUPD of the non-target disease, with measurable disease, made by a radiologist's
    verdict (RECIST 1.1 section 4.3.4) and none at this study: nothing says whether it
    increased further or no longer progresses, so it stays iUPD (iRECIST Table 2: it
    "remains iUPD unless iCPD is confirmed"). A non-target lesion back after a complete
    response is not such a verdict: the readings say whether it is still there."""
    return (
        pending.non_target_pd
        and bool(r.target_uids)
        and study.non_target_unequivocal_progression is None
    )


def _resolved(study: StudyReading, r: RecistAssessment, pending: _Unconfirmed) -> bool:
    """What progressed at the iUPD no longer does: targets under the PD line again,
    non-targets not progressing (by a radiologist's word when they decided the iUPD),
    and the new lesions gone or the targets shrinking further since the iUPD (the
    working group's scenario B). Never by what was not evaluated (`_unknown`)."""
    if _unknown(study, r, pending):
        return False
    if "target" in pending.categories and r.target_response == PD:
        return False
    if "non-target" in pending.categories and (
        r.non_target_response == PD or _non_target_undecided(study, r, pending)
    ):
        return False
    if "new lesions" in pending.categories and r.new_lesions:
        growth = _sum_growth(r, pending)
        shrinking = growth is not None and growth < 0
        return bool(r.target_uids) and shrinking and r.target_response != PD
    return True


def _unknown(study: StudyReading, r: RecistAssessment, pending: _Unconfirmed) -> bool:
    """Whether what progressed at the iUPD has stopped is not known at this study: a
    target not evaluated, a new lesion counted before not evaluated, or a lesion back
    after a complete response still there or not evaluated."""
    if "target" in pending.categories and r.targets_not_evaluated:
        return True
    if "new lesions" in pending.categories and r.new_lesions_not_evaluated:
        return True
    for uid in pending.reappeared_uids:
        reading = study.reading(uid)
        if reading is None or not reading.evaluated or lesion_present(reading, reading.is_node):
            return True
    return False
