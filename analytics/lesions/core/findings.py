"""Finding states: what one lesion identity seen (or not) at one study may count for.

Four states (`analytics.lesions.core.readings`):

- ``confirmed``: counts as it reads (a lesion seen, or confirmed gone, merged into
  another, or present but too small to measure, by a radiologist's word);
- ``equivocal``: a new lesion (absent at baseline) not yet confirmed; it is followed and
  counts only once confirmed, and then from its first sighting (Eisenhauer EA et al., New
  response evaluation criteria in solid tumours: revised RECIST guideline (version 1.1),
  Eur J Cancer 2009;45:228-247, section 4.3.5: "If a new lesion is equivocal, for
  example because of its small size, continued therapy and follow-up evaluation will
  clarify if it represents truly new disease. If repeat scans confirm there is definitely
  a new lesion, then progression should be declared using the date of the initial
  scan");
- ``not_found``: expected and not seen: never read as gone; the time point cannot rest
  on it until a radiologist confirms it gone, marks it too small to measure or measures
  it by hand;
- ``rejected``: a radiologist said it is not a lesion; the rejection holds for the whole
  identity, at every study, until a radiologist accepts one of its findings later;
- ``not_assessable``: a lesion seen that would be confirmed, but that reaches the edge of
  what was imaged at this study (the first or last slice of the scanned range, or the
  field of view), so only part of it was imaged and its size is not assessable there:
  it counts as present, never with its cut size, so a target in this state leaves the
  time point not evaluable, and a lesion in this state at baseline is not a target.
  A radiologist's measurement (by hand, or an edited one) makes it confirmed again.

An automated new finding is equivocal until a radiologist accepts it (or measures it by
hand) or a later study sees it again as a finding that would itself be unequivocal:
measurable in size, with the segmenter confident, linked through a registration. The
same holds for a baseline lesion a radiologist confirmed gone that the segmenter sees
again: after a complete response its return is PD, so one doubtful finding must not make
it so on its own. A
lymph node below 10 mm in short axis is normal, not a lesion (section 3.1.1); a new node
between 10 and 15 mm stays equivocal until it reaches 15 mm or is accepted (the RECIST
working group: a node growing from 9 to 11 mm "may not represent true disease"; Schwartz
LH et al., RECIST 1.1 - Update and clarification: From the RECIST committee, Eur J
Cancer 2016;62:132-137).
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from analytics.lesions.core.readings import (
    CONFIRMED,
    EQUIVOCAL,
    LYMPH_NODE,
    NOT_ASSESSABLE,
    NOT_FOUND,
    REJECTED,
    TOO_SMALL_MM,
)
from analytics.lesions.core.recist import is_measurable

__all__ = [
    "EDGE_WORDS",
    "LOW_CONFIDENCE",
    "NODE_MEASURABLE_MM",
    "NODE_NORMAL_BELOW_MM",
    "FindingState",
    "Sighting",
    "cut_state",
    "finding_states",
    "identity_rejection",
    "low_confidence",
    "new_lesion_small",
    "node_normal",
    "radiologist_confirms",
    "sighting_confirms",
    "size_measured_by_radiologist",
]

#: RadTrack's line for a low-confidence candidate: its highest lesion probability is
#: under 0.8 (the segmenter keeps candidates from 0.5).
LOW_CONFIDENCE = 0.8
#: RECIST 1.1 section 3.1.1: a node under 10 mm in short axis is normal ...
NODE_NORMAL_BELOW_MM = 10.0
#: ... and one of 15 mm or more is measurable (a target); 10 to 15 mm is pathological.
NODE_MEASURABLE_MM = 15.0

_ACCEPTED = ("accepted", "edited")

#: The edges a lesion can reach (`imaging.core.segmentation.edges.lesion_edges`), as
#: a person reads them; padded pixels lie outside the reconstructed field of view.
EDGE_WORDS = {
    "scan_start": "the edge of the scanned range (its first slice)",
    "scan_end": "the edge of the scanned range (its last slice)",
    "field_of_view": "the edge of the field of view",
    "padding": "the edge of the field of view",
}


@dataclass(frozen=True)
class Sighting:
    """One lesion identity at one study, as the finding-state rules read it.

    ``study_index`` 0 is the patient's baseline. ``found``: seen there (by the
    segmentation or measured by hand). For a lesion not found: ``gone_confirmed`` (a
    radiologist confirmed it gone), ``merged_into_label``, ``too_small`` (a radiologist
    says present but too small to measure) or ``outside_range`` (the study did not cover
    where it is). ``review_state``/``reviewed_at``: the radiologist's decision on this
    row. ``provisional``: linked without a registration. ``near_note``: a known lesion
    close by that this finding may be (said in the reason). ``edges_reached``: the edges
    of what was imaged that the lesion found reaches (`EDGE_WORDS`), () when none.
    """

    lesion_uid: str
    study_index: int
    study_date: dt.date | None
    organ: str
    found: bool
    label: str = ""
    gone_confirmed: bool = False
    merged_into_label: str = ""
    too_small: bool = False
    outside_range: bool = False
    longest_diameter_mm: float = math.nan
    short_axis_mm: float = math.nan
    confidence: float = math.nan
    review_state: str = "pending"
    reviewed_at: dt.datetime | None = None
    review_reason: str = ""
    by_hand: bool = False
    provisional: bool = False
    slice_thickness_mm: float | None = None
    near_note: str = ""
    edges_reached: tuple[str, ...] = ()

    @property
    def is_node(self) -> bool:
        return self.organ == LYMPH_NODE

    @property
    def when(self) -> str:
        return self.study_date.isoformat() if self.study_date else "an undated study"


@dataclass(frozen=True)
class FindingState:
    """A sighting's state and why, in one sentence for a person."""

    state: str
    reason: str


