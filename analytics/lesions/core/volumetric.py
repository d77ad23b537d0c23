"""Volumetric response beside RECIST: tumour burden, volume categories, growth rate and VDT.

Thresholds are RECIST 1.1's diameter thresholds carried to volume through a sphere
(V proportional to d^3), the equivalence RECIST 1.1 itself uses for non-target disease
(Eisenhauer EA et al., Eur J Cancer 2009;45:228-247, section 4.3.4: a 73% increase in
volume matches a 20% increase in diameter). They are used exactly, not rounded, so that
neither side of a line is favoured (a change exactly on the line counts, as in RECIST):

- progression: +20% diameter -> 1.2^3 - 1 = +72.8% volume from the nadir, AND the
  diameter of the sphere of that volume grows by at least 5 mm (section 4.3.1's absolute
  increase carried over: the relative change of a small volume is mostly measurement
  error, which grows as lesions shrink: Buckler AJ et al., Acad Radiol
  2015;22:1393-1408, the test-retest study behind the QIBA CT Volumetry profile), so
  0.05 -> 0.09 ml (+80%, a sphere of 4.6 -> 5.6 mm) is not progression;
- response: -30% diameter -> 0.7^3 - 1 = -65.7% volume from baseline;
- complete response: no tumour volume left of a burden there was at baseline; with
  nothing at baseline there is nothing to respond: NE.

Findings count as RECIST counts them (`analytics.lesions.core.assess`): a lesion not
found makes the total unknown (NE), an equivocal new lesion is left out until
confirmed, one too small to measure counts the sphere of 5 mm, a merged one counts in
the lesion that absorbed it, and a study that cannot be assessed as a whole is NE.

Repeat-scan variability: volumes of the same lesion on two scans minutes apart differ by
up to about 20-25% (95% limits of agreement; e.g. Wormanns D et al., Eur Radiol
2004;14:86-92), which is why the NELSON screening trial counted only volume changes of
25% or more as growth (Xu DM et al., Lung Cancer 2006;54:177-184). A change smaller than
`REPEATABILITY_PCT` is flagged ``within_noise``: its growth rate and doubling time are
reported but say little.

Growth is exponential between two scans: specific growth rate SGR = ln(V2/V1) / t per
day (Mehrara E et al., Cancer Res 2007;67:3970-3975) and volume doubling time
VDT = t ln 2 / ln(V2/V1) = ln 2 / SGR (Collins VP et al., Am J Roentgenol 1956;76:988-1000;
Schwartz M, Cancer 1961;14:1272-1294). Conventions (`volume_doubling_time`):

- shrinking (V2 < V1): VDT is negative and its magnitude is the halving time;
- no change (V2 = V1): VDT is +inf, SGR 0;
- V1 = 0 (a lesion that appeared) or V2 = 0 (one that disappeared): no finite rate
  exists; VDT and SGR are NaN with a note saying which.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import pandas as pd

from analytics.layouts import EXPORT_RESPONSE_COLUMNS
from analytics.lesions.core.assess import recist_assess
from analytics.lesions.core.findings import node_normal
from analytics.lesions.core.readings import (
    CONFIRMED,
    EQUIVOCAL,
    NOT_FOUND,
    REJECTED,
    TOO_SMALL_MM,
    LesionReading,
    StudyReading,
    timeline_from_measurements,
)
from analytics.lesions.core.recist import pct_change, sphere_diameter_mm

__all__ = [
    "REPEATABILITY_PCT",
    "VOLUME_PD_DIAMETER_MM",
    "VOLUME_PD_PCT",
    "VOLUME_PR_PCT",
    "DoublingTime",
    "LesionVolumeChange",
    "VolumetricAssessment",
    "growth_rate_per_day",
    "responses_table_build",
    "total_tumour_burden_ml",
    "volume_doubling_time",
    "volume_partial_response",
    "volume_progression",
    "volume_response",
    "volumetric_assess",
    "within_measurement_noise",
]

VOLUME_PD_PCT = (1.2**3 - 1.0) * 100.0  # +72.8%
VOLUME_PR_PCT = (0.7**3 - 1.0) * 100.0  # -65.7%
VOLUME_PD_DIAMETER_MM = 5.0
REPEATABILITY_PCT = 25.0
_PCT_SLACK = 1e-9


# --------------------------------------------------------------------------- rules
def total_tumour_burden_ml(volumes_ml: Iterable[float]) -> float:
    """Total tumour burden: the sum of all lesion volumes (ml); NaN (not measured) skipped."""
    return float(sum(v for v in volumes_ml if not math.isnan(v)))


def volume_progression(*, volume_ml: float, nadir_ml: float) -> bool:
    """Volumetric PD: at least +72.8% from the nadir (smallest volume before, baseline
    included) and a sphere at least 5 mm larger in diameter (module docstring).

    The sphere equivalent of RECIST 1.1's +20% and +5 mm in diameter (section 4.3.1),
    as in section 4.3.4. Growth from a nadir of 0 (a lesion that came back) is an
    unbounded relative increase, so the 5 mm decide.
    """
    if math.isnan(volume_ml) or math.isnan(nadir_ml):
        return False
    change = pct_change(value=volume_ml, reference=nadir_ml)
    grown_mm = sphere_diameter_mm(volume_ml) - sphere_diameter_mm(nadir_ml)
    return change >= VOLUME_PD_PCT - _PCT_SLACK and grown_mm >= VOLUME_PD_DIAMETER_MM - _PCT_SLACK


def volume_partial_response(*, volume_ml: float, baseline_ml: float) -> bool:
    """Volumetric PR: at least -65.7% from baseline (the sphere equivalent of -30% in
    diameter, RECIST 1.1 section 4.3.1: 0.7^3 - 1)."""
    return pct_change(value=volume_ml, reference=baseline_ml) <= VOLUME_PR_PCT + _PCT_SLACK


def volume_response(*, volume_ml: float, baseline_ml: float, nadir_ml: float) -> str:
    """CR, PR, SD, PD (or NE) for one lesion's or the total volume, like RECIST's targets.

    NE when a volume is not known, or when there was nothing at baseline and there is
    nothing to call progression now (no burden to respond: a CR would claim a response
    that never happened); PD by `volume_progression` (wins over PR, as in RECIST 1.1
    section 4.3.1); CR when nothing is left (0 ml) of a burden there was; PR by
    `volume_partial_response`; SD otherwise.
    """
    if math.isnan(volume_ml) or math.isnan(baseline_ml) or math.isnan(nadir_ml):
        return "NE"
    if volume_progression(volume_ml=volume_ml, nadir_ml=nadir_ml):
        return "PD"
    if baseline_ml == 0:
        return "NE"
    if volume_ml == 0:
        return "CR"
    if volume_partial_response(volume_ml=volume_ml, baseline_ml=baseline_ml):
        return "PR"
    return "SD"


def within_measurement_noise(*, volume1_ml: float, volume2_ml: float) -> bool:
    """True when the change between two volumes is under the ~25% repeat-scan variability
    (module docstring: Wormanns 2004; NELSON, Xu 2006). Both volumes must be positive."""
    if not (volume1_ml > 0 and volume2_ml > 0):
        return False
    return abs(pct_change(value=volume2_ml, reference=volume1_ml)) < REPEATABILITY_PCT


def growth_rate_per_day(*, volume1_ml: float, volume2_ml: float, interval_days: float) -> float:
    """Specific growth rate ln(V2/V1) / t (per day; Mehrara 2007). Negative when shrinking;
    NaN when a volume is not positive or no time passed."""
    if interval_days < 0:
        raise ValueError(f"interval_days must not be negative; got {interval_days}")
    if not (volume1_ml > 0 and volume2_ml > 0) or interval_days == 0:
        return math.nan
    return math.log(volume2_ml / volume1_ml) / interval_days


@dataclass(frozen=True)
class DoublingTime:
    """Volume doubling time between two scans (see `volume_doubling_time`)."""

    days: float
    growth_rate_per_day: float
    within_noise: bool
    note: str


def volume_doubling_time(
    *, volume1_ml: float, volume2_ml: float, interval_days: float
) -> DoublingTime:
    """VDT = t ln 2 / ln(V2/V1) (Collins 1956; Schwartz 1961), with the conventions of the
    module docstring: negative = halving time, +inf = no change, NaN when a volume is 0
    (appeared / disappeared) or unknown, or no time passed. ``within_noise`` flags a
    change under `REPEATABILITY_PCT`."""
    rate = growth_rate_per_day(
        volume1_ml=volume1_ml, volume2_ml=volume2_ml, interval_days=interval_days
    )
    noise = within_measurement_noise(volume1_ml=volume1_ml, volume2_ml=volume2_ml)
    if math.isnan(volume1_ml) or math.isnan(volume2_ml):
        return DoublingTime(math.nan, math.nan, False, "volume not measured")
    if volume1_ml <= 0 and volume2_ml <= 0:
        return DoublingTime(math.nan, math.nan, False, "absent at both scans")
    if volume1_ml <= 0:
        return DoublingTime(math.nan, math.nan, False, "appeared: no earlier volume")
    if volume2_ml <= 0:
        return DoublingTime(math.nan, math.nan, False, "disappeared")
    if interval_days == 0:
        return DoublingTime(math.nan, math.nan, noise, "no time between the scans")
    if rate == 0:
        return DoublingTime(math.inf, 0.0, True, "no change in volume")
    days = math.log(2.0) / rate
    note = "shrinking: the magnitude is the halving time" if rate < 0 else "growing"
    if noise:
        note += f"; change within the ~{REPEATABILITY_PCT:.0f}% repeat-scan variability"
    return DoublingTime(days, rate, noise, note)


# --------------------------------------------------------------------------- a timeline
@dataclass(frozen=True)
class LesionVolumeChange:
    """One lesion at one study against its first volume (``reference_ml``: at baseline,
    or when first seen for a new lesion) and its nadir; VDT against the previous study."""

    lesion_uid: str
    volume_ml: float
    reference_ml: float
    nadir_ml: float
    pct_change_reference: float
    pct_change_nadir: float
    category: str | None
    doubling_time: DoublingTime | None


@dataclass(frozen=True)
class VolumetricAssessment:
    """Total tumour burden and the volumetric category at one study.

    ``burden_response`` rates the total volume alone (`volume_response`); ``category``
    adds the new-lesion rule (RECIST 1.1 section 4.3.5: a new lesion is PD). None at
    baseline. ``doubling_time``: of the total burden since the previous study.
    """

    study_uid: str
    study_date: dt.date
    is_baseline: bool
    total_volume_ml: float
    baseline_volume_ml: float
    nadir_volume_ml: float
    pct_change_baseline: float
    pct_change_nadir: float
    burden_response: str | None
    category: str | None
    new_lesions: bool
    doubling_time: DoublingTime | None
    lesions: tuple[LesionVolumeChange, ...]


def volumetric_assess(*, timeline: Sequence[StudyReading]) -> tuple[VolumetricAssessment, ...]:
    """Volumetric response at every study of one patient (baseline first).

    The total burden sums every counted lesion's volume (targets, non-targets and
    confirmed new lesions; a lesion not read or not found at a study, or with NaN
    volume, makes the total NaN and the category NE). Its nadir is the smallest total on
    an earlier study, baseline included, leaving out the studies not evaluable as a whole
    (their volumes cannot be trusted: implausible CT numbers, a segmentation missing), as
    RECIST 1.1 leaves them out of the nadir of the sum. Confirmed new lesions (absent at
    baseline, present now) make the category PD; a study not evaluable as a whole is NE.
    """
    if not timeline:
        return ()
    studies = like_with_like(sorted(timeline, key=lambda s: s.study_date))
    baseline_uids = {r.lesion_uid for r in studies[0].lesions if _counts(r)}
    course = _Course()
    out: list[VolumetricAssessment] = []
    for index, study in enumerate(studies):
        course.known_extend(study, is_baseline=index == 0)
        volumes = {uid: _volume_ml(study, uid) for uid in course.known}
        total = math.nan if any(math.isnan(v) for v in volumes.values()) else sum(volumes.values())
        interval = (study.study_date - course.previous_date).days if course.previous_date else 0
        evaluable = index == 0 or not study.not_evaluable
        lesions = tuple(
            _lesion_change(uid, volume, course, interval_days=interval, evaluable=evaluable)
            for uid, volume in volumes.items()
        )
        out.append(
            _assessment(
                study,
                total,
                lesions,
                course,
                is_baseline=index == 0,
                interval_days=interval,
                new=_new_lesions(study, baseline_uids) if index else False,
            )
        )
        course.record(study, volumes, total if evaluable else math.nan)
    return tuple(out)


def like_with_like(studies: Sequence[StudyReading]) -> list[StudyReading]:
    """The timeline with each lesion's volumes measured alike at every study.

    A lesion measured with its outer layer (the ground glass of a part-solid nodule, a
    cystic lesion's wall: `LesionReading.volume_core_ml`) at some studies and without it
    at others (the layer not seen there: thicker slices, more noise) would change by the
    layer alone, two or three times its volume. Then its studies measured with the layer
    read the volume without it, as the others were measured; a lesion measured with its
    layer everywhere, or nowhere, keeps its volumes."""
    layered: dict[str, set[bool]] = {}
    for study in studies:
        for r in study.lesions:
            if r.present and not math.isnan(r.volume_ml) and r.volume_ml > 0:
                layered.setdefault(r.lesion_uid, set()).add(not math.isnan(r.volume_core_ml))
    mixed = {uid for uid, kinds in layered.items() if kinds == {True, False}}
    if not mixed:
        return list(studies)
    return [
        replace(
            study,
            lesions=tuple(
                replace(r, volume_ml=r.volume_core_ml)
                if r.lesion_uid in mixed and not math.isnan(r.volume_core_ml)
                else r
                for r in study.lesions
            ),
        )
        for study in studies
    ]


@dataclass
class _Course:
    """What the studies so far leave for the next: the lesions known (present once, or
    read at baseline), each one's volumes since first seen, the totals (NaN for a study
    not evaluable as a whole: never a nadir), and the previous study's total, date and
    volumes (for doubling times)."""

    known: list[str] = field(default_factory=list)
    history: dict[str, list[float]] = field(default_factory=dict)
    totals: list[float] = field(default_factory=list)
    previous_total: float = math.nan
    previous_date: dt.date | None = None
    previous_volume: dict[str, float] = field(default_factory=dict)

    def known_extend(self, study: StudyReading, *, is_baseline: bool) -> None:
        for r in study.lesions:
            if r.lesion_uid in self.known:
                continue
            if _counts(r) or (is_baseline and r.state == CONFIRMED and not _normal_node(r)):
                self.known.append(r.lesion_uid)

    def record(self, study: StudyReading, volumes: dict[str, float], total: float) -> None:
        self.totals.append(total)
        self.previous_total, self.previous_date = total, study.study_date
        self.previous_volume = dict(volumes)


def _normal_node(r: LesionReading) -> bool:
    return r.is_node and node_normal(r.size_mm)


def _counts(r: LesionReading) -> bool:
    """A lesion seen that counts: confirmed, present, not a normal-sized node."""
    return r.present and r.state == CONFIRMED and not _normal_node(r)


def _new_lesions(study: StudyReading, baseline_uids: set[str]) -> bool:
    """A confirmed lesion absent at baseline is present (RECIST 1.1 section 4.3.5)."""
    return bool({r.lesion_uid for r in study.lesions if _counts(r)} - baseline_uids)


#: A lesion present but too small to measure: the sphere of `TOO_SMALL_MM` (ml).
_TOO_SMALL_ML = math.pi * TOO_SMALL_MM**3 / 6000.0


def _volume_ml(study: StudyReading, lesion_uid: str) -> float:
    """Its volume at ``study``: NaN when not read or not found; 0 when gone or merged."""
    reading = study.reading(lesion_uid)
    if reading is None or reading.state in (NOT_FOUND, REJECTED):
        return math.nan
    if reading.merged_into:
        return 0.0
    if reading.state == EQUIVOCAL:
        # A known lesion seen again after it was confirmed gone, not yet confirmed
        # (`analytics.lesions.core.findings`): still gone until it is.
        return 0.0
    if reading.too_small:
        return _TOO_SMALL_ML
    return reading.volume_ml


def _lesion_change(
    uid: str, volume: float, course: _Course, *, interval_days: int, evaluable: bool = True
) -> LesionVolumeChange:
    """One lesion against its first volume above 0 and its nadir (rated by
    `volume_response` once it has a history), with its VDT since the previous study;
    the volume joins its history once the lesion has been seen (as NaN from a study not
    evaluable as a whole: neither a reference nor a nadir)."""
    past = course.history.setdefault(uid, [])
    reference = next((v for v in past if v > 0), volume)
    lowest = min((v for v in past if not math.isnan(v)), default=volume)
    change = LesionVolumeChange(
        lesion_uid=uid,
        volume_ml=volume,
        reference_ml=reference,
        nadir_ml=lowest,
        pct_change_reference=pct_change(value=volume, reference=reference),
        pct_change_nadir=pct_change(value=volume, reference=lowest),
        category=volume_response(volume_ml=volume, baseline_ml=reference, nadir_ml=lowest)
        if past and reference > 0
        else None,
        doubling_time=volume_doubling_time(
            volume1_ml=course.previous_volume[uid], volume2_ml=volume, interval_days=interval_days
        )
        if uid in course.previous_volume
        else None,
    )
    if volume > 0 or past:
        past.append(volume if evaluable else math.nan)
    return change


def _assessment(
    study: StudyReading,
    total: float,
    lesions: tuple[LesionVolumeChange, ...],
    course: _Course,
    *,
    is_baseline: bool,
    interval_days: int,
    new: bool,
) -> VolumetricAssessment:
    """The total burden at one study against the baseline total and the nadir (the
    smallest known total before it, on a study evaluable as a whole); a new lesion makes
    the category PD (RECIST 1.1 section 4.3.5)."""
    if is_baseline:
        burden = category = None
        baseline_total = lowest_total = total
    else:
        baseline_total = course.totals[0]
        finite = [t for t in course.totals if not math.isnan(t)]
        lowest_total = min(finite) if finite else math.nan
        burden = volume_response(volume_ml=total, baseline_ml=baseline_total, nadir_ml=lowest_total)
        category = "NE" if study.not_evaluable else ("PD" if new else burden)
    return VolumetricAssessment(
        study_uid=study.study_uid,
        study_date=study.study_date,
        is_baseline=is_baseline,
        total_volume_ml=total,
        baseline_volume_ml=baseline_total,
        nadir_volume_ml=lowest_total,
        pct_change_baseline=pct_change(value=total, reference=baseline_total),
        pct_change_nadir=pct_change(value=total, reference=lowest_total),
        burden_response=burden,
        category=category,
        new_lesions=new,
        doubling_time=None
        if is_baseline
        else volume_doubling_time(
            volume1_ml=course.previous_total, volume2_ml=total, interval_days=interval_days
        ),
        lesions=lesions,
    )


def responses_table_build(
    *, measurements: pd.DataFrame, slice_thickness_mm: float | None = None
) -> pd.DataFrame:
    """The ``export_responses`` table (`analytics.layouts.EXPORT_RESPONSE_COLUMNS`, then
    ``response_note``) from an ``export_measurements`` table.

    One row per study: RECIST sum of diameters and its changes (`recist_assess`), the
    total volume, the RECIST and volumetric categories (empty at baseline), whether a
    confirmed lesion absent at baseline is present, and what the category rests on.
    """
    rows = []
    for patient_id, timeline in timeline_from_measurements(measurements).items():
        recist = recist_assess(timeline=timeline, slice_thickness_mm=slice_thickness_mm)
        volumetric = volumetric_assess(timeline=timeline)
        for r, v in zip(recist, volumetric, strict=True):
            rows.append(
                (
                    patient_id,
                    r.study_uid,
                    r.study_date,
                    r.sum_diameters_mm,
                    v.total_volume_ml,
                    r.pct_change_baseline,
                    r.pct_change_nadir,
                    r.category,
                    v.category,
                    r.new_lesions,
                    "; ".join(r.notes),
                )
            )
    return pd.DataFrame(rows, columns=[*EXPORT_RESPONSE_COLUMNS, "response_note"])
