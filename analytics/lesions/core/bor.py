"""Best overall response over a patient's follow-ups (RECIST 1.1 and iRECIST).

RECIST 1.1 (Eisenhauer EA et al., Eur J Cancer 2009;45:228-247) section 4.4.3: the best
response recorded from the start of treatment until disease progression, PD being
terminal; with confirmation required (section 4.6.1, Table 3), a CR or PR counts only
when a repeat assessment at least 4 weeks later confirms it (`CONFIRMATION_DAYS`), and
stable disease only when it was met at least once a minimum interval after study entry,
"in general not less than 6-8 weeks" (`MIN_SD_DAYS`: RadTrack's default is 6 weeks,
42 days, the lower end; a site sets its protocol's value). Table 3, read as rules:

- CR then CR (>= 4 weeks apart, nothing but CR or NE between): CR;
- PR or CR then PR or CR (>= 4 weeks apart): PR (a CR followed by PR is the "original CR
  changed to PR" of Table 3's footnote);
- otherwise SD when a CR, PR or SD time point (non-CR/non-PD for a patient with
  non-target disease only, Table 2) is at least the minimum interval after baseline;
- otherwise PD when progression came (PD, or disease seen again after a CR); else NE.

Without confirmation (a randomised trial, section 4.6.1) the best category stands on
its own. Time points after the first PD are not considered.

iRECIST (Seymour L, Bogaerts J, Perrone A, et al. iRECIST: guidelines for response
criteria for use in trials testing immunotherapeutics. Lancet Oncol 2017;18:e143-e152):
the best time point response until iCPD, with the same confirmation of iCR and iPR; an
iUPD does not stop a later iSD, iPR or iCR from counting. Ranking: iCR, iPR, iSD (or
non-iCR/non-iUPD), then iCPD (progression confirmed), iUPD (not confirmed), NE.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from analytics.lesions.core.recist import CR, NE, NON_CR_NON_PD, PD, PR, SD

__all__ = [
    "CONFIRMATION_DAYS",
    "MIN_SD_DAYS",
    "BestResponse",
    "BestResponseSettings",
    "best_overall_response",
    "irecist_best_overall_response",
]

CONFIRMATION_DAYS = 28
MIN_SD_DAYS = 42


@dataclass(frozen=True)
class BestResponseSettings:
    """Confirmation interval, minimum stable-disease interval (days from baseline) and
    whether CR and PR need confirming."""

    confirmation_days: int = CONFIRMATION_DAYS
    min_sd_days: int = MIN_SD_DAYS
    require_confirmation: bool = True

    def as_dict(self) -> dict:
        return {
            "confirmation_days": self.confirmation_days,
            "min_sd_days": self.min_sd_days,
            "require_confirmation": self.require_confirmation,
        }


@dataclass(frozen=True)
class BestResponse:
    """A best overall response, the date of the time point it rests on (the first of a
    confirmed pair), the confirming date when there is one, and a sentence why."""

    category: str
    date: dt.date | None
    confirmed_on: dt.date | None
    note: str


Timepoint = tuple[dt.date, str]


def _considered(timepoints: Sequence[Timepoint], terminal: set[str]) -> list[Timepoint]:
    """Time points in date order up to and including the first terminal one."""
    out = []
    for when, category in sorted(timepoints, key=lambda t: t[0]):
        out.append((when, category))
        if category in terminal:
            break
    return out


def _confirmed(
    points: list[Timepoint],
    *,
    wanted: set[str],
    confirming: set[str],
    between: set[str],
    days: int,
) -> tuple[Timepoint, Timepoint] | None:
    """The first time point in ``wanted`` confirmed by a later one in ``confirming`` at
    least ``days`` later, with only ``between`` categories in between (section 4.6.1)."""
    for i, (start, category) in enumerate(points):
        if category not in wanted:
            continue
        for when, later in points[i + 1 :]:
            if later in confirming and (when - start).days >= days:
                return (start, category), (when, later)
            if later not in between:
                break
    return None


def best_overall_response(
    *,
    timepoints: Sequence[Timepoint],
    baseline_date: dt.date,
    settings: BestResponseSettings | None = None,
) -> BestResponse:
    """RECIST 1.1 best overall response from (date, category) per follow-up (module
    docstring); ``baseline_date`` is study entry for the stable-disease interval."""
    settings = settings or BestResponseSettings()
    points = _considered(timepoints, {PD})
    if not points:
        return BestResponse(NE, None, None, "no follow-up assessed yet")
    days = settings.confirmation_days
    if not settings.require_confirmation:
        return _best_unconfirmed(points, baseline_date, settings)
    cr = _confirmed(points, wanted={CR}, confirming={CR}, between={CR, NE}, days=days)
    if cr:
        return BestResponse(
            CR, cr[0][0], cr[1][0], f"CR confirmed on {cr[1][0]} ({days}+ days later)"
        )
    pr = _confirmed(points, wanted={PR, CR}, confirming={PR, CR}, between={PR, CR, NE}, days=days)
    if pr:
        return BestResponse(
            PR, pr[0][0], pr[1][0], f"PR confirmed on {pr[1][0]} ({days}+ days later)"
        )
    unconfirmed = next((p for p in points if p[1] in (CR, PR)), None)
    stable = _stable(points, baseline_date, settings)
    if stable is not None:
        note = f"{stable[1]} at least {settings.min_sd_days} days after baseline"
        if unconfirmed:
            note += f"; the {unconfirmed[1]} of {unconfirmed[0]} was not confirmed"
        return BestResponse(stable[1], stable[0], None, note)
    return _worst(points, settings, unconfirmed)


def _stable(
    points: list[Timepoint], baseline_date: dt.date, settings: BestResponseSettings
) -> tuple[dt.date, str] | None:
    """The first time point showing no progression the minimum interval after baseline:
    SD (non-CR/non-PD for non-target disease only, Table 2)."""
    for when, category in points:
        if (when - baseline_date).days < settings.min_sd_days:
            continue
        if category in (CR, PR, SD):
            return when, SD
        if category == NON_CR_NON_PD:
            return when, NON_CR_NON_PD
    return None


def _after_complete_response(points: list[Timepoint]) -> Timepoint | None:
    """The first time point after a CR that shows disease again (PR or SD): Table 3
    reads it as progression ("CR, SD: SD provided minimum criteria for SD duration
    met, otherwise PD"; after a true CR any disease seen again is PD)."""
    for i, (_, category) in enumerate(points):
        if category == CR:
            return next((p for p in points[i + 1 :] if p[1] in (PR, SD)), None)
    return None


def _worst(
    points: list[Timepoint], settings: BestResponseSettings, unconfirmed: Timepoint | None
) -> BestResponse:
    """PD when progression came before stable disease could count, else NE."""
    too_early = f"no stable disease at least {settings.min_sd_days} days after baseline"
    if unconfirmed:
        too_early += f"; the {unconfirmed[1]} of {unconfirmed[0]} was not confirmed"
    progression = next((p for p in points if p[1] == PD), None) or _after_complete_response(points)
    if progression is not None:
        return BestResponse(PD, progression[0], None, f"PD on {progression[0]}; {too_early}")
    return BestResponse(NE, None, None, too_early)


def _best_unconfirmed(
    points: list[Timepoint], baseline_date: dt.date, settings: BestResponseSettings
) -> BestResponse:
    """Without confirmation: the best category met, SD still needing its interval."""
    for wanted in (CR, PR):
        hit = next((p for p in points if p[1] == wanted), None)
        if hit:
            return BestResponse(wanted, hit[0], None, f"{wanted} on {hit[0]} (not confirmed)")
    stable = _stable(points, baseline_date, settings)
    if stable is not None:
        return BestResponse(
            stable[1],
            stable[0],
            None,
            f"{stable[1]} at least {settings.min_sd_days} days after baseline",
        )
    return _worst(points, settings, None)


# --------------------------------------------------------------------------- iRECIST
I_CR, I_PR, I_SD, I_UPD, I_CPD = "iCR", "iPR", "iSD", "iUPD", "iCPD"
NON_ICR_NON_IUPD = "non-iCR/non-iUPD"


def irecist_best_overall_response(
    *,
    timepoints: Sequence[Timepoint],
    baseline_date: dt.date,
    settings: BestResponseSettings | None = None,
) -> BestResponse:
    """iRECIST's best overall response (iBOR) from (date, i-category) per follow-up
    (module docstring): iCR and iPR confirmed as in RECIST 1.1, an iUPD between two
    responses does not stop the later one from counting, iCPD ends the course."""
    settings = settings or BestResponseSettings()
    points = _considered(timepoints, {I_CPD})
    if not points:
        return BestResponse(NE, None, None, "no follow-up assessed yet")
    mapped = [(when, _FROM_I.get(category, category)) for when, category in points]
    # iUPD is not terminal: it is read as NE between responses, so that it neither
    # confirms nor breaks the confirmation of a response around it.
    readable = [(when, NE if c == I_UPD else c) for when, c in mapped]
    best = best_overall_response(
        timepoints=[(w, c) for w, c in readable if c != I_CPD],
        baseline_date=baseline_date,
        settings=settings,
    )
    if best.category in (CR, PR, SD, NON_CR_NON_PD):
        return BestResponse(_TO_I[best.category], best.date, best.confirmed_on, best.note)
    confirmed = next((p for p in points if p[1] == I_CPD), None)
    if confirmed is not None:
        return BestResponse(
            I_CPD, confirmed[0], None, f"progression confirmed (iCPD) on {confirmed[0]}"
        )
    unconfirmed = next((p for p in points if p[1] == I_UPD), None)
    if unconfirmed is not None:
        return BestResponse(
            I_UPD, unconfirmed[0], None, f"unconfirmed progression (iUPD) on {unconfirmed[0]}"
        )
    return BestResponse(NE, None, None, best.note)


_FROM_I = {I_CR: CR, I_PR: PR, I_SD: SD, NON_ICR_NON_IUPD: NON_CR_NON_PD}
_TO_I = {CR: I_CR, PR: I_PR, SD: I_SD, NON_CR_NON_PD: NON_ICR_NON_IUPD}