# --------------------------------------------------------------------------- rules
def identity_rejection(sightings: Iterable[Sighting]) -> Sighting | None:
    """The rejection in force for a lesion identity, if any.

    RadTrack's rule for a rejection by a radiologist (a false positive): it holds for
    the identity at every study, not only where it was made, until the radiologist
    accepts one of its findings later (the latest decision stands; a decision without a
    time is older than any with one).
    """
    decided = [s for s in sightings if s.review_state in (*_ACCEPTED, REJECTED)]
    if not decided:
        return None
    oldest = dt.datetime.min.replace(tzinfo=dt.UTC)
    latest = max(
        decided,
        key=lambda s: (_aware(s.reviewed_at) if s.reviewed_at else oldest, s.study_index),
    )
    return latest if latest.review_state == REJECTED else None


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def node_normal(short_axis_mm: float) -> bool:
    """A lymph node under 10 mm in short axis is normal (RECIST 1.1 section 3.1.1): not
    recorded at baseline, and not a new lesion at follow-up."""
    return not math.isnan(short_axis_mm) and short_axis_mm < NODE_NORMAL_BELOW_MM


def new_lesion_small(
    *,
    organ: str,
    longest_diameter_mm: float,
    short_axis_mm: float,
    slice_thickness_mm: float | None = None,
) -> bool:
    """A new finding small enough to be equivocal (RECIST 1.1 section 4.3.5, "for example
    because of its small size"): below the size at which it would be measurable (section
    3.1.1: 10 mm, or twice a slice thickness over 5 mm; a node 15 mm in short axis).
    Unknown size counts as small."""
    if organ == LYMPH_NODE:
        return not short_axis_mm >= NODE_MEASURABLE_MM
    return not is_measurable(
        longest_diameter_mm=longest_diameter_mm, slice_thickness_mm=slice_thickness_mm
    )


def low_confidence(confidence: float) -> bool:
    """The segmenter was not sure (`LOW_CONFIDENCE`); NaN (measured by hand) is not low."""
    return not math.isnan(confidence) and confidence < LOW_CONFIDENCE


def radiologist_confirms(sighting: Sighting) -> bool:
    """A radiologist vouched for this finding: accepted, edited or measured it by hand,
    or said it is present but too small to measure."""
    return sighting.by_hand or sighting.too_small or sighting.review_state in _ACCEPTED


def sighting_confirms(sighting: Sighting) -> bool:
    """A repeat sighting that confirms an equivocal new lesion (RECIST 1.1 section 4.3.5,
    "if repeat scans confirm there is definitely a new lesion"): found, linked through a
    registration, measurable in size and with the segmenter confident."""
    return (
        sighting.found
        and not sighting.provisional
        and not low_confidence(sighting.confidence)
        and not new_lesion_small(
            organ=sighting.organ,
            longest_diameter_mm=sighting.longest_diameter_mm,
            short_axis_mm=sighting.short_axis_mm,
            slice_thickness_mm=sighting.slice_thickness_mm,
        )
    )


