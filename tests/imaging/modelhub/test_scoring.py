"""The arithmetic of a validation report and the promotion rule (no database)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from imaging.core.geometry.volume import Volume
from imaging.core.modelhub.compare import Margins, paired_volume_errors, regressions
from imaging.core.modelhub.scoring import (
    CandidateRow,
    calibration,
    report_metrics,
    study_score,
)
from imaging.core.modelhub.validation_set import (
    TruthLesion,
    ValidationCase,
    ValidationSetSpec,
    generated_cases,
    set_checksum,
    size_band,
)


@dataclass
class Found:
    """What `measure.LesionMeasurement` gives the scoring."""

    label_value: int
    organ: str
    volume_ml: float
    centroid_lps_mm: tuple[float, float, float]
    longest_axial_diameter_mm: float
    confidence: float


def _grid_case():
    """A 1 mm grid with a true 10 mm lesion drawn as candidate 1, a cyst with candidate 2
    on it, a missed lesion, and candidate 3 on nothing."""
    mask = np.zeros((40, 40, 40), dtype=np.uint16)
    k, j, i = np.mgrid[0:40, 0:40, 0:40]
    lesion = (i - 10) ** 2 + (j - 10) ** 2 + (k - 10) ** 2 <= 25
    mask[lesion] = 1
    mask[(i - 30) ** 2 + (j - 30) ** 2 + (k - 30) ** 2 <= 9] = 2
    mask[(i - 30) ** 2 + (j - 8) ** 2 + (k - 30) ** 2 <= 4] = 3
    grid = Volume(
        array=mask,
        spacing_mm=(1.0, 1.0, 1.0),
        origin_mm=(0.0, 0.0, 0.0),
        direction=np.eye(3),
        kind="label",
    )
    truths = (
        TruthLesion(
            "A", "liver", "left", "hypodense", False, lesion.sum() / 1000, (10.0, 10.0, 10.0), 10.0
        ),
        TruthLesion("B", "lung", "right", "solid", False, 0.5, (-5.0, 20.0, 20.0), 9.0),
        TruthLesion("C", "liver", "right", "simple_cyst", True, 0.1, (30.0, 30.0, 30.0), None),
    )

    def labels(g):
        out = np.zeros(g.array.shape, dtype=np.uint16)
        out[lesion] = 1
        return out

    case = ValidationCase("S1", "generated", grid, truths, {}, truth_labels=labels)
    found = [Found(1, "liver", 0.6, (10.2, 9.8, 10.0), 11.0, 0.97), Found(2, "liver", 0.1, (30, 30, 30), 6.0, 0.7),
             Found(3, "lung", 0.03, (8, 30, 30), 4.0, 0.55)]  # fmt: skip
    return case, found, grid


def test_one_study_is_matched_to_its_truth():
    case, found, grid = _grid_case()
    rows, candidates = study_score(case=case, lesions=found, candidate_mask=grid)
    by_id = {r.lesion_id: r for r in rows}
    assert set(by_id) == {"A", "B"}  # the cyst is a negative, not a lesion row
    assert by_id["A"].detected and not by_id["B"].detected
    assert by_id["A"].dice == pytest.approx(1.0)
    assert by_id["A"].volume_error == pytest.approx(
        abs(0.6 - case.truths[0].volume_ml) / case.truths[0].volume_ml
    )
    assert by_id["A"].diameter_error_mm == pytest.approx(1.0)
    assert [(c.label_value, c.true_lesion, c.on_negative) for c in candidates] == [
        (1, True, False), (2, False, True), (3, False, False)]  # fmt: skip


def test_report_metrics_count_per_organ_side_and_band():
    case, found, grid = _grid_case()
    rows, candidates = study_score(case=case, lesions=found, candidate_mask=grid)
    metrics = report_metrics(lesions=rows, candidates=candidates, seconds=[2.0])
    assert metrics["overall"]["sensitivity"] == pytest.approx(0.5)
    assert metrics["overall"]["fp_per_study"] == pytest.approx(2.0)
    assert metrics["fp_on_cysts"] == 1
    assert metrics["by_organ"]["liver"]["sensitivity"] == 1.0
    assert metrics["by_organ"]["lung"]["sensitivity"] == 0.0
    assert metrics["by_organ"]["lung"]["fp_per_study"] == 1.0
    bands = {
        (r["organ"], r["side"], r["band"]): r["detected"] for r in metrics["by_organ_side_band"]
    }
    assert bands == {
        ("liver", "left", size_band(case.truths[0].diameter_mm)): 1,
        ("lung", "right", "5-10"): 0,
    }


@pytest.mark.parametrize(
    ("diameter", "band"), [(3.0, "<5"), (5.0, "5-10"), (19.9, "10-20"), (20.0, ">=20")]
)
def test_size_bands(diameter, band):
    assert size_band(diameter) == band


def test_calibration_bins_ece_and_brier():
    rows = [CandidateRow("s", n, "lung", c, t, False)
            for n, (c, t) in enumerate([(0.95, True), (0.95, True), (0.95, False), (0.55, False)])]  # fmt: skip
    cal = calibration(rows)
    assert [(b["low"], b["n"], b["share_true"]) for b in cal["bins"]] == [
        (0.5, 1, 0.0),
        (0.9, 3, 2 / 3),
    ]
    assert cal["ece"] == pytest.approx(0.25 * 0.55 + 0.75 * abs(0.95 - 2 / 3))
    assert cal["brier"] == pytest.approx((0.05**2 * 2 + 0.95**2 + 0.55**2) / 4)


def _metrics(sens_lung, fp_lung, vol_lung, sens_liver=0.9, fp_liver=0.1, vol_liver=0.05):
    def group(s, f, v):
        return {"sensitivity": s, "fp_per_study": f, "volume_error_median": v}

    return {"overall": group(0.9, 0.2, 0.05),
            "by_organ": {"lung": group(sens_lung, fp_lung, vol_lung), "liver": group(sens_liver, fp_liver, vol_liver)}}  # fmt: skip


@pytest.mark.parametrize(
    ("candidate", "expected"),
    [
        (_metrics(0.895, 0.2, 0.05), []),  # 0.5 point less sensitive: within 1 point
        (_metrics(0.88, 0.2, 0.05), [("lung", "sensitivity")]),  # 2 points less
        (_metrics(0.9, 0.45, 0.05), [("lung", "fp_per_study")]),  # +0.25 FP per study
        (_metrics(0.9, 0.2, 0.08), [("lung", "volume_error_median")]),  # +3 points volume error
        (_metrics(0.9, 0.2, 0.05, vol_liver=0.065), []),  # +1.5 points: within 2
        (_metrics(0.95, 0.0, 0.01), []),  # better everywhere
        # the candidate measured nothing in the lung where the active model did: not a pass
        (_metrics(None, 0.2, None), [("lung", "sensitivity"), ("lung", "volume_error_median")]),
    ],
)
def test_the_promotion_rule_compares_every_organ_with_its_margins(candidate, expected):
    active = _metrics(0.9, 0.2, 0.05)
    found = regressions(candidate=candidate, active=active, margins=Margins())
    assert [(r["group"], r["measure"]) for r in found] == expected


def test_a_measure_neither_report_gives_is_not_compared():
    both_none = _metrics(None, 0.2, None)
    assert regressions(candidate=both_none, active=both_none, margins=Margins()) == []


def _row(case, lesion, organ, error, volume_ml=1.0, detected=True):
    return {"case_id": case, "lesion_id": lesion, "organ": organ, "volume_ml": volume_ml,
            "detected": detected, "volume_error": error if detected else None}  # fmt: skip


def test_measurement_is_compared_on_the_lesions_both_models_found():
    active_rows = [_row("s1", "E01", "liver", 0.10), _row("s1", "E02", "liver", 0.0, detected=False),
                   _row("s2", "E01", "lung", 0.08), _row("s2", "E02", "lung", 0.30, volume_ml=0.3)]  # fmt: skip
    # the candidate measures both shared lesions better, and finds a hard liver lesion
    # that it measures 60 % off: its own median rises, on the same lesions it falls
    candidate_rows = [_row("s1", "E01", "liver", 0.04), _row("s1", "E02", "liver", 0.60),
                      _row("s2", "E01", "lung", 0.02), _row("s2", "E02", "lung", 0.90, volume_ml=0.3)]  # fmt: skip

    paired = paired_volume_errors(candidate_rows, active_rows)

    assert paired == {
        "overall": {"lesions": 2, "candidate": pytest.approx(0.03), "active": pytest.approx(0.09)},
        "liver": {"lesions": 1, "candidate": pytest.approx(0.04), "active": pytest.approx(0.10)},
        "lung": {"lesions": 1, "candidate": pytest.approx(0.02), "active": pytest.approx(0.08)},
    }  # the 0.3 ml lesion is under the volume-error floor
    active = _metrics(0.9, 0.2, 0.08, vol_liver=0.10)
    candidate = _metrics(0.9, 0.2, 0.02, sens_liver=1.0, vol_liver=0.32)
    assert [
        r["measure"] for r in regressions(candidate=candidate, active=active, margins=Margins())
    ] == ["volume_error_median"]  # unpaired: refused for the lesion only the candidate found
    assert regressions(candidate=candidate, active=active, margins=Margins(), paired=paired) == []

    worse = paired_volume_errors([_row("s1", "E01", "liver", 0.20)], active_rows)
    found = regressions(candidate=candidate, active=active, margins=Margins(), paired=worse)
    assert [(r["group"], r["measure"]) for r in found] == [
        ("overall", "volume_error_median"),
        ("liver", "volume_error_median"),
    ]
    assert found[1]["candidate"] == pytest.approx(0.20) and found[1]["active"] == pytest.approx(
        0.10
    )
    assert "on the 1 lesion(s) both found" in found[1]["text"]


def test_margins_are_configurable_and_checked():
    tight = Margins.from_json({"sensitivity_points": 0.0})
    found = regressions(
        candidate=_metrics(0.895, 0.2, 0.05), active=_metrics(0.9, 0.2, 0.05), margins=tight
    )
    assert [r["measure"] for r in found] == ["sensitivity"]
    with pytest.raises(ValueError, match="unknown field"):
        Margins.from_json({"dice": 1})
    with pytest.raises(ValueError, match="cannot be negative"):
        Margins.from_json({"fp_per_study": -1})


def test_the_generated_set_is_fixed_by_its_seed_and_checksum(tmp_path):
    spec = ValidationSetSpec(name="test-set", seed=99, studies=1, size="small", thicknesses_mm=(5.0,),
                             lesion_counts=(1, 1, 1))  # fmt: skip
    first = generated_cases(spec=spec, cache_dir=tmp_path)
    again = generated_cases(spec=spec, cache_dir=tmp_path)  # read back from the cache
    assert set_checksum(first) == set_checksum(again)
    case = first[0]
    assert {t.organ for t in case.truths} == {"lung", "liver"}
    assert any(t.negative for t in case.truths)
    # The truth renders as a mask where the lesion is (Dice needs it).
    real = [n for n, t in enumerate(case.truths, start=1) if not t.negative]
    labels = case.truth_labels(case.volume)
    for n in real:
        centre = np.round(
            case.volume.lps_to_index(np.asarray(case.truths[n - 1].centre_lps_mm))
        ).astype(int)
        assert labels[centre[2], centre[1], centre[0]] == n
    other = generated_cases(spec=ValidationSetSpec(**{**spec.__dict__, "seed": 98}), cache_dir=None)
    assert set_checksum(other) != set_checksum(first)


def test_no_lesion_found_by_both_leaves_measurement_compared_on_each_models_own():
    assert (
        paired_volume_errors([_row("s1", "E01", "lung", 0.1)], [_row("s1", "E02", "lung", 0.1)])
        == {}
    )
    assert paired_volume_errors([], []) == {}
    found = regressions(candidate=_metrics(0.9, 0.2, 0.08), active=_metrics(0.9, 0.2, 0.05),
                        margins=Margins(), paired={})  # fmt: skip
    assert [(r["group"], r["measure"]) for r in found] == [("lung", "volume_error_median")]
