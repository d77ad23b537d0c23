"""Spatial standardisation: catch studies whose orientation header contradicts the anatomy.

A CT header can put the patient's left on the right (a left-right flip), the head at
the feet (head-foot flip), or describe a prone acquisition as supine (which rotates the
patient 180 degrees about the long axis: left-right *and* anterior-posterior flip). The
voxels are what the scanner measured; what is wrong is the geometry that places them in
patient coordinates. `orientation_check` reads three anatomical facts in the header's
LPS coordinates (`anatomy.anatomy_landmarks`):

- the lungs lie above the abdomen (head-foot, S),
- the liver lies on the patient's right, the heart on the left (left-right, L),
- the spine lies behind the body's centre (anterior-posterior, P),

and, when a baseline study is given, which mirror image of the study registers best to
it (a quick rigid registration per candidate; `BaselineAgreement`).

Conservative by design: an axis counts as flipped only when its anatomical evidence is
beyond a threshold set at about a third of what a correct study shows (the heart may
veto the liver), and a baseline that prefers the header as it is vetoes the correction.
Without a baseline, a left-right contradiction read on the anatomy alone is corrected
and flagged, and its finding names the other reading, situs inversus or dextrocardia
under a correct header, which only a baseline or a person can tell from a mirrored one.
Correct headers in any patient position (HFS, FFS, HFP, FFP) put the anatomy in the
right place in LPS, so they pass unflagged.

`orientation_correct` fixes the header, not the voxels: the direction and origin are
mirrored about the body's centroid along each flipped axis (``direction' = F direction``,
``origin' = c + F (origin - c)``, F diagonal with -1 on flipped axes), so every voxel
keeps its value and lands where the anatomy says it is; the array is untouched, the
correction is exact and its own inverse. The true position along a flipped axis is
unknown, so the body stays centred where it was; registration to the baseline takes up
the rest. `preprocess.volume_reorient` afterwards gives the canonical array layout. A
mirror (odd number of flipped axes) leaves a left-handed direction matrix, as it must.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from imaging.core.geometry.preprocess import StepRecord, library_versions
from imaging.core.geometry.triples import IntVec3, ivec3
from imaging.core.geometry.volume import Volume
from imaging.core.registration.anatomy import AnatomyLandmarks, anatomy_landmarks, volume_coarse
from imaging.core.registration.sitk_backend import register_rigid_affine_sitk

Axis = Literal["left_right", "anterior_posterior", "head_foot"]
Verdict = Literal["consistent", "flipped", "inconclusive", "not_measured"]
AXES: tuple[Axis, ...] = ("left_right", "anterior_posterior", "head_foot")


@dataclass(frozen=True)
class FlipThresholds:
    """Evidence (mm) beyond which an axis counts as consistent or flipped.

    Measured on the synthetic cohort (`imaging.core.synthetic.cohort`, 16 studies in HFS, HFP and
    FFP, plus every position in the tests): lungs-above-abdomen 143..157 mm, liver right
    of centre 21..34 mm, spine behind centre 62..76 mm, heart left of the lungs' midpoint
    2..6 mm (weak: only a veto). Each threshold is about a third of the smallest correct
    value; `OrientationCheck.confidence` reaches 1 at three times the threshold.
    """

    head_foot_mm: float = 50.0
    liver_side_mm: float = 8.0
    heart_side_mm: float = 10.0
    spine_mm: float = 20.0
    #: Baseline NCC gain a flipped candidate needs over the header as it is to count as
    #: preferred (and the loss that counts as the baseline contradicting a flip).
    baseline_margin: float = 0.03


@dataclass(frozen=True)
class AxisFinding:
    """One axis: the evidence (positive agrees with the header), verdict and confidence."""

    axis: Axis
    evidence_mm: float | None
    threshold_mm: float
    verdict: Verdict
    confidence: float
    detail: str = ""


@dataclass(frozen=True)
class BaselineAgreement:
    """How the study, mirrored along candidate axes, matches the baseline after a rigid fit.

    ``scores`` maps a flip code (e.g. ``"LR+AP"``, ``"none"``) to the NCC inside the
    baseline's body; ``preferred`` is the best candidate, ``margin`` its NCC gain over
    ``"none"``.
    """

    scores: dict[str, float]
    preferred: str
    margin: float
    seconds: float


@dataclass(frozen=True)
class OrientationCheck:
    """Whether the header's orientation contradicts the anatomy, and what to do about it."""

    flip_lr: bool
    flip_ap: bool
    flip_hf: bool
    finding: str
    confidence: float
    needs_review: bool
    reasons: tuple[str, ...]
    axes: tuple[AxisFinding, ...]
    landmarks: AnatomyLandmarks
    baseline: BaselineAgreement | None = None

    @property
    def flipped(self) -> bool:
        return self.flip_lr or self.flip_ap or self.flip_hf

    @property
    def flips(self) -> tuple[int, int, int]:
        """Signs along (L, P, S): -1 where the header is mirrored."""
        return (-1 if self.flip_lr else 1, -1 if self.flip_ap else 1, -1 if self.flip_hf else 1)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"flipped": self.flipped, "flips": list(self.flips)}


