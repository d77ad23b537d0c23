"""RECIST 1.1 response per follow-up study, one small function per rule.

Source of every rule here: Eisenhauer EA, Therasse P, Bogaerts J, et al. New response
evaluation criteria in solid tumours: revised RECIST guideline (version 1.1). Eur J
Cancer 2009;45:228-247 (cited below as "RECIST 1.1" with its section), and the RECIST
working group's published questions and clarifications (recist.eortc.org).

Scope: non-nodal lesions measured on CT by their longest axial diameter. Lymph nodes
(short axis >= 15 mm to be measurable, >= 10 mm pathological, section 3.1.1) are out of
scope: RadTrack's segmentation does not label nodes, so no rule here treats them.

A patient's `timeline` is a sequence of `StudyReading`s, baseline first. Absence and
missing data are kept apart: a lesion that has disappeared has diameter 0 (and volume 0);
a lesion that could not be assessed at a study has NaN, or no reading there at all, and
makes the target or non-target assessment "not all evaluated" (NE).

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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

__all__ = [
    "MAX_TARGETS_PER_ORGAN",
    "MAX_TARGETS_TOTAL",
    "MEASURABLE_MIN_MM",
    "NON_TARGET_PD_DIAMETER_MM",
    "NON_TARGET_PD_VOLUME_PCT",
    "PD_ABSOLUTE_MM",
    "PD_INCREASE_PCT",
    "PR_DECREASE_PCT",
    "LesionReading",
    "RecistAssessment",
    "StudyReading",
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
    "timeline_from_measurements",
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


# --------------------------------------------------------------------------- readings
@dataclass(frozen=True)
class LesionReading:
    """One lesion identity at one study.

    ``longest_diameter_mm`` is the longest axial diameter; 0 when the lesion has
    disappeared, NaN when it was not evaluated. ``volume_ml`` likewise (NaN: not
    measured). ``is_target`` at baseline: True/False is a radiologist's choice, None lets
    `targets_select` choose.
    """

    lesion_uid: str
    organ: str
    longest_diameter_mm: float
    volume_ml: float = math.nan
    short_axis_mm: float = math.nan
    is_target: bool | None = None

    @property
    def present(self) -> bool:
        """Seen at this study (diameter or volume above zero)."""
        return self.longest_diameter_mm > 0 or self.volume_ml > 0

    @property
    def evaluated(self) -> bool:
        return not math.isnan(self.longest_diameter_mm)


@dataclass(frozen=True)
class StudyReading:
    """The lesions read at one study. ``non_target_unequivocal_progression``: a
    radiologist's verdict on non-target disease (None: decide from the volumes)."""

    study_uid: str
    study_date: dt.date
    lesions: tuple[LesionReading, ...]
    non_target_unequivocal_progression: bool | None = None

    def reading(self, lesion_uid: str) -> LesionReading | None:
        for lesion in self.lesions:
            if lesion.lesion_uid == lesion_uid:
                return lesion
        return None


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
    baseline = studies[0]
    present_at_baseline = [r for r in baseline.lesions if r.present]
    baseline_uids = {r.lesion_uid for r in present_at_baseline}
    if any(r.is_target for r in present_at_baseline):
        targets = tuple(r.lesion_uid for r in present_at_baseline if r.is_target)
    else:
        targets = targets_select(lesions=present_at_baseline, slice_thickness_mm=slice_thickness_mm)
    non_targets = tuple(r.lesion_uid for r in present_at_baseline if r.lesion_uid not in targets)

    out: list[RecistAssessment] = []
    sums: list[float] = []  # fully evaluated sums, baseline first
    non_target_volumes: list[float] = []
    seen: set[str] = set()
    for index, study in enumerate(studies):
        diameters, missing = [], 0
        for uid in targets:
            reading = study.reading(uid)
            if reading is None or not reading.evaluated:
                missing += 1
            else:
                diameters.append(reading.longest_diameter_mm)
        total = sum_of_diameters(diameters)
        nt_readings = [study.reading(uid) for uid in non_targets]
        nt_missing = sum(1 for r in nt_readings if r is None or not r.evaluated)
        nt_present = sum(1 for r in nt_readings if r is not None and r.present)
        nt_volume = (
            math.nan
            if nt_missing
            else sum(_lesion_volume_ml(r) for r in nt_readings if r is not None)
        )
        present_uids = {r.lesion_uid for r in study.lesions if r.present}
        first_seen = len(present_uids - seen - baseline_uids) if index else 0
        seen |= present_uids
        new = bool(present_uids - baseline_uids) if index else False

        if index == 0:
            out.append(
                RecistAssessment(
                    study_uid=study.study_uid,
                    study_date=study.study_date,
                    is_baseline=True,
                    target_uids=targets,
                    non_target_uids=non_targets,
                    sum_diameters_mm=total,
                    baseline_sum_mm=total,
                    nadir_sum_mm=total,
                    pct_change_baseline=0.0,
                    pct_change_nadir=0.0,
                    target_response=None,
                    non_target_response=None,
                    new_lesions=False,
                    new_lesions_first_seen=0,
                    category=None,
                )
            )
            sums.append(total)
            non_target_volumes.append(nt_volume)
            continue

        baseline_sum = sums[0]
        lowest = nadir(sums)
        if targets:
            t_response = target_response(
                sum_mm=total,
                baseline_sum_mm=baseline_sum,
                nadir_sum_mm=lowest,
                not_evaluated=missing,
            )
        else:
            t_response = None
        if study.non_target_unequivocal_progression is not None:
            nt_progression = study.non_target_unequivocal_progression
        else:
            known = [v for v in non_target_volumes if not math.isnan(v)]
            nt_progression = bool(known) and non_target_progression(
                volume_ml=nt_volume, nadir_volume_ml=min(known)
            )
        nt_response = non_target_response(
            n_baseline=len(non_targets),
            n_present=nt_present,
            n_not_evaluated=nt_missing,
            unequivocal_progression=nt_progression,
        )
        out.append(
            RecistAssessment(
                study_uid=study.study_uid,
                study_date=study.study_date,
                is_baseline=False,
                target_uids=targets,
                non_target_uids=non_targets,
                sum_diameters_mm=total,
                baseline_sum_mm=baseline_sum,
                nadir_sum_mm=lowest,
                pct_change_baseline=pct_change(value=total, reference=baseline_sum)
                if targets and not missing
                else math.nan,
                pct_change_nadir=pct_change(value=total, reference=lowest)
                if targets and not missing
                else math.nan,
                target_response=t_response,
                non_target_response=nt_response,
                new_lesions=new,
                new_lesions_first_seen=first_seen,
                category=overall_response(
                    target=t_response, non_target=nt_response, new_lesions=new
                ),
            )
        )
        if not missing:
            sums.append(total)
        non_target_volumes.append(nt_volume)
    return tuple(out)


