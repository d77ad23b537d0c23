"""Drift: what each processed study looked like to the model, and whether that changed.

Input statistics are read on the model grid (the study as the model is fed it: LPS,
resampled, HU), so training cases, validation studies and a site's studies are measured
alike: HU percentiles of the body (above -500 HU, largest component, filled), the lungs
(air inside the body in components of 100 ml or more, `registration.anatomy`) and the
liver (the model's own liver and liver-lesion labels); a noise estimate (the robust SD
of each axial slice's residual after its four neighbours' mean, in soft tissue, scaled
for white noise) and a texture measure, ``noise_correlation`` (the same estimate after
2 x 2 averaging over half the fine one: about 1 for white noise, higher for the
correlated noise of a soft kernel, lower for a sharp one). Output statistics: lesions
found, their mean confidence, the share under 0.9 confidence, and the share of the
study's findings that tracking left equivocal (filled in after tracking).

`drift_evaluate` compares one scanner/protocol group's last ``window`` studies with the
model's reference (its training and validation studies) and with the group's own first
``window`` studies, statistic by statistic, with the two-sample Kolmogorov-Smirnov test
(exact for these sizes; Bonferroni over the tests that have the data to run), and
reports a protocol that neither the reference nor the site had seen before. The model's
reference is as large as its locked set: the shipped set gives 8 values of an input
statistic (5 validation studies, 3 training cases) and 5 of an output statistic, fewer
than the window. A reference of at least ``min_reference`` values is tested as it is;
what cannot be tested (no reference, too small a reference, too few recent studies, or
sizes whose most extreme result could not reach the corrected level) is recorded as not
tested with the reason (`DriftTest`), never taken as "no drift".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage, stats

from imaging.core.registration.anatomy import body_lung_arrays

PERCENTILES = (5, 25, 50, 75, 95)
#: The numbers drift is tested on (flat names, see `flat_statistics`).
TESTED = (
    "noise_hu",
    "noise_correlation",
    "body_hu_p50",
    "lung_hu_p50",
    "liver_hu_p50",
    "mean_confidence",
    "lesions",
    "equivocal_share",
)
MAX_SAMPLE = 200_000
WHITE_NOISE_SCALE = 1.0 / np.sqrt(1.25)  # residual x - mean(4 neighbours) of white noise


def _percentiles(values: np.ndarray) -> dict[str, float] | None:
    if values.size < 20:
        return None
    if values.size > MAX_SAMPLE:
        values = values[:: int(np.ceil(values.size / MAX_SAMPLE))]
    return {
        f"p{p}": round(float(v), 2)
        for p, v in zip(PERCENTILES, np.percentile(values, PERCENTILES), strict=True)
    }


def _residual_sd(plane: np.ndarray, mask: np.ndarray) -> list[float]:
    """Robust SD of ``plane`` minus the mean of its four neighbours, inside ``mask``."""
    neighbours = (plane[:-2, 1:-1] + plane[2:, 1:-1] + plane[1:-1, :-2] + plane[1:-1, 2:]) / 4.0
    residual = (plane[1:-1, 1:-1] - neighbours)[mask[1:-1, 1:-1]]
    if residual.size < 50:
        return []
    mad = np.median(np.abs(residual - np.median(residual)))
    return [float(1.4826 * mad * WHITE_NOISE_SCALE)]


def noise_estimates(
    hu: np.ndarray, soft: np.ndarray, *, slices: int = 12
) -> tuple[float | None, float | None]:
    """(noise SD in HU, noise correlation) from up to ``slices`` axial slices."""
    ks = np.flatnonzero(soft.reshape(soft.shape[0], -1).sum(axis=1) > 200)
    if not len(ks):
        return None, None
    fine, coarse = [], []
    for k in ks[np.linspace(0, len(ks) - 1, min(slices, len(ks))).astype(int)]:
        plane, mask = hu[k].astype(np.float64), soft[k]
        fine += _residual_sd(plane, mask)
        h, w = (plane.shape[0] // 2) * 2, (plane.shape[1] // 2) * 2
        pooled = plane[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
        pooled_mask = mask[:h, :w].reshape(h // 2, 2, w // 2, 2).all(axis=(1, 3))
        coarse += _residual_sd(pooled, pooled_mask)
    if not fine:
        return None, None
    noise = float(np.median(fine))
    correlation = float(np.median(coarse)) / (noise / 2.0) if coarse and noise > 0 else None
    return round(noise, 3), None if correlation is None else round(correlation, 4)


def input_statistics(
    *, hu: np.ndarray, organ: np.ndarray | None, spacing_mm: Sequence[float]
) -> dict[str, Any]:
    """Input statistics of a study on the model grid (``organ``: the model's labels, RadTrack
    codes, or None). See the module docs."""
    hu = np.asarray(hu, dtype=np.float32)
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    body, lungs = body_lung_arrays(hu, voxel_ml)
    soft = ndimage.binary_erosion(body & ~lungs & (hu > -200) & (hu < 300), iterations=2)
    liver = np.isin(organ, (2, 4)) if organ is not None else np.zeros_like(body)
    noise, correlation = noise_estimates(hu, soft)
    return {
        "body_hu": _percentiles(hu[body]),
        "lung_hu": _percentiles(hu[lungs]),
        "liver_hu": _percentiles(hu[liver]),
        "body_ml": round(float(body.sum()) * voxel_ml, 1),
        "lung_ml": round(float(lungs.sum()) * voxel_ml, 1),
        "liver_ml": round(float(liver.sum()) * voxel_ml, 1),
        "noise_hu": noise,
        "noise_correlation": correlation,
    }


def output_statistics(*, confidences: Sequence[float]) -> dict[str, Any]:
    """Lesions found, their mean confidence and the share under 0.9 (equivocal share later)."""
    values = [float(c) for c in confidences]
    return {
        "lesions": len(values),
        "mean_confidence": round(float(np.mean(values)), 4) if values else None,
        "low_confidence_share": round(sum(c < 0.9 for c in values) / len(values), 4)
        if values
        else None,
        "equivocal_share": None,
    }


def flat_statistics(
    inputs: Mapping[str, Any], outputs: Mapping[str, Any]
) -> dict[str, float | None]:
    """The tested numbers of one study (`TESTED`) from its stored inputs and outputs."""

    def p50(key: str) -> float | None:
        block = inputs.get(key) or {}
        return block.get("p50")

    return {
        "noise_hu": inputs.get("noise_hu"),
        "noise_correlation": inputs.get("noise_correlation"),
        "body_hu_p50": p50("body_hu"),
        "lung_hu_p50": p50("lung_hu"),
        "liver_hu_p50": p50("liver_hu"),
        "mean_confidence": outputs.get("mean_confidence"),
        "lesions": outputs.get("lesions"),
        "equivocal_share": outputs.get("equivocal_share"),
    }


def thickness_band(thickness_mm: float | None) -> str:
    if thickness_mm is None:
        return "thickness unknown"
    if thickness_mm <= 1.5:
        return "slices <= 1.5 mm"
    return "slices 1.5-3 mm" if thickness_mm <= 3.0 else "slices > 3 mm"


def protocol_key(*, scanner: str, kernel: str, slice_thickness_mm: float | None) -> str:
    """The group a study's drift is followed in: scanner | kernel | slice thickness band."""
    return " | ".join(
        [scanner.strip() or "unknown scanner", kernel.strip() or "unknown kernel",
         thickness_band(slice_thickness_mm)]
    )  # fmt: skip


