"""RECIST 1.1 over a patient's timeline: one time point response per follow-up study.

Rules per time point are `analytics.lesions.core.recist` (sources there); this module
applies them study after study and says, for each, what the category rests on
(``notes``). A patient's ``timeline`` is a sequence of `StudyReading`s, baseline first.

- Baseline (RECIST 1.1 section 4.2): the targets are the ones a radiologist flagged
  (``is_target`` True), each still checked for measurability with the study's slice
  thickness (section 3.1.1; one that fails is followed as a non-target and said so), or
  else `targets_select`; every other lesion present is a non-target, except a lymph node
  under 10 mm (normal, not recorded).
- Each follow-up: the targets' sum (short axis for nodes, 5 mm for one too small to
  measure, a coalesced lesion's diameter carried by its target: section 4.3.2), the
  change from baseline and from the nadir (the smallest fully evaluated sum before,
  baseline included, section 4.3.1), target, non-target and new-lesion assessments and
  Table 1 (Table 2 without targets).
- A lesion not found (state ``not_found``) is not evaluated, never 0 mm: a target not
  found makes the target response NE unless the others already make PD (section 4.4.2).
- Only confirmed new lesions count (section 4.3.5); an equivocal one is followed and
  named in the notes ("PD pending confirmation"). When a later study confirms it, its
  state is confirmed from its first sighting (`analytics.lesions.core.findings`), so the
  time point where it was first seen reads PD, dated from then.
- A new lesion counted before and not evaluated at a later study (outside the scanned
  range, not found where it was: never read as gone) makes that time point NE, with a
  note, unless PD stands on other grounds; one confirmed gone no longer counts
  (`analytics.lesions.core.new_lesions`).
- Non-target progression: `non_target_unequivocal` (the volume yardstick decides only
  without measurable disease; with targets it raises "possible non-target progression").
- A lesion back after a complete response is PD (`reappearance_after_complete_response`),
  but a non-target lymph node back at 10 mm or more only by unequivocal progression: it
  is raised as possible non-target progression for review (`reappearance_counts`).
- A confirmed PR continues while the targets do not progress from their nadir, even when
  the sum is back under 30% below baseline (`continuing_partial_response`; confirmation
  as the `BestResponseSettings` say).
- A study that cannot be assessed as a whole (``StudyReading.not_evaluable``: its lesion
  links are provisional, its segmentation missing) is NE with the reason; the category
  its readings would give is kept in ``category_as_read`` and said in the notes.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from analytics.lesions.core.bor import BestResponse, BestResponseSettings, best_overall_response
from analytics.lesions.core.findings import node_normal
from analytics.lesions.core.new_lesions import (
    NEW_NOT_EVALUATED_NE,
    NewLesionsRead,
    new_lesions_read,
)
from analytics.lesions.core.readings import CONFIRMED, LesionReading, StudyReading
from analytics.lesions.core.recist import (
    CR,
    NE,
    PD,
    PR,
    coalesced_sizes_mm,
    continuing_partial_response,
    lesion_measurable,
    nadir,
    non_target_progression,
    non_target_response,
    non_target_unequivocal,
    overall_response,
    pct_change,
    sum_of_diameters,
    target_complete,
    target_response,
    targets_select,
)
from analytics.lesions.core.response_notes import (
    PendingLesion,
    continuing_note,
    not_measurable_note,
    pending_note,
    reappearance_notes,
)
from analytics.lesions.core.returns import Reappearance, lesion_present, reappeared, returns_held

__all__ = ["PendingLesion", "RecistAssessment", "recist_assess"]


@dataclass(frozen=True)
class RecistAssessment:
    """RECIST 1.1 at one study. At baseline the responses are None and changes are 0.

    ``sum_diameters_mm`` sums the targets evaluated at this study (all of them unless the
    target response is NE or a PD made by the evaluated ones alone); the percentage
    changes are NaN when a target was not evaluated or there are no targets;
    ``targets_not_evaluated`` says how many were not (the sum is then partial, and the
    stored responses leave it out: `analytics.lesions.responses`).
    ``new_lesions``: a confirmed lesion absent at baseline is present (Table 1's "new
    lesions"); ``new_lesions_first_seen``: how many of them are seen for the first time
    here; ``new_lesion_uids`` which. ``pending``: equivocal new lesions, not counted.
    ``progression_dated_from``: when PD rests on new lesions, the first sighting of the
    earliest. ``new_lesions_not_evaluated``: new lesions counted at an earlier time point
    and not evaluated here (the time point is NE for them unless PD stands otherwise).
    ``reappeared_uids``: the baseline lesions whose return after a complete response
    makes PD (``reappearance``). ``category_as_read``: the category before the
    study-level reasons (``not_evaluable``) made it NE. ``notes``: what the category
    rests on, one sentence each. ``attention``: a person should look (NE, pending,
    possible progression, a lesion not found).
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
    new_lesion_uids: tuple[str, ...] = ()
    pending: tuple[PendingLesion, ...] = ()
    possible_non_target_progression: bool = False
    progression_dated_from: dt.date | None = None
    reappearance: bool = False
    not_evaluable: tuple[str, ...] = ()
    category_as_read: str | None = None
    non_target_volume_ml: float = math.nan
    continuing_response_since: dt.date | None = None
    targets_not_evaluated: int = 0
    new_lesions_not_evaluated: tuple[str, ...] = ()
    reappeared_uids: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    attention: bool = False


# --------------------------------------------------------------------------- baseline
@dataclass(frozen=True)
class _Baseline:
    """The lesions recorded at baseline, split into targets and non-targets."""

    targets: tuple[str, ...]
    non_targets: tuple[str, ...]
    present: frozenset[str]
    is_node: dict[str, bool]
    labels: dict[str, str]
    notes: tuple[str, ...]


def _baseline_lesions(study: StudyReading, slice_thickness_mm: float | None) -> _Baseline:
    """Targets and non-targets among the lesions confirmed at baseline (module docstring)."""
    notes: list[str] = []
    present = []
    for r in study.lesions:
        if not (r.present and r.state == CONFIRMED):
            continue
        if r.is_node and node_normal(r.size_mm):
            notes.append(
                f"{r.name}: a lymph node of {r.size_mm:.1f} mm in short axis is normal and "
                "not recorded (RECIST 1.1 section 3.1.1)"
            )
            continue
        present.append(r)
    chosen = [r for r in present if r.is_target]
    if chosen:
        measurable = []
        for r in chosen:
            if lesion_measurable(r, slice_thickness_mm=slice_thickness_mm):
                measurable.append(r.lesion_uid)
            else:
                notes.append(not_measurable_note(r, slice_thickness_mm))
        targets = tuple(measurable)
    else:
        targets = targets_select(lesions=present, slice_thickness_mm=slice_thickness_mm)
    return _Baseline(
        targets=targets,
        non_targets=tuple(r.lesion_uid for r in present if r.lesion_uid not in targets),
        present=frozenset(r.lesion_uid for r in present),
        is_node={r.lesion_uid: r.is_node for r in present},
        labels={r.lesion_uid: r.name for r in present},
        notes=tuple(notes),
    )


# --------------------------------------------------------------------------- the course
@dataclass
class _Course:
    """What the studies so far leave for the next: the fully evaluated sums (baseline
    first), the non-target volumes, each lesion's first sighting, the new lesions counted
    so far (Tracking UID: label), the baseline lesions gone at the latest evaluated
    study, the latest evaluated category, and every follow-up's (date, category) for the
    response confirmed so far."""

    baseline_date: dt.date
    settings: BestResponseSettings
    sums: list[float] = field(default_factory=list)
    non_target_volumes: list[float] = field(default_factory=list)
    first_seen: dict[str, dt.date] = field(default_factory=dict)
    counted_new: dict[str, str] = field(default_factory=dict)
    back_since: dict[str, dt.date] = field(default_factory=dict)
    gone: set[str] = field(default_factory=set)
    last_category: tuple[str, dt.date] | None = None
    timepoints: list[tuple[dt.date, str]] = field(default_factory=list)

    def response_confirmed(self) -> BestResponse | None:
        """The PR or CR confirmed so far (the best overall response, confirmation as the
        settings require), None without one or once PD came (PD ends the course)."""
        if any(category == PD for _, category in self.timepoints):
            return None
        best = best_overall_response(
            timepoints=self.timepoints, baseline_date=self.baseline_date, settings=self.settings
        )
        return best if best.category in (PR, CR) else None

    def record(self, study: StudyReading, baseline: _Baseline, row: RecistAssessment) -> None:
        evaluated = not row.not_evaluable
        if row.is_baseline or (evaluated and not math.isnan(row.pct_change_baseline)):
            self.sums.append(row.sum_diameters_mm)
        if evaluated:
            self.non_target_volumes.append(row.non_target_volume_ml)
        for r in study.lesions:
            if r.present and not (r.is_node and node_normal(r.size_mm)):  # a lesion
                self.first_seen.setdefault(r.lesion_uid, study.study_date)
        for uid in row.new_lesion_uids:
            reading = study.reading(uid)
            self.counted_new.setdefault(uid, reading.name if reading is not None else uid)
        if not row.is_baseline:
            self.timepoints.append((study.study_date, row.category or NE))
        if evaluated and row.category not in (None, NE):
            self.last_category = (row.category, study.study_date)
            self.gone = {
                uid
                for uid in baseline.present
                if (reading := study.reading(uid)) is not None
                and reading.evaluated
                and not lesion_present(reading, baseline.is_node.get(uid, False))
            }


# --------------------------------------------------------------------------- a timeline
def recist_assess(
    *,
    timeline: Sequence[StudyReading],
    slice_thickness_mm: float | None = None,
    settings: BestResponseSettings | None = None,
) -> tuple[RecistAssessment, ...]:
    """RECIST 1.1 at every study of one patient (baseline first; module docstring).

    ``slice_thickness_mm``: of the baseline series, when its `StudyReading` does not say
    (measurability, RECIST 1.1 section 3.1.1). ``settings``: when a PR counts as
    confirmed (`analytics.lesions.core.bor`; a confirmed PR continues while the targets
    do not progress).
    """
    if not timeline:
        return ()
    studies = sorted(timeline, key=lambda s: s.study_date)
    thickness = studies[0].slice_thickness_mm or slice_thickness_mm
    baseline = _baseline_lesions(studies[0], thickness)
    course = _Course(studies[0].study_date, settings or BestResponseSettings())
    out: list[RecistAssessment] = []
    for index, study in enumerate(studies):
        if index == 0:
            row = _baseline_assessment(study, baseline)
        else:
            study, held = returns_held(study, baseline.present, course.back_since)
            row = _follow_up_assessment(study, baseline, course, held)
        out.append(row)
        course.record(study, baseline, row)
    return tuple(out)


def _baseline_assessment(study: StudyReading, baseline: _Baseline) -> RecistAssessment:
    """The baseline row: its sum is the reference; no response, nothing new."""
    sizes = {r.lesion_uid: r.size_mm for r in study.lesions}
    total = sum_of_diameters(sizes[uid] for uid in baseline.targets)
    notes = list(baseline.notes)
    if not baseline.targets and not baseline.non_targets:
        notes.append("no lesion recorded at baseline: responses will be NE")
    return RecistAssessment(
        study_uid=study.study_uid,
        study_date=study.study_date,
        is_baseline=True,
        target_uids=baseline.targets,
        non_target_uids=baseline.non_targets,
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
        non_target_volume_ml=_non_targets_read(study, baseline).volume_ml,
        notes=tuple(notes),
        attention=False,
    )


@dataclass(frozen=True)
class _TargetsRead:
    """The targets at one study: the sum of those evaluated, whether all are gone (CR),
    and the notes on those not evaluated or coalesced."""

    sum_mm: float
    not_evaluated: int
    complete: bool
    notes: tuple[str, ...]


def _targets_read(study: StudyReading, baseline: _Baseline) -> _TargetsRead:
    """RECIST 1.1 sections 4.2 and 4.3.2 at one follow-up (module docstring)."""
    readings = {uid: study.reading(uid) for uid in baseline.targets}
    seen = {r.lesion_uid: r.size_mm for r in study.lesions if r.evaluated and not r.merged_into}
    merged = {uid: r.merged_into for uid, r in readings.items() if r is not None and r.merged_into}
    sizes = coalesced_sizes_mm(targets=baseline.targets, merged_into=merged, sizes_mm=seen)
    notes, missing = [], 0
    for uid in baseline.targets:
        r = readings[uid]
        name = baseline.labels[uid]
        if r is None or not r.evaluated or math.isnan(sizes[uid]):
            missing += 1
            why = r.note if r is not None and r.note else "no measurement at this study"
            notes.append(f"target {name} not evaluated: {why}")
        elif uid in merged and sizes[uid] > 0:
            notes.append(
                f"target {name} coalesced into another lesion and carries its diameter "
                f"({sizes[uid]:.1f} mm, RECIST 1.1 section 4.3.2)"
            )
    values = [sizes[uid] for uid in baseline.targets if not math.isnan(sizes[uid])]
    complete = not missing and target_complete(
        (sizes[uid], baseline.is_node.get(uid, False)) for uid in baseline.targets
    )
    return _TargetsRead(sum_of_diameters(values), missing, complete, tuple(notes))


@dataclass(frozen=True)
class _NonTargetsRead:
    """The non-targets at one study: how many are present (a node of 10 mm or more), how
    many were not evaluated, their summed volume (NaN when one was not evaluated)."""

    present: int
    not_evaluated: int
    volume_ml: float
    notes: tuple[str, ...] = ()


def _non_targets_read(study: StudyReading, baseline: _Baseline) -> _NonTargetsRead:
    """RECIST 1.1 section 4.3.3 at one study, and the volume for section 4.3.4."""
    present, missing, notes, volumes = 0, 0, [], []
    for uid in baseline.non_targets:
        r = study.reading(uid)
        if r is None or not r.evaluated:
            missing += 1
            why = r.note if r is not None and r.note else "no measurement at this study"
            notes.append(f"non-target {baseline.labels[uid]} not evaluated: {why}")
            continue
        present += lesion_present(r, baseline.is_node.get(uid, False))
        volumes.append(0.0 if r.merged_into else _lesion_volume_ml(r))
    volume = math.nan if missing else float(sum(volumes))
    return _NonTargetsRead(present, missing, volume, tuple(notes))


def _lesion_volume_ml(reading: LesionReading) -> float:
    """Volume, or that of the sphere of the longest diameter when no volume was measured."""
    if not math.isnan(reading.volume_ml):
        return reading.volume_ml
    if math.isnan(reading.longest_diameter_mm):
        return math.nan
    return math.pi * reading.longest_diameter_mm**3 / 6.0 / 1000.0


@dataclass(frozen=True)
class _NonTargetDecision:
    """Non-target progression at one follow-up: unequivocal (it makes PD), possible (for
    review: the volume yardstick with measurable disease, or a non-target node back after
    a complete response), and the non-target volumes known before (their nadir)."""

    unequivocal: bool
    by_volume: bool
    known_volumes: list[float]


def _non_target_decide(
    study: StudyReading, baseline: _Baseline, course: _Course, volume_ml: float
) -> _NonTargetDecision:
    """`non_target_unequivocal` with the volume yardstick from the non-targets' nadir."""
    known = [v for v in course.non_target_volumes if not math.isnan(v)]
    yardstick = bool(known) and non_target_progression(
        volume_ml=volume_ml, nadir_volume_ml=min(known)
    )
    unequivocal, possible = non_target_unequivocal(
        verdict=study.non_target_unequivocal_progression,
        yardstick=yardstick,
        measurable_disease=bool(baseline.targets),
    )
    return _NonTargetDecision(unequivocal, possible, known)


def _follow_up_assessment(
    study: StudyReading,
    baseline: _Baseline,
    course: _Course,
    held: tuple[PendingLesion, ...] = (),
) -> RecistAssessment:
    """A follow-up row: target, non-target and new-lesion readings combined into the
    time point response (RECIST 1.1 section 4.4.1, `overall_response`)."""
    targets = _targets_read(study, baseline)
    non_targets = _non_targets_read(study, baseline)
    new = new_lesions_read(
        study,
        baseline_present=baseline.present,
        first_seen=course.first_seen,
        counted_before=course.counted_new,
    )
    baseline_sum, lowest = course.sums[0], nadir(course.sums)
    continuing = course.response_confirmed()
    strict, t_response = _target_responses(targets, baseline, course, continuing)
    decision = _non_target_decide(study, baseline, course, non_targets.volume_ml)
    nt_response = non_target_response(
        n_baseline=len(baseline.non_targets),
        n_present=non_targets.present,
        n_not_evaluated=non_targets.not_evaluated,
        unequivocal_progression=decision.unequivocal,
    )
    back = _reappeared(study, baseline, course)
    as_read = _as_read(t_response, nt_response, new, back)
    comparable = bool(baseline.targets) and not targets.not_evaluated
    first_seen = [course.first_seen.get(r.lesion_uid, study.study_date) for r in new.counted]
    row = RecistAssessment(
        study_uid=study.study_uid,
        study_date=study.study_date,
        is_baseline=False,
        target_uids=baseline.targets,
        non_target_uids=baseline.non_targets,
        sum_diameters_mm=targets.sum_mm,
        targets_not_evaluated=targets.not_evaluated,
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
        new_lesions=bool(new.counted),
        new_lesions_first_seen=sum(
            1 for r in new.counted if r.lesion_uid not in course.counted_new
        ),
        category=NE if study.not_evaluable else as_read,
        new_lesion_uids=tuple(r.lesion_uid for r in new.counted),
        pending=new.pending + held,
        possible_non_target_progression=decision.by_volume
        or (bool(back.nodes) and study.non_target_unequivocal_progression is None),
        progression_dated_from=min(first_seen) if first_seen else None,
        reappearance=bool(back.lesions),
        reappeared_uids=tuple(u for u in sorted(course.gone) if baseline.labels[u] in back.lesions),
        new_lesions_not_evaluated=new.not_evaluated,
        not_evaluable=tuple(study.not_evaluable),
        category_as_read=as_read,
        non_target_volume_ml=non_targets.volume_ml,
        continuing_response_since=continuing.confirmed_on
        if continuing is not None and strict != t_response
        else None,
    )
    notes = _notes(row, targets, non_targets, new, back, course, baseline, decision)
    return _with_notes(row, notes)


def _target_responses(
    targets: _TargetsRead, baseline: _Baseline, course: _Course, continuing: BestResponse | None
) -> tuple[str | None, str | None]:
    """The target response by the sums alone, and as it reads with a confirmed PR
    continuing (`continuing_partial_response`); None, None without targets."""
    if not baseline.targets:
        return None, None
    strict = target_response(
        sum_mm=targets.sum_mm,
        baseline_sum_mm=course.sums[0],
        nadir_sum_mm=nadir(course.sums),
        not_evaluated=targets.not_evaluated,
        complete=targets.complete,
    )
    return strict, continuing_partial_response(
        target=strict, response_confirmed=continuing is not None
    )


def _as_read(
    t_response: str | None, nt_response: str | None, new: NewLesionsRead, back: Reappearance
) -> str:
    """Table 1 (Table 2 without targets); a lesion back after a complete response is PD
    (`reappeared`); a new lesion counted before and not evaluated now leaves it NE unless
    it is PD (`analytics.lesions.core.new_lesions`)."""
    if back.lesions:
        return PD
    as_read = overall_response(
        target=t_response, non_target=nt_response, new_lesions=bool(new.counted)
    )
    if new.not_evaluated and as_read != PD:
        return NE
    return as_read


def _reappeared(study: StudyReading, baseline: _Baseline, course: _Course) -> Reappearance:
    """`reappeared`: the baseline lesions gone at the latest evaluated study, back now."""
    return reappeared(
        study,
        gone=course.gone,
        is_node=baseline.is_node,
        targets=baseline.targets,
        labels=baseline.labels,
        last_category=course.last_category,
    )


def _with_notes(row: RecistAssessment, notes: list[str]) -> RecistAssessment:
    attention = bool(
        row.not_evaluable
        or row.category == NE
        or row.pending
        or row.possible_non_target_progression
        or any(" not evaluated: " in n for n in notes)
    )
    return RecistAssessment(**{**row.__dict__, "notes": tuple(notes), "attention": attention})


def _notes(
    row: RecistAssessment,
    targets: _TargetsRead,
    non_targets: _NonTargetsRead,
    new: NewLesionsRead,
    back: Reappearance,
    course: _Course,
    baseline: _Baseline,
    decision: _NonTargetDecision,
) -> list[str]:
    """What the time point rests on, one sentence each, most important first."""
    notes: list[str] = []
    if row.not_evaluable:
        notes.append("not evaluable: " + "; ".join(row.not_evaluable))
        if row.category_as_read:
            notes.append(f"with the lesions as read it would be {row.category_as_read}")
    if not baseline.targets and not baseline.non_targets:
        notes.append("no lesion was recorded at baseline, so there is nothing to assess")
    notes += targets.notes
    notes += non_targets.notes
    notes += new.notes
    if new.not_evaluated and row.category_as_read == NE:
        notes.append(NEW_NOT_EVALUATED_NE)
    if row.new_lesions:
        names = ", ".join(
            f"{r.name} (first seen on {course.first_seen.get(r.lesion_uid, row.study_date)})"
            for r in new.counted
        )
        notes.append(
            f"new lesion{'s' if len(new.counted) > 1 else ''}: {names} (RECIST 1.1 section 4.3.5)"
        )
    notes += reappearance_notes(lesions=back.lesions, nodes=back.nodes, since=back.since)
    if row.continuing_response_since is not None:
        notes.append(
            continuing_note(
                pct_change_baseline=row.pct_change_baseline, since=row.continuing_response_since
            )
        )
    if row.pending:
        notes.append(pending_note(row.pending, progression=row.category_as_read == PD))
    if decision.by_volume:
        low = min(decision.known_volumes)
        change = pct_change(value=row.non_target_volume_ml, reference=low)
        notes.append(
            f"possible non-target progression: non-target volume {low:.2f} -> "
            f"{row.non_target_volume_ml:.2f} ml ({change:+.0f}% from its nadir); with "
            "measurable disease a radiologist decides (RECIST 1.1 section 4.3.4)"
        )
    return notes
