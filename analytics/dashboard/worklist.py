"""Reads for the worklist: every patient ordered by risk, with the flags a nurse acts on.

`worklist` and `worklist_page` give one typed row per patient with the latest risk
score of the current model version, the latest response and study, and the flags (new
progression, new lesion, rising marker, failed processing, awaiting review, needs
attention), in a fixed number of queries whatever the number of patients. The score and
the flags are read from rows kept in step when what they rest on is written
(`LatestRiskScore`, `WorklistFlags` via `analytics.dashboard.flags`), so every filter and
order is a join and an index, never a lookup per patient.
"""

from __future__ import annotations

import datetime as dt
import enum
import math
from collections.abc import Collection
from dataclasses import dataclass

from django.db.models import (
    CharField,
    DateField,
    F,
    FilteredRelation,
    FloatField,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
)
from django.db.models.functions import Coalesce

from analytics.dashboard.flags import markers_from_json
from analytics.dashboard.markers import MarkerChange
from analytics.models import UNSCORED_RANK, RiskModelVersion, RiskScore
from analytics.risk.selectors import current_model_version
from patients.models import ClinicalEvent, Patient
from patients.selectors import patient_search_filter

FLAG_NAMES = (
    "new_progression",
    "new_lesion",
    "rising_marker",
    "processing_failed",
    "awaiting_review",
    "needs_attention",
)


class WorklistOrder(enum.StrEnum):
    RISK = "risk"  # tier high -> intermediate -> low -> unscored, then score, highest first
    PATIENT = "patient"  # MRN
    LAST_STUDY = "last_study"  # most recent CT study first


@dataclass(frozen=True)
class WorklistRow:
    """One patient on the worklist.

    Risk: the latest `RiskScore` (by landmark date) of the model version the list was
    built for; ``score``, ``tier`` and ``landmark_date`` are None when unscored.

    Flags (stored per patient with the latest study, `analytics.dashboard.flags`):

    - ``new_progression``: the patient's latest response assessment is RECIST PD;
    - ``new_lesion``: the latest response assessment found a lesion absent at baseline;
    - ``rising_markers``: markers whose two latest results moved the wrong way by more
      than `MARKER_RULES` allows (CEA, LDH, CRP up; albumin, haemoglobin down), a
      censored result counting only as far as its bound proves (`markers.proven_change`);
    - ``processing_failed``: a series of the patient is in state failed;
    - ``awaiting_review``: a lesion measurement still awaits a radiologist's review (a
      lesion rejected as a whole awaits nothing);
    - ``needs_attention``: a study's response cannot be assessed (NE: a lesion not found,
      links proposed without registration, no segmentation) or waits on a person
      (equivocal new lesions, possible non-target progression): `ResponseAssessment.
      needs_attention`, with the reason in its note.
    """

    pk: int
    patient_id: str
    display_name: str
    model_version_id: int | None
    risk_score_id: int | None
    score: float | None
    tier: str | None
    landmark_date: dt.date | None
    last_recist: str
    last_assessment_date: dt.date | None
    last_study_date: dt.date | None
    new_progression: bool
    new_lesion: bool
    rising_markers: tuple[MarkerChange, ...]
    processing_failed: bool
    awaiting_review: bool
    needs_attention: bool = False
    died_on: dt.date | None = None

    @property
    def rising_marker(self) -> bool:
        return bool(self.rising_markers)

    @property
    def tier_label(self) -> str:
        if self.tier:
            return str(RiskScore.Tier(self.tier).label)
        # A patient who died is not ranked by risk (their scores go at the next
        # rescore): said as such, not as a score still to come.
        return f"Deceased {self.died_on:%Y-%m-%d}" if self.died_on else "Not scored"

    @property
    def flags(self) -> tuple[str, ...]:
        """The names (`FLAG_NAMES`) of the flags raised, in that order."""
        return tuple(name for name in FLAG_NAMES if getattr(self, name))