@dataclass(frozen=True)
class DriftFinding:
    """A new protocol, or one statistic of a group that shifted against a reference."""

    kind: str  # new_protocol | shift
    protocol: str
    statistic: str = ""
    reference: str = ""
    message: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _values(rows: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    return np.array([r[key] for r in rows if r.get(key) is not None], dtype=float)


@dataclass(frozen=True)
class DriftTest:
    """One statistic of one group against one reference: tested (``p_value``), or not
    tested and why (``reason``). ``shift``: tested and below ``alpha``."""

    statistic: str
    reference: str  # model | own_start
    tested: bool
    reason: str = ""
    n_recent: int = 0
    n_reference: int = 0
    p_value: float | None = None
    alpha: float | None = None
    shift: bool = False

    @property
    def text(self) -> str:
        if not self.tested:
            return f"not tested ({self.reason})"
        verdict = "shift" if self.shift else "no shift"
        return (f"{verdict}: KS p = {self.p_value:.2g} (level {self.alpha:.1e}), "
                f"{self.n_recent} recent against {self.n_reference} reference")  # fmt: skip

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "text": self.text}


@dataclass(frozen=True)
class DriftResult:
    """What the checks after one study found, and every test they ran or could not run."""

    findings: list[DriftFinding]
    tests: list[DriftTest]


REFERENCE_NAMES = {"model": "the model's reference studies"}


def smallest_p_value(n_recent: int, n_reference: int) -> float:
    """The smallest p-value the two-sample KS test can give for these sizes (the two
    samples wholly apart): below the level, or the test could never find anything."""
    return float(stats.ks_2samp(np.zeros(n_recent), np.ones(n_reference)).pvalue)