def flip_code(flips: tuple[int, int, int]) -> str:
    names = [n for n, s in zip(("LR", "AP", "HF"), flips, strict=True) if s < 0]
    return "+".join(names) or "none"


#: What each combination of mirrored axes means at the scanner (L, P, S signs).
FINDINGS = {
    (1, 1, 1): "orientation consistent with anatomy",
    (-1, 1, 1): "left-right flipped",
    (1, -1, 1): "anterior-posterior flipped",
    (1, 1, -1): "head-foot flipped",
    (
        -1,
        -1,
        1,
    ): "prone labelled supine (or supine labelled prone): rotated 180 deg about the long axis",
    (
        -1,
        1,
        -1,
    ): "feet-first labelled head-first (or the reverse): rotated 180 deg about anterior-posterior",
    (
        1,
        -1,
        -1,
    ): "head-first supine labelled feet-first prone (or similar): rotated 180 deg about left-right",
    (-1, -1, -1): "mirrored through a point (all three axes flipped)",
}


#: Said of a left-right contradiction read on the anatomy alone (no baseline to compare
#: with): the liver on the left and the heart on the right are also what a patient with
#: situs inversus totalis (or dextrocardia) shows under a correct header.
SITUS_ALTERNATIVE = "or situs inversus / dextrocardia under a correct header"
SITUS_REASON = (
    "no baseline to compare with: the anatomy alone cannot tell a left-right mirrored "
    "header from a patient with situs inversus (or dextrocardia) under a correct header; "
    "if the patient has situs inversus, correcting left-right mirrors a correct study: "
    "confirm the patient's situs before the correction is relied on"
)


def _confidence(evidence: float | None, threshold: float) -> float:
    if evidence is None:
        return 0.0
    return round(float(np.clip(abs(evidence) / (3.0 * threshold), 0.0, 1.0)), 3)


def _verdict(evidence: float | None, threshold: float) -> Verdict:
    if evidence is None:
        return "not_measured"
    if evidence >= threshold:
        return "consistent"
    if evidence <= -threshold:
        return "flipped"
    return "inconclusive"


def _axis_findings(
    landmarks: AnatomyLandmarks, thresholds: FlipThresholds
) -> tuple[AxisFinding, ...]:
    liver = landmarks.liver_side_evidence_mm
    heart = landmarks.heart_side_evidence_mm
    verdict = _verdict(liver, thresholds.liver_side_mm)
    heart_verdict = _verdict(heart, thresholds.heart_side_mm)
    detail = f"liver {liver} mm, heart {heart} mm"
    decided = ("consistent", "flipped")
    if verdict in decided and heart_verdict in decided and heart_verdict != verdict:
        verdict, detail = "inconclusive", detail + ": liver and heart disagree"
    evidence, threshold = liver, thresholds.liver_side_mm
    if verdict == "not_measured" and heart_verdict != "not_measured":
        verdict, evidence, threshold = heart_verdict, heart, thresholds.heart_side_mm
        detail += ": heart only"
    lr = AxisFinding(
        "left_right", evidence, threshold, verdict, _confidence(evidence, threshold), detail
    )
    spine = landmarks.spine_evidence_mm
    ap = AxisFinding(
        "anterior_posterior",
        spine,
        thresholds.spine_mm,
        _verdict(spine, thresholds.spine_mm),
        _confidence(spine, thresholds.spine_mm),
        "spine behind the body centre",
    )
    hf_evidence = landmarks.head_foot_evidence_mm
    hf = AxisFinding(
        "head_foot",
        hf_evidence,
        thresholds.head_foot_mm,
        _verdict(hf_evidence, thresholds.head_foot_mm),
        _confidence(hf_evidence, thresholds.head_foot_mm),
        "lungs above the abdomen",
    )
    return (lr, ap, hf)