# --------------------------------------------------------------------------- states
def finding_states(*, sightings: Sequence[Sighting]) -> dict[tuple[str, int], FindingState]:
    """The state of every sighting, keyed by (lesion_uid, study_index) (module docstring).

    ``sightings`` hold every identity at every study it has a row at, any order.
    """
    by_uid: dict[str, list[Sighting]] = defaultdict(list)
    for s in sightings:
        by_uid[s.lesion_uid].append(s)
    out: dict[tuple[str, int], FindingState] = {}
    for uid, group in by_uid.items():
        group.sort(key=lambda s: s.study_index)
        rejection = identity_rejection(group)
        if rejection is not None:
            reason = (
                f"rejected as not a lesion by a radiologist at the study of {rejection.when}"
                + (f": {rejection.review_reason}" if rejection.review_reason else "")
                + "; the rejection holds for this lesion at every study"
            )
            for s in group:
                out[(uid, s.study_index)] = FindingState(REJECTED, reason)
            continue
        at_baseline = any(_seen_as_lesion(s) and s.study_index == 0 for s in group)
        confirmation = None if at_baseline else _new_lesion_confirmation(group)
        for s in group:
            out[(uid, s.study_index)] = _sighting_state(s, group, at_baseline, confirmation)
        if at_baseline:
            out.update(_reappearance_states(group))
        for s in group:
            if s.found and s.edges_reached:
                out[(uid, s.study_index)] = cut_state(s, out[(uid, s.study_index)])
    return out


def size_measured_by_radiologist(sighting: Sighting) -> bool:
    """A radiologist gave this finding's size: measured it by hand, edited its
    measurement, or said it is present but too small to measure."""
    return sighting.by_hand or sighting.too_small or sighting.review_state == "edited"


def cut_state(s: Sighting, state: FindingState) -> FindingState:
    """The state of a finding that reaches the edge of what was imaged (module
    docstring), from ``state``, the one it would have whole: ``not_assessable`` where it
    would be confirmed as a lesion; an equivocal (or normal-sized node's) state is kept,
    with the edge said in its reason."""
    if size_measured_by_radiologist(s):
        return state
    edges = list(dict.fromkeys(EDGE_WORDS.get(e, e) for e in s.edges_reached))
    cut = f"it reaches {' and '.join(edges)}, so only part of it was imaged"
    if state.state != CONFIRMED or not _seen_as_lesion(s):
        return FindingState(state.state, f"{state.reason}; {cut}" if state.reason else cut)
    reason = f"seen, but {cut}: its size is not assessable at this study"
    if s.study_index == 0:
        reason += " and it cannot be a target lesion (RECIST 1.1 section 3.1.1)"
    if state.reason:
        reason += f"; {state.reason}"
    return FindingState(NOT_ASSESSABLE, reason)


def _reappearance_states(group: list[Sighting]) -> dict[tuple[str, int], FindingState]:
    """A baseline lesion confirmed gone and then seen again: each run of sightings from
    its return until it is confirmed gone again is held to the new-lesion rule (an
    automated finding back where a radiologist saw nothing is equivocal until a
    radiologist accepts it or a later study sees it again unequivocally), so that one
    doubtful blob near a lesion gone does not turn a complete response into PD."""
    out: dict[tuple[str, int], FindingState] = {}
    runs: list[tuple[Sighting, list[Sighting]]] = []
    gone: Sighting | None = None
    for s in group:
        if s.gone_confirmed:
            gone = s
        elif gone is not None and (_seen_as_lesion(s) or (runs and runs[-1][0] is gone)):
            if not runs or runs[-1][0] is not gone:
                runs.append((gone, []))
            runs[-1][1].append(s)  # from its return on, found or not
    for gone, run in runs:
        confirmation = _new_lesion_confirmation(run)
        first = run[0]
        back = f"back after it was confirmed gone on {gone.when}, first seen again on {first.when}"
        for s in run:
            if not _seen_as_lesion(s):
                continue
            provisional = _provisional_note(s)
            if confirmation is not None:
                state = FindingState(CONFIRMED, f"{back}; confirmed: {confirmation}{provisional}")
            else:
                reason = _equivocal_reason(s, run, first).replace(
                    f"new since baseline, first seen on {first.when}", back, 1
                )
                state = FindingState(EQUIVOCAL, reason + provisional)
            out[(s.lesion_uid, s.study_index)] = state
    return out


def _new_lesion_confirmation(group: list[Sighting]) -> str | None:
    """How a new lesion was confirmed (None: not yet): a radiologist, or a repeat
    sighting after its first that would itself be unequivocal."""
    found = [s for s in group if _seen_as_lesion(s)]
    if not found:
        return None
    by_radiologist = next((s for s in found if radiologist_confirms(s)), None)
    if by_radiologist is not None:
        how = "measured by hand" if by_radiologist.by_hand else "accepted"
        return f"{how} by a radiologist at the study of {by_radiologist.when}"
    repeat = next((s for s in found[1:] if sighting_confirms(s)), None)
    if repeat is not None:
        size = _size_text(repeat)
        return f"seen again on {repeat.when} ({size})"
    return None