def _risk_columns(rows: QuerySet, version: RiskModelVersion | None) -> QuerySet:
    """Annotate the version's latest score of each patient, joined from `LatestRiskScore`.

    One LEFT JOIN on the (model version, patient) key: ordering every patient by tier
    and score needs no lookup per patient before the page is cut.
    """
    if version is None:
        return rows.annotate(
            risk_score_id=Value(None, output_field=IntegerField()),
            risk_score=Value(None, output_field=FloatField()),
            risk_tier=Value(None, output_field=CharField()),
            risk_landmark=Value(None, output_field=DateField()),
            tier_rank=Value(UNSCORED_RANK, output_field=IntegerField()),
        )
    return rows.annotate(
        current_risk=FilteredRelation(
            "latest_risk_scores", condition=Q(latest_risk_scores__model_version=version)
        )
    ).annotate(
        risk_score_id=F("current_risk__risk_score_id"),
        risk_score=F("current_risk__score"),
        risk_tier=F("current_risk__tier"),
        risk_landmark=F("current_risk__landmark_date"),
        tier_rank=Coalesce(
            F("current_risk__tier_rank"), Value(UNSCORED_RANK), output_field=IntegerField()
        ),
    )


def _detail_columns(rows: QuerySet) -> QuerySet:
    """Annotate the latest response and study and the flags: one join on `WorklistFlags`
    (a patient without a row has no study, response or lab result: no flag raised)."""
    return rows.annotate(
        last_recist=F("worklist_flags__last_recist"),
        last_assessment_date=F("worklist_flags__last_assessment_date"),
        flag_new_progression=F("worklist_flags__new_progression"),
        flag_new_lesion=F("worklist_flags__new_lesion"),
        flag_rising_markers=F("worklist_flags__rising_markers"),
        flag_awaiting_review=F("worklist_flags__awaiting_review"),
        flag_needs_attention=F("worklist_flags__needs_attention"),
        flag_processing_failed=F("worklist_flags__processing_failed"),
        last_study_date=F("worklist_flags__last_study_date"),
        died_on=Subquery(  # for the page's rows only: one subquery in the same query
            ClinicalEvent.objects.filter(patient=OuterRef("pk"), kind="death")
            .order_by("date")
            .values("date")[:1]
        ),
    )


def _ordered(rows: QuerySet, order: WorklistOrder, last_study: str) -> QuerySet:
    """Rows in the worklist's order; ``last_study`` names the latest study's column.
    MRNs are unique, so the order is total and the same in every query that applies it."""
    if order is WorklistOrder.RISK:
        if isinstance(rows.query.annotations.get("tier_rank"), Value):
            # No model yet, nobody scored: constants cannot be ordered on (PostgreSQL
            # refuses them in ORDER BY) and would not change the order anyway.
            return rows.order_by("patient_id")
        return rows.order_by("tier_rank", F("risk_score").desc(nulls_last=True), "patient_id")
    if order is WorklistOrder.LAST_STUDY:
        return rows.order_by(F(last_study).desc(nulls_last=True), "patient_id")
    return rows.order_by("patient_id")


def _worklist_query(
    *,
    tier: str | None,
    search: str,
    flags: Collection[str] | None,
    order: WorklistOrder | str,
    model_version: RiskModelVersion | None,
) -> tuple[QuerySet, RiskModelVersion | None]:
    """The matching patients in order, with the risk columns only (the filters and the
    order read the stored flags by a join), and the model version."""
    order = WorklistOrder(order)
    wanted = set(flags or ())
    unknown = wanted - set(FLAG_NAMES)
    if unknown:
        raise ValueError(f"unknown flags {sorted(unknown)}; known: {', '.join(FLAG_NAMES)}")
    if tier is not None and tier not in RiskScore.Tier.values:
        raise ValueError(f"tier must be one of {RiskScore.Tier.values}, not {tier!r}")
    version = model_version if model_version is not None else current_model_version()

    patients = Patient.objects.filter(patient_search_filter(search))
    rows = _risk_columns(patients, version)
    if tier is not None:
        rows = rows.filter(risk_tier=tier)
    # The flags are a join on their table (an INNER JOIN: no row, no flag raised).
    if wanted:
        rows = rows.filter(**{f"worklist_flags__{name}": True for name in sorted(wanted)})
    return _ordered(rows, order, "worklist_flags__last_study_date"), version