def volume_flip_header(
    *, volume: Volume, flips: tuple[int, int, int], centre_lps_mm: npt.ArrayLike | None = None
) -> Volume:
    """Mirror the volume's geometry along LPS axes where ``flips`` is -1, about ``centre_lps_mm``.

    The array is untouched; ``direction`` and ``origin`` change so each voxel moves to its
    mirror position (default centre: the volume's centre). Everything else the volume
    carries goes with it as it is (its kind, and its ``padding``, which is indexed like
    the untouched array). Its own inverse.
    """
    mirror = np.diag(np.asarray(flips, dtype=float))
    if not np.allclose(np.abs(np.diag(mirror)), 1.0):
        raise ValueError(f"flips must be +1 or -1 per axis; got {flips}")
    if centre_lps_mm is None:
        centre_lps_mm = volume.index_to_lps((np.asarray(volume.shape_ijk) - 1) / 2.0)
    centre = np.asarray(centre_lps_mm, dtype=float)
    return replace(
        volume,
        origin_mm=tuple(centre + mirror @ (np.asarray(volume.origin_mm) - centre)),
        direction=mirror @ volume.direction,
    )


def _candidates(
    axes: tuple[AxisFinding, ...], proposed: tuple[int, int, int]
) -> list[tuple[int, int, int]]:
    """The header as it is, the anatomy's proposal, and the proposal toggled along the
    left-right axis (the subtlest anatomical cue) and along any axis the anatomy is not
    sure of (confidence below 1)."""
    out: set[IntVec3] = {(1, 1, 1), proposed}
    for n, axis in enumerate(axes):
        if axis.axis == "left_right" or axis.confidence < 1.0:
            toggled = list(proposed)
            toggled[n] = -toggled[n]
            out.add(ivec3(toggled))
    return sorted(out, key=lambda f: (sum(s < 0 for s in f), f[::-1]))


def baseline_agreement(
    *,
    volume: Volume,
    baseline: Volume,
    candidates: list[tuple[int, int, int]],
    spacing_mm: float = 8.0,
) -> BaselineAgreement:
    """Rigidly register each mirrored candidate to the baseline; NCC per candidate.

    Works at ``spacing_mm`` (coarse: this asks which mirror image fits, not how well).
    """
    started = time.perf_counter()
    study = volume_coarse(volume=volume, spacing_mm=spacing_mm / 2)
    reference = volume_coarse(volume=baseline, spacing_mm=spacing_mm / 2)
    scores = {}
    for flips in candidates:
        mirrored = volume_flip_header(volume=study, flips=flips)
        result = register_rigid_affine_sitk(
            fixed=reference,
            moving=mirrored,
            rigid_levels_mm=(2 * spacing_mm, spacing_mm),
            affine_levels_mm=None,
            iterations=60,
            samples=10_000,
            start_search=False,
        )
        scores[flip_code(flips)] = result.quality.ncc
    ranked = sorted(scores.values(), reverse=True)
    preferred = max(scores, key=lambda code: scores[code])
    return BaselineAgreement(
        scores=scores,
        preferred=preferred,
        margin=round(ranked[0] - ranked[1], 4) if len(ranked) > 1 else 0.0,
        seconds=round(time.perf_counter() - started, 3),
    )