def _sighting_state(
    s: Sighting, group: list[Sighting], at_baseline: bool, confirmation: str | None
) -> FindingState:
    if not s.found:
        return _absent_state(s, group, at_baseline)
    provisional = _provisional_note(s)
    if at_baseline:
        return FindingState(CONFIRMED, provisional.removeprefix("; "))
    if s.is_node and node_normal(s.short_axis_mm):
        return FindingState(
            CONFIRMED,
            f"a normal-sized lymph node (short axis {s.short_axis_mm:.1f} mm, under "
            f"{NODE_NORMAL_BELOW_MM:g} mm): not a lesion (RECIST 1.1 section 3.1.1)",
        )
    first = next(x for x in group if _seen_as_lesion(x))
    if confirmation is not None:
        return FindingState(
            CONFIRMED,
            f"new since baseline, first seen on {first.when}; confirmed: {confirmation}"
            + provisional,
        )
    return FindingState(EQUIVOCAL, _equivocal_reason(s, group, first) + provisional)


def _provisional_note(s: Sighting) -> str:
    return (
        "; linked to it without a registration (a proposal awaiting review)"
        if s.provisional
        else ""
    )


def _equivocal_reason(s: Sighting, group: list[Sighting], first: Sighting) -> str:
    """Why a new finding is still equivocal: what it is, and what would confirm it."""
    reasons = [f"new since baseline, first seen on {first.when}"]
    if new_lesion_small(
        organ=s.organ,
        longest_diameter_mm=s.longest_diameter_mm,
        short_axis_mm=s.short_axis_mm,
        slice_thickness_mm=s.slice_thickness_mm,
    ):
        reasons.append(f"small ({_size_text(s)}, not measurable)")
    if low_confidence(s.confidence):
        reasons.append(f"low confidence ({s.confidence:.2f})")
    later = [x for x in group if x.study_index > first.study_index]
    if not any(_seen_as_lesion(x) for x in group if x is not first):
        if later:
            reasons.append(f"seen once: not found again on {later[0].when}")
        else:
            reasons.append("seen once")
    if s.near_note:
        reasons.append(s.near_note)
    return (
        "equivocal: "
        + "; ".join(reasons)
        + ". It counts once a radiologist accepts it or a later study confirms it "
        "(RECIST 1.1 section 4.3.5)"
    )


def _seen_as_lesion(s: Sighting) -> bool:
    """Found, and a lesion: a lymph node under 10 mm in short axis is normal (RECIST 1.1
    section 3.1.1), so a node normal at baseline that grows to 10 mm or more is new from
    the study where it first does, and equivocal from there (module docstring)."""
    return s.found and not (s.is_node and node_normal(s.short_axis_mm))


def _absent_state(s: Sighting, group: list[Sighting], at_baseline: bool) -> FindingState:
    """A lesion not seen at this study: gone, merged or too small by a radiologist's
    word or the tracking's; otherwise not found."""
    if s.gone_confirmed:
        return FindingState(CONFIRMED, "confirmed gone by a radiologist")
    if s.merged_into_label:
        return FindingState(CONFIRMED, f"merged into {s.merged_into_label}: measured as part of it")
    if s.too_small:
        return FindingState(
            CONFIRMED,
            f"present but too small to measure (a radiologist): counts {TOO_SMALL_MM:g} mm "
            "(RECIST 1.1 section 4.3.2)",
        )
    if s.outside_range:
        return FindingState(NOT_FOUND, "outside the scanned range of this study: not assessed here")
    # A new lesion never confirmed (by a radiologist or a repeat sighting) was only ever
    # equivocal; one confirmed counts, and not finding it leaves the time point NE.
    if not at_baseline and _new_lesion_confirmation(group) is None:
        return FindingState(
            NOT_FOUND,
            "not found at this study (an equivocal finding seen before, not seen here)",
        )
    return FindingState(
        NOT_FOUND,
        "not found at this study: a radiologist must confirm it gone, mark it too small "
        "to measure, or measure it by hand; until then the time point is not evaluable",
    )


def _size_text(s: Sighting) -> str:
    if s.is_node:
        return f"short axis {s.short_axis_mm:.1f} mm"
    return f"{s.longest_diameter_mm:.1f} mm"
