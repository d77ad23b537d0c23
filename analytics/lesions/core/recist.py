"""RECIST 1.1 response per follow-up study, one small function per rule.

Source of every rule here: Eisenhauer EA, Therasse P, Bogaerts J, et al. New response
evaluation criteria in solid tumours: revised RECIST guideline (version 1.1). Eur J
Cancer 2009;45:228-247 (cited below as "RECIST 1.1" with its section), and the RECIST
working group's published questions and clarifications (recist.eortc.org).

Scope: non-nodal lesions measured on CT by their longest axial diameter. Lymph nodes
(short axis >= 15 mm to be measurable, >= 10 mm pathological, section 3.1.1) are out of
scope: RadTrack's segmentation does not label nodes, so no rule here treats them.

A patient's `timeline` is a sequence of `StudyReading`s, baseline first
(`analytics.lesions.core.readings`: a disappeared lesion reads 0, one not assessed NaN
or nothing, which makes the target or non-target assessment "not all evaluated", NE).

`recist_assess` gives per study: the target lesions, their sum of diameters, its change
from baseline and from the nadir, the target, non-target and overall time point response
(RECIST 1.1 section 4.4.1, Table 1, and Table 2 without target disease) and whether new
lesions are present. Decisions the guideline leaves to the reader, taken here:

- targets are chosen automatically at baseline (`targets_select`) unless a baseline
  reading is flagged ``is_target`` True (a radiologist's choice), in which case exactly
  the flagged lesions are the targets;
- "unequivocal progression" of non-target disease is read operationally
  (`non_target_progression`, from section 4.3.4's 73% volume example) unless a
  radiologist says so (``StudyReading.non_target_unequivocal_progression``);
- a lesion absent at baseline makes every time point at which it is present PD (section
  4.3.5); the guideline ends follow-up at PD, so this only fixes what later rows show;
- a baseline lesion that disappears and comes back is the same lesion, not a new one:
  its diameter re-enters the sum (clarifications: "lesions that disappear and reappear").
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from analytics.lesions.core.readings import LesionReading, StudyReading

__all__ = [
    "MAX_TARGETS_PER_ORGAN",
    "MAX_TARGETS_TOTAL",
    "MEASURABLE_MIN_MM",
    "NON_TARGET_PD_DIAMETER_MM",
    "NON_TARGET_PD_VOLUME_PCT",
    "PD_ABSOLUTE_MM",
    "PD_INCREASE_PCT",
    "PR_DECREASE_PCT",
    "RecistAssessment",
    "is_measurable",
    "nadir",
    "non_target_progression",
    "non_target_response",
    "overall_response",
    "pct_change",
    "recist_assess",
    "sphere_diameter_mm",
    "sum_of_diameters",
    "target_partial_response",
    "target_progression",
    "target_response",
    "targets_select",
]

MEASURABLE_MIN_MM = 10.0
MAX_SLICE_FOR_10MM = 5.0
MAX_TARGETS_TOTAL = 5
MAX_TARGETS_PER_ORGAN = 2
PR_DECREASE_PCT = -30.0
PD_INCREASE_PCT = 20.0
PD_ABSOLUTE_MM = 5.0
NON_TARGET_PD_VOLUME_PCT = 73.0
NON_TARGET_PD_DIAMETER_MM = 5.0
# Percentages are compared with this slack so that exactly 20% or exactly -30% counts
# although 1.2 * 25 or 0.7 * 50 are not exact in binary floating point.
_PCT_SLACK = 1e-9

CR, PR, SD, PD, NE = "CR", "PR", "SD", "PD", "NE"
NON_CR_NON_PD = "non-CR/non-PD"


# --------------------------------------------------------------------------- assessment
@dataclass(frozen=True)
class RecistAssessment:
    """RECIST 1.1 at one study. At baseline the responses are None and changes are 0.

    ``sum_diameters_mm`` sums the targets evaluated at this study (all of them unless the
    target response is NE or a PD made by the evaluated ones alone); the percentage
    changes are NaN when a target was not evaluated or there are no targets.
    ``new_lesions``: a lesion absent at baseline is present (Table 1's "new lesions");
    ``new_lesions_first_seen``: how many of them are seen for the first time here.
    """

    study_uid: str
    study_date: dt.date
    is_baseline: bool
    target_uids: tuple[str, ...]
    non_target_uids: tuple[str, ...]
    sum_diameters_mm: float
    baseline_sum_mm: float
    nadir_sum_mm: float
    pct_change_baseline: float
    pct_change_nadir: float
    target_response: str | None
    non_target_response: str | None
    new_lesions: bool
    new_lesions_first_seen: int
    category: str | None


# --------------------------------------------------------------------------- rules
def is_measurable(*, longest_diameter_mm: float, slice_thickness_mm: float | None = None) -> bool:
    """Measurable at baseline: longest diameter >= 10 mm on CT.

    RECIST 1.1 section 3.1.1: a non-nodal tumour lesion is measurable with a longest
    diameter of at least 10 mm by CT with slice thickness no greater than 5 mm; with
    thicker slices the minimum is twice the slice thickness (appendix II). Lymph nodes
    (short axis >= 15 mm) are out of scope here.
    """
    minimum = MEASURABLE_MIN_MM
    if slice_thickness_mm is not None and slice_thickness_mm > MAX_SLICE_FOR_10MM:
        minimum = 2.0 * slice_thickness_mm
    return longest_diameter_mm >= minimum


def targets_select(
    *, lesions: Sequence[LesionReading], slice_thickness_mm: float | None = None
) -> tuple[str, ...]:
    """Target lesions at baseline: at most 5 in all and 2 per organ, largest first.

    RECIST 1.1 section 4.2: up to five measurable lesions in total and two per organ,
    "representative of all involved organs", selected by size (longest diameter).
    The working group's clarifications count paired organs (both lungs, both kidneys)
    as one organ, so ``organ`` carries no side. Order: each involved organ's largest
    lesion first (representation), then the remaining slots by size; ties in diameter
    go to the larger volume, then the smaller ``lesion_uid`` (deterministic). Returns
    lesion uids, largest first.
    """
    measurable = [
        r
        for r in lesions
        if r.evaluated
        and is_measurable(
            longest_diameter_mm=r.longest_diameter_mm, slice_thickness_mm=slice_thickness_mm
        )
    ]
    ranked = sorted(
        measurable,
        key=lambda r: (-r.longest_diameter_mm, -_finite_or(r.volume_ml, 0.0), r.lesion_uid),
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
    """Sum of the target lesions' longest diameters (mm); NaN entries (not evaluated) skipped.

    RECIST 1.1 section 4.2 (baseline sum diameters) and 4.3.2: a target lesion that has
    disappeared counts 0 mm; one measured below 5 mm counts as measured (the default of
    5 mm is only for a lesion seen but too small to measure, which a segmentation never
    reports). Whether any target was missing is the caller's to report (`target_response`).
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


def target_response(
    *, sum_mm: float, baseline_sum_mm: float, nadir_sum_mm: float, not_evaluated: int = 0
) -> str:
    """CR, PR, SD, PD or NE for the target lesions at one follow-up.

    RECIST 1.1 section 4.3.1: CR, disappearance of all target lesions (sum 0); PD by
    `target_progression` (it wins over PR: a sum can be 30% below baseline and still
    20% and 5 mm above a lower nadir); PR by `target_partial_response`; SD otherwise
    (clarified: shrinkage compared with baseline, increase compared with the nadir).
    Section 4.4.2: with ``not_evaluated`` targets the response is NE, unless the
    measured ones alone already make PD.
    """
    progression = target_progression(sum_mm=sum_mm, nadir_sum_mm=nadir_sum_mm)
    if not_evaluated:
        return PD if progression else NE
    if sum_mm == 0:
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
    """Operational "unequivocal progression" of non-target disease from its volume.

    RECIST 1.1 section 4.3.4 leaves unequivocal progression to judgement and gives, as a
    yardstick, an increase in tumour burden of about 73% in volume, the increase in
    volume equivalent to a 20% increase in diameter. Read here as the target rule in
    volume: the summed non-target volume is at least 73% above its nadir AND the
    diameter of the sphere of that volume grew by at least 5 mm (so that tiny lesions
    fluctuating near zero do not count).
    """
    if math.isnan(volume_ml) or math.isnan(nadir_volume_ml):
        return False
    relative = pct_change(value=volume_ml, reference=nadir_volume_ml)
    grown_mm = sphere_diameter_mm(volume_ml) - sphere_diameter_mm(nadir_volume_ml)
    return relative >= NON_TARGET_PD_VOLUME_PCT - _PCT_SLACK and (
        grown_mm >= NON_TARGET_PD_DIAMETER_MM - _PCT_SLACK
    )


def non_target_response(
    *, n_baseline: int, n_present: int, n_not_evaluated: int, unequivocal_progression: bool
) -> str | None:
    """CR, non-CR/non-PD, PD or NE for the non-target lesions; None without any.

    RECIST 1.1 section 4.3.3: CR, disappearance of all non-target lesions (tumour
    markers are out of scope); non-CR/non-PD, persistence of one or more; PD,
    unequivocal progression of existing non-target lesions (section 4.3.4). Not all
    evaluated and no PD: NE (section 4.4.2). ``n_baseline`` 0: no non-target disease.
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


# --------------------------------------------------------------------------- a timeline
def _finite_or(value: float, default: float) -> float:
    return default if value is None or math.isnan(value) else float(value)


def _lesion_volume_ml(reading: LesionReading) -> float:
    """Volume, or that of the sphere of the longest diameter when no volume was measured."""
    if not math.isnan(reading.volume_ml):
        return reading.volume_ml
    if math.isnan(reading.longest_diameter_mm):
        return math.nan
    return math.pi * reading.longest_diameter_mm**3 / 6.0 / 1000.0


def recist_assess(
    *, timeline: Sequence[StudyReading], slice_thickness_mm: float | None = None
) -> tuple[RecistAssessment, ...]:
    """RECIST 1.1 at every study of one patient (baseline first; see the module docstring).

    Baseline: targets chosen (`targets_select`, or the ``is_target`` flags), the other
    lesions present are non-targets. Each follow-up: sum of the targets' diameters,
    change from baseline and from the nadir (smallest fully evaluated sum before it,
    baseline included), target / non-target / overall response.
    """
    if not timeline:
        return ()
    studies = sorted(timeline, key=lambda s: s.study_date)
    baseline = _baseline_lesions(studies[0], slice_thickness_mm=slice_thickness_mm)
    course = _Course()
    out: list[RecistAssessment] = []
    for index, study in enumerate(studies):
        targets = _targets_read(study, baseline.targets)
        non_targets = _non_targets_read(study, baseline.non_targets)
        if index == 0:
            out.append(_baseline_assessment(study, baseline, targets))
        else:
            out.append(_follow_up_assessment(study, baseline, targets, non_targets, course))
        course.record(study, targets, non_targets, is_baseline=index == 0)
    return tuple(out)


@dataclass(frozen=True)
class _BaselineLesions:
    """The lesions present at baseline, split into targets and non-targets."""

    targets: tuple[str, ...]
    non_targets: tuple[str, ...]
    present: frozenset[str]


@dataclass(frozen=True)
class _TargetsRead:
    """The targets at one study: the sum of those evaluated, and how many were not."""

    sum_mm: float
    not_evaluated: int


@dataclass(frozen=True)
class _NonTargetsRead:
    """The non-targets at one study: how many are present, how many were not evaluated,
    and their summed volume (NaN when one was not evaluated)."""

    present: int
    not_evaluated: int
    volume_ml: float


@dataclass
class _Course:
    """What the studies so far leave for the next: the fully evaluated sums (baseline
    first), the non-target volumes, and every lesion seen present."""

    sums: list[float] = field(default_factory=list)
    non_target_volumes: list[float] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)

    def record(
        self,
        study: StudyReading,
        targets: _TargetsRead,
        non_targets: _NonTargetsRead,
        *,
        is_baseline: bool,
    ) -> None:
        # The baseline sum is the reference even when a target was not evaluated there.
        if is_baseline or not targets.not_evaluated:
            self.sums.append(targets.sum_mm)
        self.non_target_volumes.append(non_targets.volume_ml)
        self.seen |= _present(study)


def _present(study: StudyReading) -> set[str]:
    return {r.lesion_uid for r in study.lesions if r.present}


def _baseline_lesions(
    baseline: StudyReading, *, slice_thickness_mm: float | None
) -> _BaselineLesions:
    """Targets and non-targets among the lesions present at baseline.

    RECIST 1.1 section 4.2: targets by `targets_select`, unless a radiologist flagged
    some ``is_target`` (then exactly those); every other lesion present is a non-target.
    """
    present = [r for r in baseline.lesions if r.present]
    if any(r.is_target for r in present):
        targets = tuple(r.lesion_uid for r in present if r.is_target)
    else:
        targets = targets_select(lesions=present, slice_thickness_mm=slice_thickness_mm)
    non_targets = tuple(r.lesion_uid for r in present if r.lesion_uid not in targets)
    return _BaselineLesions(targets, non_targets, frozenset(r.lesion_uid for r in present))


def _targets_read(study: StudyReading, targets: tuple[str, ...]) -> _TargetsRead:
    """The sum of the evaluated targets' diameters (RECIST 1.1 sections 4.2 and 4.3.2:
    a disappeared target counts 0 mm) and how many were not evaluated (no reading or
    NaN; section 4.4.2)."""
    diameters, missing = [], 0
    for uid in targets:
        reading = study.reading(uid)
        if reading is None or not reading.evaluated:
            missing += 1
        else:
            diameters.append(reading.longest_diameter_mm)
    return _TargetsRead(sum_of_diameters(diameters), missing)


def _non_targets_read(study: StudyReading, non_targets: tuple[str, ...]) -> _NonTargetsRead:
    """The non-targets present and not evaluated at ``study`` (RECIST 1.1 section 4.3.3),
    and their volume for the progression yardstick of section 4.3.4."""
    readings = [study.reading(uid) for uid in non_targets]
    missing = sum(1 for r in readings if r is None or not r.evaluated)
    present = sum(1 for r in readings if r is not None and r.present)
    volume = math.nan if missing else sum(_lesion_volume_ml(r) for r in readings if r is not None)
    return _NonTargetsRead(present, missing, volume)


def _new_lesions(
    study: StudyReading, baseline: _BaselineLesions, seen: set[str]
) -> tuple[bool, int]:
    """Whether a lesion absent at baseline is present (RECIST 1.1 section 4.3.5), and how
    many of those are seen for the first time. A baseline lesion that disappeared and
    came back is not new (clarifications: "lesions that disappear and reappear")."""
    present = _present(study)
    return bool(present - baseline.present), len(present - seen - baseline.present)


def _non_target_unequivocal(
    study: StudyReading, volume_ml: float, earlier_volumes_ml: Sequence[float]
) -> bool:
    """Unequivocal progression of non-target disease (RECIST 1.1 section 4.3.4): the
    radiologist's verdict when given, else `non_target_progression` from the summed
    volume against the smallest known earlier one."""
    if study.non_target_unequivocal_progression is not None:
        return study.non_target_unequivocal_progression
    known = [v for v in earlier_volumes_ml if not math.isnan(v)]
    return bool(known) and non_target_progression(volume_ml=volume_ml, nadir_volume_ml=min(known))


def _baseline_assessment(
    study: StudyReading, baseline: _BaselineLesions, targets: _TargetsRead
) -> RecistAssessment:
    """The baseline row: its sum is the reference; no response, nothing new."""
    return RecistAssessment(
        study_uid=study.study_uid,
        study_date=study.study_date,
        is_baseline=True,
        target_uids=baseline.targets,
        non_target_uids=baseline.non_targets,
        sum_diameters_mm=targets.sum_mm,
        baseline_sum_mm=targets.sum_mm,
        nadir_sum_mm=targets.sum_mm,
        pct_change_baseline=0.0,
        pct_change_nadir=0.0,
        target_response=None,
        non_target_response=None,
        new_lesions=False,
        new_lesions_first_seen=0,
        category=None,
    )


def _follow_up_assessment(
    study: StudyReading,
    baseline: _BaselineLesions,
    targets: _TargetsRead,
    non_targets: _NonTargetsRead,
    course: _Course,
) -> RecistAssessment:
    """A follow-up row: target, non-target and new-lesion readings combined into the
    time point response (RECIST 1.1 section 4.4.1, `overall_response`)."""
    baseline_sum = course.sums[0]
    lowest = nadir(course.sums)
    t_response = (
        target_response(
            sum_mm=targets.sum_mm,
            baseline_sum_mm=baseline_sum,
            nadir_sum_mm=lowest,
            not_evaluated=targets.not_evaluated,
        )
        if baseline.targets
        else None
    )
    nt_response = non_target_response(
        n_baseline=len(baseline.non_targets),
        n_present=non_targets.present,
        n_not_evaluated=non_targets.not_evaluated,
        unequivocal_progression=_non_target_unequivocal(
            study, non_targets.volume_ml, course.non_target_volumes
        ),
    )
    new, first_seen = _new_lesions(study, baseline, course.seen)
    # Changes compare whole sums only: with a target not evaluated they mean nothing.
    comparable = bool(baseline.targets) and not targets.not_evaluated
    return RecistAssessment(
        study_uid=study.study_uid,
        study_date=study.study_date,
        is_baseline=False,
        target_uids=baseline.targets,
        non_target_uids=baseline.non_targets,
        sum_diameters_mm=targets.sum_mm,
        baseline_sum_mm=baseline_sum,
        nadir_sum_mm=lowest,
        pct_change_baseline=pct_change(value=targets.sum_mm, reference=baseline_sum)
        if comparable
        else math.nan,
        pct_change_nadir=pct_change(value=targets.sum_mm, reference=lowest)
        if comparable
        else math.nan,
        target_response=t_response,
        non_target_response=nt_response,
        new_lesions=new,
        new_lesions_first_seen=first_seen,
        category=overall_response(target=t_response, non_target=nt_response, new_lesions=new),
    )