def orientation_check(
    *,
    volume: Volume,
    baseline: Volume | None = None,
    thresholds: FlipThresholds | None = None,
) -> OrientationCheck:
    """Whether left-right, anterior-posterior or head-foot flips of the header are evident.

    ``baseline`` (the patient's baseline study, itself already checked) adds the
    agreement test. A flip is reported only with anatomical evidence beyond the
    thresholds on that axis and no contradiction from the baseline; ``needs_review`` is
    set when a flip is found, or when the anatomy and the baseline disagree. Without a
    baseline (a patient's first study), a left-right contradiction may be the patient's
    own mirror image (situs inversus, dextrocardia): the finding and the reasons name it
    (`SITUS_ALTERNATIVE`, `SITUS_REASON`) for the reviewer.
    """
    thresholds = thresholds or FlipThresholds()
    landmarks = anatomy_landmarks(volume=volume)
    axes = _axis_findings(landmarks, thresholds)
    proposed = ivec3(-1 if a.verdict == "flipped" else 1 for a in axes)
    disagreements: list[str] = []
    agreement = None
    if baseline is not None:
        agreement = baseline_agreement(
            volume=volume, baseline=baseline, candidates=_candidates(axes, proposed)
        )
        scores, code = agreement.scores, flip_code(proposed)
        if code != "none" and scores[code] < scores["none"] - thresholds.baseline_margin:
            disagreements.append(
                f"anatomy says {code} flipped but the baseline fits the header as it is better "
                f"(NCC {scores['none']:.3f} vs {scores[code]:.3f}); not corrected"
            )
            proposed, code = (1, 1, 1), "none"
        preferred = agreement.preferred
        if preferred != code and scores[preferred] > scores[code] + thresholds.baseline_margin:
            disagreements.append(
                f"the baseline fits the study best flipped {preferred} (NCC "
                f"{scores[preferred]:.3f} vs {scores[code]:.3f}); anatomy alone does not show it"
            )
    flips = proposed
    reasons = list(disagreements)
    if flips != (1, 1, 1):
        names = [a.axis for a, s in zip(axes, flips, strict=True) if s < 0]
        reasons.insert(0, f"{FINDINGS[flips]} (anatomy: {', '.join(names)} contradict the header)")
    mirror_unconfirmed = baseline is None and flips[0] < 0
    if mirror_unconfirmed:
        reasons.append(SITUS_REASON)
    confidence = min(a.confidence for a in axes)
    if agreement is not None and not disagreements and agreement.preferred == flip_code(flips):
        confidence = max(confidence, min(1.0, 0.5 + 5.0 * agreement.margin))
    elif disagreements:
        confidence = min(confidence, 0.5)
    return OrientationCheck(
        flip_lr=flips[0] < 0,
        flip_ap=flips[1] < 0,
        flip_hf=flips[2] < 0,
        finding=FINDINGS[flips]
        + ("; the baseline disagrees" if disagreements else "")
        + (f"; {SITUS_ALTERNATIVE}" if mirror_unconfirmed else ""),
        confidence=round(float(confidence), 3),
        needs_review=bool(reasons),
        reasons=tuple(reasons),
        axes=axes,
        landmarks=landmarks,
        baseline=agreement,
    )


@dataclass(frozen=True, eq=False)
class OrientationCorrection:
    """The corrected volume (header fixed, voxels untouched), what was done, and the flag."""

    volume: Volume
    record: StepRecord
    needs_review: bool
    check: OrientationCheck


def orientation_correct(*, volume: Volume, check: OrientationCheck) -> OrientationCorrection:
    """Apply ``check``'s flips to the header (about the body centroid); record and flag it.

    Without flips the volume is returned unchanged (still with a record). Any correction
    sets ``needs_review``: an automatic fix of a header is always shown to a person.
    """
    started = time.perf_counter()
    centre = check.landmarks.body_centroid_lps_mm
    if check.flipped:
        corrected = volume_flip_header(volume=volume, flips=check.flips, centre_lps_mm=centre)
    else:
        corrected = volume
    record = StepRecord(
        name="orientation_correct",
        parameters={
            "flips_lps": list(check.flips),
            "centre_lps_mm": list(centre) if centre is not None else None,
            "method": "mirror direction and origin about the body centroid; array untouched",
        },
        versions=library_versions(),
        seconds=time.perf_counter() - started,
        details={
            "finding": check.finding,
            "corrected": check.flipped,
            "confidence": check.confidence,
            "needs_review": check.needs_review or check.flipped,
            "reasons": list(check.reasons),
            "axes": [asdict(a) for a in check.axes],
            "baseline": asdict(check.baseline) if check.baseline else None,
            "direction_before": np.round(volume.direction, 6).tolist(),
            "direction_after": np.round(corrected.direction, 6).tolist(),
            "origin_before_mm": list(volume.origin_mm),
            "origin_after_mm": list(corrected.origin_mm),
        },
    )
    return OrientationCorrection(
        volume=corrected,
        record=record,
        needs_review=check.needs_review or check.flipped,
        check=check,
    )


def orientation_standardise(
    *, volume: Volume, baseline: Volume | None = None, thresholds: FlipThresholds | None = None
) -> OrientationCorrection:
    """`orientation_check` then `orientation_correct`: one step for the pipeline."""
    check = orientation_check(volume=volume, baseline=baseline, thresholds=thresholds)
    return orientation_correct(volume=volume, check=check)