# --------------------------------------------------------------------------- tables
def _flag(value) -> bool | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in {"", "nan", "none"}:
            return None
        return text in {"1", "true", "t", "yes", "y"}
    return bool(value)


def timeline_from_measurements(
    measurements: pd.DataFrame,
) -> Mapping[str, tuple[StudyReading, ...]]:
    """Per patient, the timeline from an ``export_measurements`` table (DESIGN.md).

    Reads ``patient_id, study_instance_uid, study_date, lesion_uid, organ, volume_ml,
    longest_diameter_mm`` and, when present, ``short_axis_mm``, ``status``,
    ``is_target`` and ``review_state``. A row with status ``resolved`` reads as
    disappeared (0 mm, 0 ml) whatever its numbers; a row whose review_state is
    ``rejected`` (a radiologist said it is not a lesion) is left out. A study appears
    only if it has at least one row (a resolved lesion still has one).
    """
    frame = measurements.copy()
    if "review_state" in frame:
        frame = frame[frame["review_state"].astype(str).str.lower() != "rejected"]
    frame["study_date"] = pd.to_datetime(frame["study_date"]).dt.date
    out: dict[str, tuple[StudyReading, ...]] = {}
    for patient_id, rows in frame.groupby("patient_id", sort=True):
        studies = []
        for (study_date, study_uid), group in rows.groupby(
            ["study_date", "study_instance_uid"], sort=True
        ):
            readings = []
            for row in group.to_dict("records"):
                resolved = str(row.get("status", "")).lower() == "resolved"
                readings.append(
                    LesionReading(
                        lesion_uid=str(row["lesion_uid"]),
                        organ=str(row["organ"]).strip().lower(),
                        longest_diameter_mm=0.0 if resolved else float(row["longest_diameter_mm"]),
                        volume_ml=0.0 if resolved else float(row["volume_ml"]),
                        short_axis_mm=float(row.get("short_axis_mm", math.nan)),
                        is_target=_flag(row.get("is_target")),
                    )
                )
            studies.append(StudyReading(str(study_uid), study_date, tuple(readings)))
        out[str(patient_id)] = tuple(studies)
    return out
