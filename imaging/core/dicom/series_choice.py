"""Choose the one series of a study to analyse, by stated rules, with reasons for all.

The chooser is pure: it reads `SeriesSummary` records (built from headers by
`volume.series_summary` or from the index) and returns a `SeriesChoice` that
says which series won, which rules it won on, and on which rule each other series lost.
A user's override is honoured and recorded next to what the rules would have chosen.

Rules, applied in this order as successive filters (a series leaves the contest at
the first rule on which it is worse than the best one still in it):

1. Eligible: Modality (0008,0060) CT, not a localizer (Image Type (0008,0008) value 3
   LOCALIZER, PS3.3 C.8.2.1.1.1), a known image plane, at least `MIN_SLICES` slices.
2. Axial acquisition plane (normal of Image Orientation (Patient) (0020,0037) within
   30 degrees of the patient's head-foot axis, so tilted-gantry axials count as axial).
3. Soft-tissue reconstruction kernel (Convolution Kernel (0018,1210)) over unknown
   kernels over sharp (lung / bone) kernels; see `kernel_class`.
4. Near-full coverage: at least `COVERAGE_FRACTION` of the widest remaining series'
   extent along the slice normal. This guard stops a thin targeted reconstruction of
   one organ beating the whole-body series on rule 5; it is stated in every choice's
   reasons.
5. Slice thickness (0018,0050) at or under `MAX_SLICE_THICKNESS_MM` (5 mm).
6. Thinnest slices (thickness; the spacing between positions when the thickness is
   missing), equal within `THICKNESS_TIE_MM`.
7. Most coverage (mm along the slice normal), equal within `COVERAGE_TIE_MM`.
8. Ties: more slices, then lower Series Number (0020,0011), then Series Instance UID.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

ImagePlane = Literal["axial", "coronal", "sagittal", "oblique", "unknown"]
KernelClass = Literal["soft_tissue", "unknown", "sharp"]

MAX_SLICE_THICKNESS_MM = 5.0
MIN_SLICES = 10
COVERAGE_FRACTION = 0.9
THICKNESS_TIE_MM = 0.01
COVERAGE_TIE_MM = 1.0
PLANE_TOLERANCE_DEG = 30.0


class NoEligibleSeriesError(ValueError):
    """No series of the study can be analysed; ``str(exc)`` lists why each was excluded."""


@dataclass(frozen=True)
class SeriesSummary:
    """What the chooser needs to know about one series (lengths in mm)."""

    series_instance_uid: str
    modality: str
    plane: ImagePlane
    convolution_kernel: str = ""
    slice_thickness_mm: float | None = None
    slice_spacing_mm: float | None = None
    coverage_mm: float | None = None
    n_slices: int = 0
    description: str = ""
    image_type: tuple[str, ...] = ()
    series_number: int | None = None

    @property
    def is_localizer(self) -> bool:
        return "LOCALIZER" in (value.upper() for value in self.image_type)

    @property
    def effective_thickness_mm(self) -> float | None:
        """How finely the series samples the body along the slice direction: the slice
        thickness, or the spacing between positions when that is larger (thin slices far
        apart leave the gap between them unimaged: 1 mm slices every 10 mm are not a
        thin series), or the spacing alone when no thickness is given."""
        values = [v for v in (self.slice_thickness_mm, self.slice_spacing_mm) if v]
        return max(values) if values else None

    def label(self) -> str:
        """A short human name: number, description and UID."""
        number = f"#{self.series_number} " if self.series_number is not None else ""
        description = f"'{self.description}' " if self.description else ""
        return f"series {number}{description}({self.series_instance_uid})"


@dataclass(frozen=True)
class RejectedSeries:
    series: SeriesSummary
    rule: str
    reason: str


@dataclass(frozen=True)
class SeriesChoice:
    """The chosen series, why it won, and why each other lost.

    When ``overridden`` is true ``chosen`` is the user's pick and ``automatic`` what the
    rules would have chosen (None when the rules found no eligible series).
    """

    chosen: SeriesSummary
    reasons: tuple[str, ...]
    rejected: tuple[RejectedSeries, ...]
    overridden: bool = False
    override_reason: str = ""
    automatic: SeriesSummary | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def as_record(self) -> dict:
        """A JSON-ready description for the processing run record."""
        return {
            "chosen_series_instance_uid": self.chosen.series_instance_uid,
            "reasons": list(self.reasons),
            "rejected": [
                {
                    "series_instance_uid": r.series.series_instance_uid,
                    "rule": r.rule,
                    "reason": r.reason,
                }
                for r in self.rejected
            ],
            "overridden": self.overridden,
            "override_reason": self.override_reason,
            "automatic_series_instance_uid": (
                self.automatic.series_instance_uid if self.automatic else None
            ),
            "warnings": list(self.warnings),
        }


def image_plane(*, row_cosine: Iterable[float], column_cosine: Iterable[float]) -> ImagePlane:
    """The acquisition plane from Image Orientation (Patient) (0020,0037) cosines (LPS).

    The slice normal (row x column) within `PLANE_TOLERANCE_DEG` of the S axis is axial,
    of the P axis coronal, of the L axis sagittal; anything else is oblique.
    """
    r = [float(v) for v in row_cosine]
    c = [float(v) for v in column_cosine]
    normal = (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])
    norm = math.sqrt(sum(v * v for v in normal))
    if norm < 1e-6:
        return "unknown"
    limit = math.cos(math.radians(PLANE_TOLERANCE_DEG))
    planes: tuple[tuple[int, ImagePlane], ...] = ((2, "axial"), (1, "coronal"), (0, "sagittal"))
    for axis, plane in planes:
        if abs(normal[axis]) / norm >= limit:
            return plane
    return "oblique"


# Kernel names by vendor (from the vendors' CT reconstruction kernel lists): GE names
# the use (STANDARD, SOFT, DETAIL, LUNG, BONE, BONEPLUS, EDGE, CHEST, ULTRA), Siemens a
# letter then a sharpness number (B/Br/I/Q/J/H then 10-89), Philips letters (A-C
# smooth, D-E and L sharp), Canon/Toshiba FC numbers (FC01-FC18 body, higher sharper).
_SHARP_KERNEL_WORDS = ("LUNG", "BONE", "SHARP", "DETAIL", "EDGE", "HIGH", "ULTRA", "CHEST")
_SOFT_KERNEL_WORDS = ("STANDARD", "SOFT", "SMOOTH", "BODY", "STND")
# A series description names the body region too ("CHEST ABDOMEN"), so fewer words count.
_SHARP_DESCRIPTION_WORDS = ("LUNG", "BONE", "SHARP", "DETAIL", "EDGE")
_SOFT_DESCRIPTION_WORDS = ("SOFT", "STANDARD", "MEDIASTIN", "PORTAL", "VENOUS")
_SIEMENS = re.compile(r"^[BIQHJTD][A-Z]?(\d{2})[A-Z]?\b")
_CANON = re.compile(r"^FC(\d{2})")
_PHILIPS = re.compile(r"^([A-E]|EB|L)$")


def kernel_class(*, convolution_kernel: str, description: str = "") -> KernelClass:
    """Classify a reconstruction kernel as soft tissue, sharp (lung or bone) or unknown.

    ``convolution_kernel`` is Convolution Kernel (0018,1210) (values joined with '\\'
    when multi-valued); ``description`` is Series Description (0008,103E), used only
    when the kernel name says nothing.
    """
    kernel = convolution_kernel.upper().strip()
    first = kernel.split("\\")[0].strip()
    if match := _SIEMENS.match(first):
        return "soft_tissue" if int(match.group(1)) <= 45 else "sharp"
    if match := _CANON.match(first):
        return "soft_tissue" if int(match.group(1)) <= 18 else "sharp"
    if _PHILIPS.match(first):
        return "soft_tissue" if first in ("A", "B", "C") else "sharp"
    for text, sharp, soft in (
        (kernel, _SHARP_KERNEL_WORDS, _SOFT_KERNEL_WORDS),
        (description.upper(), _SHARP_DESCRIPTION_WORDS, _SOFT_DESCRIPTION_WORDS),
    ):
        if any(word in text for word in sharp):
            return "sharp"
        if any(word in text for word in soft):
            return "soft_tissue"
    return "unknown"


def _ineligibility(series: SeriesSummary) -> str | None:
    if series.modality.upper() != "CT":
        return f"modality is {series.modality or 'missing'}, not CT"
    if series.is_localizer:
        return "a localizer (Image Type LOCALIZER)"
    projection = sorted(_PROJECTIONS & {value.upper() for value in series.image_type})
    if projection:
        # A maximum or minimum intensity projection shows the brightest or darkest voxel
        # of a slab: neither its HU nor its edges are the lesion's.
        return f"an intensity projection (Image Type {', '.join(projection)}), not slices"
    if series.plane == "unknown":
        return "image orientation is missing or unreadable"
    if series.n_slices < MIN_SLICES:
        return f"only {series.n_slices} slices (at least {MIN_SLICES} needed)"
    return None


#: Image Type (0008,0008) values of intensity projections (PS3.3 C.8.16.1, C.7.6.1.1.2).
_PROJECTIONS = frozenset(
    {
        "MIP",
        "MINIP",
        "MAXIMUM INTENSITY PROJECTION",
        "MINIMUM INTENSITY PROJECTION",
        "PROJECTION IMAGE",
    }
)

_KERNEL_RANK = {"soft_tissue": 0, "unknown": 1, "sharp": 2}


def _kernel(series: SeriesSummary) -> KernelClass:
    return kernel_class(
        convolution_kernel=series.convolution_kernel, description=series.description
    )


def _fmt_mm(value: float | None) -> str:
    return "unknown" if value is None else f"{value:g} mm"


@dataclass(frozen=True)
class _Rule:
    name: str
    statement: str
    # Keep the series whose score is within `tie` of the best (lowest) score.
    score: Callable[[SeriesSummary, Sequence[SeriesSummary]], float]
    tie: float
    describe: Callable[[SeriesSummary], str]


def _coverage(series: SeriesSummary) -> float:
    return series.coverage_mm if series.coverage_mm is not None else 0.0


def _thickness_text(series: SeriesSummary) -> str:
    """'slice thickness 2 mm', or what a gapped series really samples."""
    thickness, spacing = series.slice_thickness_mm, series.slice_spacing_mm
    if thickness and spacing and spacing > thickness + THICKNESS_TIE_MM:
        return f"slices of {_fmt_mm(thickness)} every {_fmt_mm(spacing)}"
    return f"slice thickness {_fmt_mm(series.effective_thickness_mm)}"


def _thickness(series: SeriesSummary) -> float:
    value = series.effective_thickness_mm
    return value if value is not None else math.inf


_RULES: tuple[_Rule, ...] = (
    _Rule(
        "axial",
        "axial acquisition",
        lambda s, _: 0.0 if s.plane == "axial" else 1.0,
        0.0,
        lambda s: f"plane {s.plane}",
    ),
    _Rule(
        "kernel",
        "soft-tissue reconstruction kernel preferred",
        lambda s, _: float(_KERNEL_RANK[_kernel(s)]),
        0.0,
        lambda s: f"kernel '{s.convolution_kernel}' is {_kernel(s).replace('_', ' ')}",
    ),
    _Rule(
        "original",
        "acquired images preferred over derived ones (reformats, virtual non-contrast, "
        "monoenergetic)",
        lambda s, _: 1.0 if s.image_type and s.image_type[0].upper() == "DERIVED" else 0.0,
        0.0,
        lambda s: f"Image Type {chr(92).join(s.image_type) or 'missing'}",
    ),
    _Rule(
        "near_full_coverage",
        f"covers at least {COVERAGE_FRACTION:.0%} of the widest candidate",
        lambda s, pool: (
            0.0 if _coverage(s) >= COVERAGE_FRACTION * max(_coverage(p) for p in pool) else 1.0
        ),
        0.0,
        lambda s: f"coverage {_fmt_mm(s.coverage_mm)}",
    ),
    _Rule(
        "thickness_limit",
        f"slices at or under {MAX_SLICE_THICKNESS_MM:g} mm",
        lambda s, _: 0.0 if _thickness(s) <= MAX_SLICE_THICKNESS_MM + THICKNESS_TIE_MM else 1.0,
        0.0,
        lambda s: _thickness_text(s),
    ),
    _Rule(
        "thinnest",
        "thinnest slices",
        lambda s, _: _thickness(s),
        THICKNESS_TIE_MM,
        lambda s: _thickness_text(s),
    ),
    _Rule(
        "coverage",
        "most coverage",
        lambda s, _: -_coverage(s),
        COVERAGE_TIE_MM,
        lambda s: f"coverage {_fmt_mm(s.coverage_mm)}",
    ),
    _Rule(
        "more_slices",
        "more slices (tie-break)",
        lambda s, _: -float(s.n_slices),
        0.0,
        lambda s: f"{s.n_slices} slices",
    ),
    _Rule(
        "series_number",
        "lower series number (tie-break)",
        lambda s, _: float(s.series_number) if s.series_number is not None else math.inf,
        0.0,
        lambda s: f"series number {s.series_number}",
    ),
)


def _automatic(
    candidates: Sequence[SeriesSummary],
) -> tuple[SeriesSummary | None, list[str], list[RejectedSeries]]:
    rejected: list[RejectedSeries] = []
    pool: list[SeriesSummary] = []
    for series in candidates:
        why = _ineligibility(series)
        if why:
            rejected.append(RejectedSeries(series, "eligible", f"not eligible: {why}"))
        else:
            pool.append(series)
    if not pool:
        return None, [], rejected

    lost: list[tuple[_Rule, SeriesSummary]] = []
    deciding: list[_Rule] = []
    for rule in _RULES:
        scores = {id(s): rule.score(s, pool) for s in pool}
        best = min(scores.values())
        winners = [s for s in pool if scores[id(s)] <= best + rule.tie]
        losers = [s for s in pool if scores[id(s)] > best + rule.tie]
        lost += [(rule, s) for s in losers]
        if losers or rule.name in ("axial", "kernel", "thickness_limit"):
            deciding.append(rule)
        pool = winners
    # Deterministic last resort: the UID (reached only by exact duplicates of summaries).
    pool.sort(key=lambda s: s.series_instance_uid)
    chosen = pool[0]
    for rule, series in lost:
        rejected.append(
            RejectedSeries(
                series,
                rule.name,
                f"lost on '{rule.statement}': {rule.describe(series)} against "
                f"{rule.describe(chosen)}",
            )
        )
    for series in pool[1:]:
        rejected.append(
            RejectedSeries(series, "uid", "tied on every rule; lost on Series Instance UID order")
        )
    reasons = [f"eligible: CT, not a localizer, at least {MIN_SLICES} slices"]
    reasons += [f"{rule.statement}: {rule.describe(chosen)}" for rule in deciding]
    return chosen, reasons, rejected


def series_choose(
    *,
    candidates: Sequence[SeriesSummary],
    override_series_instance_uid: str | None = None,
    override_reason: str = "",
) -> SeriesChoice:
    """Choose the series to analyse among ``candidates`` (one study's series).

    With ``override_series_instance_uid`` that series is chosen whatever the rules say;
    the choice records the override, its reason, the series the rules would have
    chosen, and a warning when the override picks a series the rules exclude.
    Raises `NoEligibleSeriesError` when nothing is eligible and there is no override,
    and ValueError when the override names a series not among the candidates.
    """
    if not candidates:
        raise NoEligibleSeriesError("the study has no series")
    automatic, reasons, rejected = _automatic(candidates)

    if override_series_instance_uid is None:
        if automatic is None:
            lines = "; ".join(f"{r.series.label()}: {r.reason}" for r in rejected)
            raise NoEligibleSeriesError(f"no series can be analysed: {lines}")
        return SeriesChoice(chosen=automatic, reasons=tuple(reasons), rejected=tuple(rejected))

    by_uid = {s.series_instance_uid: s for s in candidates}
    if override_series_instance_uid not in by_uid:
        raise ValueError(
            f"override series {override_series_instance_uid} is not one of the study's "
            f"{len(candidates)} series"
        )
    chosen = by_uid[override_series_instance_uid]
    note = f"chosen by user override{f': {override_reason}' if override_reason else ''}"
    warnings: list[str] = []
    if why := _ineligibility(chosen):
        warnings.append(f"the override picks a series the rules exclude: {why}")
    if automatic is None:
        others = [r for r in rejected if r.series is not chosen]
        auto_text = "the rules found no eligible series"
    elif automatic is chosen:
        others = list(rejected)
        auto_text = "the rules choose the same series"
    else:
        others = [r for r in rejected if r.series is not chosen]
        others.append(RejectedSeries(automatic, "override", "the rules' choice, overridden"))
        auto_text = f"the rules would have chosen {automatic.label()}"
    return SeriesChoice(
        chosen=chosen,
        reasons=(note, auto_text),
        rejected=tuple(others),
        overridden=True,
        override_reason=override_reason,
        automatic=automatic,
        warnings=tuple(warnings),
    )
