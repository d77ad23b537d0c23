"""RECIST 1.1 rules for one time point, one small function per rule.

Source of every rule here: Eisenhauer EA, Therasse P, Bogaerts J, et al. New response
evaluation criteria in solid tumours: revised RECIST guideline (version 1.1). Eur J
Cancer 2009;45:228-247 (cited below as "RECIST 1.1" with its section), and the RECIST
working group's clarifications (Schwartz LH, Litiere S, de Vries E, et al. RECIST 1.1 -
Update and clarification: From the RECIST committee. Eur J Cancer 2016;62:132-137; cited
as "the 2016 clarifications").

Lymph nodes (organ ``lymph_node``) are measured by their short axis (section 3.1.1):
15 mm or more is measurable, 10 to 15 mm pathological but not measurable (a non-target),
under 10 mm normal (not recorded). Every other lesion is measured by its longest axial
diameter. The whole timeline (targets at baseline, nadir, new lesions, equivocal
findings, reappearance after a complete response) is `analytics.lesions.core.assess`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from analytics.lesions.core.readings import LesionReading

__all__ = [
    "MAX_TARGETS_PER_ORGAN",
    "MAX_TARGETS_TOTAL",
    "MEASURABLE_MIN_MM",
    "NODE_CR_BELOW_MM",
    "NODE_TARGET_MIN_MM",
    "NON_TARGET_PD_DIAMETER_MM",
    "NON_TARGET_PD_VOLUME_PCT",
    "PD_ABSOLUTE_MM",
    "PD_INCREASE_PCT",
    "PR_DECREASE_PCT",
    "coalesced_sizes_mm",
    "continuing_partial_response",
    "is_measurable",
    "lesion_measurable",
    "nadir",
    "non_target_progression",
    "non_target_response",
    "non_target_unequivocal",
    "overall_response",
    "pct_change",
    "reappearance_after_complete_response",
    "reappearance_counts",
    "sphere_diameter_mm",
    "sum_of_diameters",
    "target_complete",
    "target_partial_response",
    "target_progression",
    "target_response",
    "targets_select",
]

MEASURABLE_MIN_MM = 10.0
MAX_SLICE_FOR_10MM = 5.0
NODE_TARGET_MIN_MM = 15.0
NODE_CR_BELOW_MM = 10.0
MAX_TARGETS_TOTAL = 5
MAX_TARGETS_PER_ORGAN = 2
PR_DECREASE_PCT = -30.0
PD_INCREASE_PCT = 20.0
PD_ABSOLUTE_MM = 5.0
#: Section 4.3.4's yardstick, exactly: a 20% larger diameter is a (1.2^3 - 1) = 72.8%
#: larger volume (a sphere). Not rounded, so that neither side of the line is favoured.
NON_TARGET_PD_VOLUME_PCT = (1.2**3 - 1.0) * 100.0
NON_TARGET_PD_DIAMETER_MM = 5.0
# Percentages are compared with this slack so that exactly 20% or exactly -30% counts
# although 1.2 * 25 or 0.7 * 50 are not exact in binary floating point.
_PCT_SLACK = 1e-9

CR, PR, SD, PD, NE = "CR", "PR", "SD", "PD", "NE"
NON_CR_NON_PD = "non-CR/non-PD"


# --------------------------------------------------------------------------- rules
def is_measurable(
    *,
    longest_diameter_mm: float,
    slice_thickness_mm: float | None = None,
    short_axis_mm: float = math.nan,
    is_node: bool = False,
) -> bool:
    """Measurable at baseline (a possible target).

    RECIST 1.1 section 3.1.1: a non-nodal lesion with a longest diameter of at least
    10 mm by CT with slices no thicker than 5 mm; with thicker slices the minimum is
    twice the slice thickness. A lymph node with a short axis of at least 15 mm (the
    guideline gives nodes no slice-thickness rule; 15 mm is twice a 7.5 mm slice).
    """
    if is_node:
        return short_axis_mm >= NODE_TARGET_MIN_MM
    minimum = MEASURABLE_MIN_MM
    if slice_thickness_mm is not None and slice_thickness_mm > MAX_SLICE_FOR_10MM:
        minimum = 2.0 * slice_thickness_mm
    return longest_diameter_mm >= minimum


def lesion_measurable(reading: LesionReading, *, slice_thickness_mm: float | None) -> bool:
    """`is_measurable` for one reading (a node by its short axis)."""
    return reading.evaluated and is_measurable(
        longest_diameter_mm=reading.longest_diameter_mm,
        slice_thickness_mm=slice_thickness_mm,
        short_axis_mm=reading.short_axis_mm,
        is_node=reading.is_node,
    )


def targets_select(
    *, lesions: Sequence[LesionReading], slice_thickness_mm: float | None = None
) -> tuple[str, ...]:
    """Target lesions at baseline: at most 5 in all and 2 per organ, largest first.

    RECIST 1.1 section 4.2: up to five measurable lesions in total and two per organ,
    "representative of all involved organs", selected by size (longest diameter; the
    short axis for a node). The working group counts paired organs (both lungs, both
    kidneys) as one organ, so ``organ`` carries no side, and all lymph nodes as one
    organ. Order: each involved organ's largest lesion first (representation), then the
    remaining slots by size; ties in diameter go to the larger volume, then the smaller
    ``lesion_uid`` (deterministic). Returns lesion uids, largest first.
    """
    measurable = [r for r in lesions if lesion_measurable(r, slice_thickness_mm=slice_thickness_mm)]
    ranked = sorted(
        measurable,
        key=lambda r: (-r.size_mm, -_finite_or(r.volume_ml, 0.0), r.lesion_uid),
    )
    chosen: list[LesionReading] = []
    per_organ: dict[str, int] = {}
    for r in ranked:  # representation: the largest lesion of each organ
        if len(chosen) < MAX_TARGETS_TOTAL and r.organ not in per_organ:
            chosen.append(r)
            per_organ[r.organ] = 1
    for r in ranked:  # then by size, two per organ
        if len(chosen) >= MAX_TARGETS_TOTAL:
            break
        if r not in chosen and per_organ.get(r.organ, 0) < MAX_TARGETS_PER_ORGAN:
            chosen.append(r)
            per_organ[r.organ] = per_organ.get(r.organ, 0) + 1
    chosen.sort(key=ranked.index)
    return tuple(r.lesion_uid for r in chosen)


def sum_of_diameters(diameters_mm: Iterable[float]) -> float:
    """Sum of the target lesions' diameters (mm); NaN entries (not evaluated) skipped.

    RECIST 1.1 section 4.2: longest diameters, the short axis for a node (which counts
    even when it has shrunk under 10 mm). Section 4.3.2: a target confirmed gone counts
    0 mm; one measured below 5 mm counts as measured; one present but too small to
    measure counts 5 mm (`LesionReading.size_mm`). Whether any target was missing is
    the caller's to report (`target_response`).
    """
    return float(sum(d for d in diameters_mm if not math.isnan(d)))


def pct_change(*, value: float, reference: float) -> float:
    """Percentage change of ``value`` from ``reference``: 100 (value - reference) / reference.

    From a reference of 0: 0.0 if the value is 0 too, +inf if it is larger (any growth
    from nothing is an unbounded relative increase; RECIST 1.1 section 4.3.1's PD rule
    then rests on the absolute increase). NaN in, NaN out.
    """
    if math.isnan(value) or math.isnan(reference):
        return math.nan
    if reference == 0:
        return 0.0 if value == 0 else math.inf
    return 100.0 * (value - reference) / reference


def nadir(sums_mm: Sequence[float]) -> float:
    """The smallest sum of diameters on study *before* the current one, baseline included.

    RECIST 1.1 section 4.3.1 (PD): "taking as reference the smallest sum on study (this
    includes the baseline sum if that is the smallest on study)". ``sums_mm``: the sums of
    the baseline and every earlier follow-up that was fully evaluated.
    """
    values = [s for s in sums_mm if not math.isnan(s)]
    if not values:
        raise ValueError("the nadir needs at least the baseline sum")
    return float(min(values))


def target_progression(*, sum_mm: float, nadir_sum_mm: float) -> bool:
    """Target PD: at least +20% from the nadir AND at least +5 mm absolute.

    RECIST 1.1 section 4.3.1: "At least a 20% increase in the sum of diameters of target
    lesions, taking as reference the smallest sum on study ... In addition to the
    relative increase of 20%, the sum must also demonstrate an absolute increase of at
    least 5 mm."
    """
    relative = pct_change(value=sum_mm, reference=nadir_sum_mm)
    return relative >= PD_INCREASE_PCT - _PCT_SLACK and (
        sum_mm - nadir_sum_mm >= PD_ABSOLUTE_MM - _PCT_SLACK
    )


def target_partial_response(*, sum_mm: float, baseline_sum_mm: float) -> bool:
    """Target PR: at least a 30% decrease from the baseline sum.

    RECIST 1.1 section 4.3.1: "At least a 30% decrease in the sum of diameters of target
    lesions, taking as reference the baseline sum diameters."
    """
    return pct_change(value=sum_mm, reference=baseline_sum_mm) <= PR_DECREASE_PCT + _PCT_SLACK


def target_complete(sizes: Iterable[tuple[float, bool]]) -> bool:
    """Target CR (RECIST 1.1 section 4.3.1): every target gone, and every target lymph
    node under 10 mm in short axis. ``sizes``: (size in mm, is a node) per target; so a
    CR can have a sum above 0 (the 2016 clarifications)."""
    return all(size < NODE_CR_BELOW_MM if node else size == 0 for size, node in sizes)


def target_response(
    *,
    sum_mm: float,
    baseline_sum_mm: float,
    nadir_sum_mm: float,
    not_evaluated: int = 0,
    complete: bool | None = None,
) -> str:
    """CR, PR, SD, PD or NE for the target lesions at one follow-up.

    RECIST 1.1 section 4.3.1: CR by `target_complete` (``complete``; without it, a sum
    of 0); PD by `target_progression` (it wins over PR: a sum can be 30% below baseline
    and still 20% and 5 mm above a lower nadir); PR by `target_partial_response`; SD
    otherwise (clarified: shrinkage compared with baseline, increase compared with the
    nadir). Section 4.4.2: with ``not_evaluated`` targets the response is NE, unless the
    measured ones alone already make PD.
    """
    progression = target_progression(sum_mm=sum_mm, nadir_sum_mm=nadir_sum_mm)
    if not_evaluated:
        return PD if progression else NE
    if (sum_mm == 0) if complete is None else complete:
        return CR
    if progression:
        return PD
    if target_partial_response(sum_mm=sum_mm, baseline_sum_mm=baseline_sum_mm):
        return PR
    return SD


def sphere_diameter_mm(volume_ml: float) -> float:
    """Diameter (mm) of the sphere of this volume (ml)."""
    return float((6.0 * max(volume_ml, 0.0) * 1000.0 / math.pi) ** (1.0 / 3.0))


def non_target_progression(*, volume_ml: float, nadir_volume_ml: float) -> bool:
    """The volume yardstick of non-target progression (RECIST 1.1 section 4.3.4).

    The guideline leaves unequivocal progression to judgement and gives, as a yardstick,
    an increase in tumour burden of 73% in volume, the volume equivalent of a 20%
    increase in diameter (`NON_TARGET_PD_VOLUME_PCT`, 72.8% exactly). Read here as the
    target rule in volume: the summed non-target volume is at least 72.8% above its
    nadir AND the diameter of the sphere of that volume grew by at least 5 mm (section
    4.3.1's absolute increase, so that tiny lesions fluctuating near zero do not count).
    `non_target_unequivocal` says when it may decide.
    """
    if math.isnan(volume_ml) or math.isnan(nadir_volume_ml):
        return False
    relative = pct_change(value=volume_ml, reference=nadir_volume_ml)
    grown_mm = sphere_diameter_mm(volume_ml) - sphere_diameter_mm(nadir_volume_ml)
    return relative >= NON_TARGET_PD_VOLUME_PCT - _PCT_SLACK and (
        grown_mm >= NON_TARGET_PD_DIAMETER_MM - _PCT_SLACK
    )


def non_target_unequivocal(
    *, verdict: bool | None, yardstick: bool, measurable_disease: bool
) -> tuple[bool, bool]:
    """(unequivocal progression of non-target disease, possible progression to review).

    RECIST 1.1 section 4.3.4: with measurable disease, unequivocal progression of
    non-target disease needs "substantial worsening" such that the overall tumour burden
    has increased enough to merit discontinuation of therapy, a judgement: a
    radiologist's ``verdict`` decides, and the volume ``yardstick`` only raises
    "possible non-target progression" for review. Without measurable disease the
    guideline gives the yardstick (a 73% increase in volume) to judge by, so it decides
    there unless a radiologist has said otherwise.
    """
    if verdict is not None:
        return verdict, False
    if measurable_disease:
        return False, yardstick
    return yardstick, False


def non_target_response(
    *, n_baseline: int, n_present: int, n_not_evaluated: int, unequivocal_progression: bool
) -> str | None:
    """CR, non-CR/non-PD, PD or NE for the non-target lesions; None without any.

    RECIST 1.1 section 4.3.3: CR, disappearance of all non-target lesions and every
    lymph node under 10 mm in short axis (tumour markers are out of scope: the caller
    counts a node under 10 mm as not present); non-CR/non-PD, persistence of one or
    more; PD, unequivocal progression of existing non-target lesions (section 4.3.4).
    Not all evaluated and no PD: NE (section 4.4.2). ``n_baseline`` 0: no non-target
    disease.
    """
    if n_baseline == 0:
        return None
    if unequivocal_progression:
        return PD
    if n_not_evaluated:
        return NE
    return CR if n_present == 0 else NON_CR_NON_PD


def overall_response(*, target: str | None, non_target: str | None, new_lesions: bool) -> str:
    """Time point response from target, non-target and new lesions.

    RECIST 1.1 section 4.4.1, Table 1 (patients with target disease) and Table 2
    (non-target disease only, ``target`` None):

    - any new lesion, target PD or non-target PD -> PD;
    - target CR with non-target CR (or no non-target disease) -> CR;
    - target CR with non-target non-CR/non-PD or not evaluated -> PR;
    - target PR -> PR and target SD -> SD (non-target non-PD or not all evaluated);
    - target NE (not all evaluated, non-PD) -> NE;
    - Table 2: non-target CR -> CR, non-CR/non-PD -> non-CR/non-PD, NE -> NE;
    - no target and no non-target disease, nothing new -> NE.
    """
    if new_lesions or target == PD or non_target == PD:
        return PD
    if target is None:
        if non_target is None:
            return NE
        return non_target
    if target == NE:
        return NE
    if target == CR:
        return CR if non_target in (CR, None) else PR
    return target


def reappearance_after_complete_response(*, previous_overall: str | None, reappeared: bool) -> bool:
    """PD when a lesion comes back after a complete response.

    A lesion that disappears and reappears is not by itself progression, unless the
    overall response at the previous assessment was CR: then the reappearance of any
    lesion is PD (the 2016 clarifications, "lesions that disappear and reappear"; RECIST
    1.1 section 4.4.3, Table 3's footnote: after a true CR any disease seen again is
    PD). ``previous_overall``: the latest evaluated time point before this one.
    """
    return reappeared and previous_overall == CR


def reappearance_counts(*, is_node: bool, is_target: bool) -> bool:
    """Whether a lesion seen again after a complete response is, by itself, disease
    reappeared (`reappearance_after_complete_response`).

    The RECIST working group's answer "Abnormal lymph node" (RECIST 1.1 questions and
    clarifications, recist.eortc.org): nodes under 10 mm are benign, so "a node is only
    considered to have 'reappeared' if it is >= 10 mm (Target lesion) or has unequivocally
    progressed (Non Target lesion)". A non-nodal lesion seen again counts, and a target
    node back at 10 mm or more (the caller checks the size); a non-target node back at
    10 mm or more does not by itself: whether it unequivocally progressed is a
    radiologist's call (section 4.3.4), so it is raised for review.
    """
    return is_target or not is_node


def continuing_partial_response(*, target: str | None, response_confirmed: bool) -> str | None:
    """The target response after a confirmed PR (or CR): SD reads PR.

    The RECIST working group's clarification of SD (RECIST 1.1 questions and
    clarifications, recist.eortc.org): "A confirmed PR at a next visit is considered to
    be a continuing PR unless the criteria for PD are met - the subsequent response is not
    based on the change from baseline but the change from the nadir" (their iRECIST
    answer "Managing PR when TP measurements change slightly over time": sums of 100, 70,
    70, 80, 80 read PR at every time point). ``response_confirmed``: a PR or CR confirmed
    (when confirmation is required, `analytics.lesions.core.bor`) and no PD since.
    """
    return PR if target == SD and response_confirmed else target


def coalesced_sizes_mm(
    *, targets: Sequence[str], merged_into: dict[str, str], sizes_mm: dict[str, float]
) -> dict[str, float]:
    """Each target's size when lesions coalesce (RECIST 1.1 section 4.3.2).

    When lesions coalesce so that they can no longer be told apart, the longest
    diameter of the coalesced lesion is recorded for it: the target that absorbed the
    others carries it and the absorbed targets count 0. When a target is absorbed by a
    lesion that is not a target (a non-target or a new lesion), the target carries the
    coalesced lesion's size, so the sum does not drop as if it had gone; of several
    targets absorbed by one non-target, the first (in target order) carries it.
    ``merged_into``: target uid -> the uid that absorbed it, at this study; ``sizes_mm``:
    size of each lesion seen (NaN when unknown). Targets not merged keep their own.
    """
    out: dict[str, float] = {}
    carried: set[str] = set()
    for uid in targets:
        into = merged_into.get(uid, "")
        if not into:
            out[uid] = sizes_mm.get(uid, math.nan)
        elif into in targets or into in carried:
            out[uid] = 0.0
        else:
            out[uid] = sizes_mm.get(into, math.nan)
            carried.add(into)
    return out


def _finite_or(value: float, default: float) -> float:
    return default if value is None or math.isnan(value) else float(value)