def _shift(
    *, protocol: str, key: str, recent: np.ndarray, reference: np.ndarray, name: str,
    alpha: float,
) -> tuple[DriftFinding | None, float]:  # fmt: skip
    if np.ptp(np.concatenate([recent, reference])) == 0:
        return None, 1.0
    result = stats.ks_2samp(recent, reference)
    if result.pvalue >= alpha:
        return None, float(result.pvalue)
    before, after = float(np.median(reference)), float(np.median(recent))
    return DriftFinding(
        kind="shift", protocol=protocol, statistic=key, reference=name,
        message=f"{key.replace('_', ' ')}: median {after:.3g} in the last {len(recent)} studies "
                f"against {before:.3g} in {name} (two-sample KS p = {result.pvalue:.1e})",
        detail={"ks": float(result.statistic), "p_value": float(result.pvalue), "alpha": alpha,
                "median_recent": after, "median_reference": before, "n_recent": len(recent),
                "n_reference": len(reference)},
    ), float(result.pvalue)  # fmt: skip


def _planned(
    *, key: str, history: Sequence[Mapping[str, Any]], reference: Mapping[str, Sequence[float]] | None,
    window: int, min_reference: int, no_reference: str,
) -> list[tuple[str, np.ndarray, np.ndarray, str]]:  # fmt: skip
    """(reference kind, recent values, reference values, why not testable or "")."""
    recent = _values(history[-window:], key)
    out = []
    if not reference:
        out.append(("model", recent, np.array([]), no_reference))
    else:
        values = np.asarray(reference.get(key) or [], dtype=float)
        values = values[np.isfinite(values)]
        why = ""
        if not len(values):
            why = "the reference has no value of it"
        elif len(values) < min_reference:
            why = f"reference n={len(values)} < {min_reference}"
        out.append(("model", recent, values, why))
    if len(history) >= 2 * window:
        out.append(("own_start", recent, _values(history[:window], key), ""))
    else:
        out.append(("own_start", recent, np.array([]),
                    f"{len(history)} studies of this protocol < {2 * window}: its first "
                    f"{window} and its last {window} do not yet make two samples"))  # fmt: skip
    return [
        (kind, r, v, why or (f"recent n={len(r)} < {window}" if len(r) < window else ""))
        for kind, r, v, why in out
    ]


def drift_evaluate(
    *,
    protocol: str,
    history: Sequence[Mapping[str, Any]],
    reference: Mapping[str, Sequence[float]] | None,
    known_protocols: set[str],
    window: int = 10,
    alpha: float = 0.01,
    min_reference: int = 5,
    no_reference: str = "the model has no reference statistics: it was never validated",
) -> DriftResult:
    """Findings for one group after a new study (``history``: its studies' flat statistics,
    oldest first, the new one last), and each test run or not run with why. The level is
    ``alpha`` over the number of tests that have their data (Bonferroni); a statistic
    that shifts against the model's reference is not reported again against the group's
    own start."""
    findings = []
    if len(history) == 1 and protocol not in known_protocols:
        findings.append(DriftFinding(
            kind="new_protocol", protocol=protocol,
            message=f"first study from {protocol}: neither the model's training and validation "
                    "studies nor this site's earlier studies came from it",
        ))  # fmt: skip
    plans = {key: _planned(key=key, history=history, reference=reference, window=window,
                           min_reference=min_reference, no_reference=no_reference)
             for key in TESTED}  # fmt: skip
    family = sum(not why for rows in plans.values() for *_, why in rows)
    corrected = alpha / max(family, 1)
    tests = []
    for key, rows in plans.items():
        found_one = False
        for kind, recent, values, why in rows:
            n_recent, n_reference = len(recent), len(values)
            if not why and smallest_p_value(n_recent, n_reference) >= corrected:
                why = (f"reference n={n_reference} and recent n={n_recent}: even wholly apart "
                       f"they could not reach p < {corrected:.1e}")  # fmt: skip
            if why:
                tests.append(DriftTest(statistic=key, reference=kind, tested=False, reason=why,
                                       n_recent=n_recent, n_reference=n_reference))  # fmt: skip
                continue
            name = REFERENCE_NAMES.get(kind, f"this protocol's first {window} studies")
            found, p_value = _shift(protocol=protocol, key=key, recent=recent, reference=values,
                                    name=name, alpha=corrected)  # fmt: skip
            tests.append(DriftTest(statistic=key, reference=kind, tested=True, n_recent=n_recent,
                                   n_reference=n_reference, p_value=p_value, alpha=corrected,
                                   shift=found is not None))  # fmt: skip
            if found is not None and not found_one:
                findings.append(found)
                found_one = True
    return DriftResult(findings=findings, tests=tests)


def drift_check(
    *,
    protocol: str,
    history: Sequence[Mapping[str, Any]],
    reference: Mapping[str, Sequence[float]] | None,
    known_protocols: set[str],
    window: int = 10,
    alpha: float = 0.01,
    min_reference: int = 5,
) -> list[DriftFinding]:
    """The findings of `drift_evaluate` alone."""
    return drift_evaluate(protocol=protocol, history=history, reference=reference,
                          known_protocols=known_protocols, window=window, alpha=alpha,
                          min_reference=min_reference).findings  # fmt: skip