def _worklist_row(p: Patient, version: RiskModelVersion | None) -> WorklistRow:
    return WorklistRow(
        pk=p.pk,
        patient_id=p.patient_id,
        display_name=p.display_name,
        model_version_id=version.pk if version is not None else None,
        risk_score_id=p.risk_score_id,
        score=p.risk_score,
        tier=p.risk_tier,
        landmark_date=p.risk_landmark,
        last_recist=p.last_recist or "",
        last_assessment_date=p.last_assessment_date,
        last_study_date=p.last_study_date,
        new_progression=bool(p.flag_new_progression),
        new_lesion=bool(p.flag_new_lesion),
        rising_markers=markers_from_json(p.flag_rising_markers),
        processing_failed=bool(p.flag_processing_failed),
        awaiting_review=bool(p.flag_awaiting_review),
        needs_attention=bool(p.flag_needs_attention),
        died_on=p.died_on,
    )


def worklist(
    *,
    tier: str | None = None,
    search: str = "",
    flags: Collection[str] | None = None,
    order: WorklistOrder | str = WorklistOrder.RISK,
    model_version: RiskModelVersion | None = None,
) -> list[WorklistRow]:
    """The worklist: every patient matching the filters, with risk and flags.

    ``tier``: only that tier (low, intermediate or high). ``search``: words in the MRN
    or name, as the patient list. ``flags``: only patients with every one of these
    `FLAG_NAMES` raised. ``order``: a `WorklistOrder`. ``model_version``: whose scores
    to show (default `current_model_version`). Two queries (the version, the rows),
    however many patients.
    """
    rows, version = _worklist_query(
        tier=tier, search=search, flags=flags, order=order, model_version=model_version
    )
    return [_worklist_row(p, version) for p in _detail_columns(rows)]


@dataclass(frozen=True)
class WorklistPage:
    """One page of the worklist, and where it sits in the whole list."""

    rows: tuple[WorklistRow, ...]
    number: int
    per_page: int
    total: int
    model_version: RiskModelVersion | None

    @property
    def num_pages(self) -> int:
        return max(1, math.ceil(self.total / self.per_page))

    @property
    def has_previous(self) -> bool:
        return self.number > 1

    @property
    def has_next(self) -> bool:
        return self.number < self.num_pages

    @property
    def previous_page_number(self) -> int:
        return self.number - 1

    @property
    def next_page_number(self) -> int:
        return self.number + 1

    @property
    def start_index(self) -> int:
        """1-based position of the first row shown (0 on an empty list)."""
        return (self.number - 1) * self.per_page + 1 if self.rows else 0

    @property
    def end_index(self) -> int:
        return self.start_index + len(self.rows) - 1 if self.rows else 0


def worklist_page(
    *,
    page: int = 1,
    per_page: int = 50,
    tier: str | None = None,
    search: str = "",
    flags: Collection[str] | None = None,
    order: WorklistOrder | str = WorklistOrder.RISK,
    model_version: RiskModelVersion | None = None,
) -> WorklistPage:
    """One page of `worklist` (same filters and order), cut in the database.

    Three queries (model version, count, the page's rows) whatever the number of
    patients and whatever the filters: the list is filtered, ordered and cut on the
    risk columns and the stored flags (joins on `LatestRiskScore` and `WorklistFlags`),
    and the page's rows are read by one more join. ``page`` is clamped into range.
    """
    if per_page < 1:
        raise ValueError(f"per_page must be at least 1, not {per_page}")
    order = WorklistOrder(order)
    rows, version = _worklist_query(
        tier=tier, search=search, flags=flags, order=order, model_version=model_version
    )
    total = rows.count()
    number = _page_clamp(page, total, per_page)
    start = (number - 1) * per_page
    chosen = rows[start : start + per_page].values("pk")  # a subquery, not a query
    shown = _ordered(
        _detail_columns(_risk_columns(Patient.objects.filter(pk__in=chosen), version)),
        order,
        "last_study_date",
    )
    return WorklistPage(
        rows=tuple(_worklist_row(p, version) for p in shown),
        number=number,
        per_page=per_page,
        total=total,
        model_version=version,
    )


def _page_clamp(page: int, total: int, per_page: int) -> int:
    last = max(1, math.ceil(total / per_page))
    return min(max(1, page), last)
