"""The series chooser: each rule decides on its own, reasons are given, overrides are kept."""

from __future__ import annotations

from dataclasses import replace

import pytest

from imaging.core.dicom.series_choice import (
    NoEligibleSeriesError,
    SeriesSummary,
    image_plane,
    kernel_class,
    series_choose,
)

BASE = SeriesSummary(
    series_instance_uid="1.2.3.1",
    modality="CT",
    plane="axial",
    convolution_kernel="STANDARD",
    slice_thickness_mm=2.5,
    slice_spacing_mm=2.5,
    coverage_mm=400.0,
    n_slices=161,
    description="AXIAL SOFT TISSUE",
    image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
    series_number=2,
)


def series(uid: str, **changes) -> SeriesSummary:
    """BASE changed; a thickness given alone is a contiguous series (spacing the same)."""
    if changes.get("slice_thickness_mm") and "slice_spacing_mm" not in changes:
        changes["slice_spacing_mm"] = changes["slice_thickness_mm"]
    return replace(BASE, series_instance_uid=uid, **changes)


def rejected_rules(choice) -> dict[str, str]:
    return {r.series.series_instance_uid: r.rule for r in choice.rejected}


@pytest.mark.parametrize(
    ("winner", "loser", "rule"),
    [
        (series("ct"), series("mr", modality="MR"), "eligible"),
        (
            series("ct"),
            series("scout", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")),
            "eligible",
        ),
        (series("ct"), series("few", n_slices=3), "eligible"),
        (
            series("slices", slice_thickness_mm=5.0),
            series(
                "mip", image_type=("DERIVED", "SECONDARY", "AXIAL", "MIP"), slice_thickness_mm=1.0
            ),
            "eligible",
        ),
        (
            series("acquired", slice_thickness_mm=2.5),
            series(
                "vnc", image_type=("DERIVED", "PRIMARY", "AXIAL", "VNC"), slice_thickness_mm=1.0
            ),
            "original",
        ),
        (series("axial"), series("coronal", plane="coronal", slice_thickness_mm=1.0), "axial"),
        (
            series("soft"),
            series("lung", convolution_kernel="LUNG", slice_thickness_mm=1.0),
            "kernel",
        ),
        (
            series("b30f", convolution_kernel="B30f"),
            series("b70f", convolution_kernel="B70f"),
            "kernel",
        ),
        (
            series("whole", slice_thickness_mm=2.5),
            series("liver only", slice_thickness_mm=0.625, coverage_mm=180.0),
            "near_full_coverage",
        ),
        (
            series("5mm", slice_thickness_mm=5.0),
            series("7mm", slice_thickness_mm=7.5),
            "thickness_limit",
        ),
        (
            series("1.25", slice_thickness_mm=1.25),
            series("2.5", slice_thickness_mm=2.5),
            "thinnest",
        ),
        (
            series("spacing 1", slice_thickness_mm=None, slice_spacing_mm=1.0),
            series("spacing 3", slice_thickness_mm=None, slice_spacing_mm=3.0),
            "thinnest",
        ),
        (
            # 1 mm slices every 10 mm sample the body at 10 mm, not 1.
            series("5 mm contiguous", slice_thickness_mm=5.0),
            series("1 mm every 10", slice_thickness_mm=1.0, slice_spacing_mm=10.0),
            "thickness_limit",
        ),
        (series("400", coverage_mm=400.0), series("370", coverage_mm=370.0), "coverage"),
        (series("more", n_slices=200), series("fewer", n_slices=161), "more_slices"),
        (series("s2", series_number=2), series("s5", series_number=5), "series_number"),
    ],
)
def test_each_rule_decides(winner, loser, rule):
    for candidates in ([winner, loser], [loser, winner]):
        choice = series_choose(candidates=candidates)
        assert choice.chosen is winner
        assert rejected_rules(choice) == {loser.series_instance_uid: rule}
        assert not choice.overridden


def test_rules_apply_in_order_and_explain_the_choice():
    candidates = [
        series("sag", plane="sagittal", slice_thickness_mm=0.6),
        series("lung 1mm", convolution_kernel="LUNG", slice_thickness_mm=1.0),
        series("soft 5mm", slice_thickness_mm=5.0),
        series("soft 1.25", slice_thickness_mm=1.25, convolution_kernel="SOFT"),
        series("soft 1.25 short", slice_thickness_mm=1.25, coverage_mm=390.0),
        series("scout", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), n_slices=1),
        series("mr", modality="MR"),
    ]
    choice = series_choose(candidates=candidates)

    assert choice.chosen.series_instance_uid == "soft 1.25"
    assert rejected_rules(choice) == {
        "scout": "eligible",
        "mr": "eligible",
        "sag": "axial",
        "lung 1mm": "kernel",
        "soft 5mm": "thinnest",
        "soft 1.25 short": "coverage",
    }
    text = " | ".join(choice.reasons)
    assert (
        "axial" in text
        and "soft-tissue" in text
        and "thinnest slices: slice thickness 1.25 mm" in text
    )
    lost = {r.series.series_instance_uid: r.reason for r in choice.rejected}
    assert lost["lung 1mm"] == (
        "lost on 'soft-tissue reconstruction kernel preferred': kernel 'LUNG' is sharp"
        " against kernel 'SOFT' is soft tissue"
    )
    assert "modality is MR" in lost["mr"]


def test_override_is_honoured_and_recorded():
    auto = series("thin", slice_thickness_mm=1.0)
    picked = series("thick", slice_thickness_mm=5.0)
    choice = series_choose(
        candidates=[auto, picked],
        override_series_instance_uid="thick",
        override_reason="thin series has motion artefact",
    )
    assert choice.chosen is picked and choice.overridden
    assert choice.automatic is auto
    assert choice.reasons[0] == "chosen by user override: thin series has motion artefact"
    assert "would have chosen series #2 'AXIAL SOFT TISSUE' (thin)" in choice.reasons[1]
    record = choice.as_record()
    assert record["overridden"] and record["automatic_series_instance_uid"] == "thin"
    assert record["override_reason"] == "thin series has motion artefact"
    assert {
        "series_instance_uid": "thin",
        "rule": "override",
        "reason": "the rules' choice, overridden",
    } in record["rejected"]


def test_override_of_an_excluded_series_warns_and_unknown_override_fails():
    mr = series("mr", modality="MR")
    choice = series_choose(candidates=[series("ct"), mr], override_series_instance_uid="mr")
    assert choice.chosen is mr
    assert choice.warnings == (
        "the override picks a series the rules exclude: modality is MR, not CT",
    )
    with pytest.raises(ValueError, match="not one of the study's 2 series"):
        series_choose(candidates=[series("ct"), mr], override_series_instance_uid="nope")


def test_no_eligible_series_says_why_for_each():
    with pytest.raises(NoEligibleSeriesError, match="modality is MR.*only 2 slices"):
        series_choose(candidates=[series("mr", modality="MR"), series("few", n_slices=2)])
    # ...but an override still works.
    choice = series_choose(
        candidates=[series("mr", modality="MR")], override_series_instance_uid="mr"
    )
    assert choice.automatic is None and "no eligible series" in choice.reasons[1]


@pytest.mark.parametrize(
    ("kernel", "description", "expected"),
    [
        ("STANDARD", "", "soft_tissue"),
        ("SOFT", "", "soft_tissue"),
        ("BONEPLUS", "", "sharp"),
        ("LUNG", "", "sharp"),
        ("B31f", "", "soft_tissue"),
        ("Br40d\\3", "", "soft_tissue"),
        ("Br64d", "", "sharp"),
        ("I70f\\3", "", "sharp"),
        ("FC08", "", "soft_tissue"),
        ("FC52", "", "sharp"),
        ("B", "", "soft_tissue"),
        ("L", "", "sharp"),
        ("YA", "", "unknown"),
        ("", "CHEST ABDOMEN 5mm", "unknown"),
        ("", "CHEST LUNG 1mm", "sharp"),
        ("", "ABDOMEN PORTAL", "soft_tissue"),
        ("CHEST", "CHEST SOFT", "sharp"),
        ("XYZ", "", "unknown"),
    ],
)
def test_kernel_classes(kernel, description, expected):
    assert kernel_class(convolution_kernel=kernel, description=description) == expected


@pytest.mark.parametrize(
    ("row", "column", "plane"),
    [
        ((1, 0, 0), (0, 1, 0), "axial"),
        ((-1, 0, 0), (0, -1, 0), "axial"),
        ((1, 0, 0), (0, 0.966, 0.259), "axial"),  # 15 degree gantry tilt
        ((1, 0, 0), (0, 0, -1), "coronal"),
        ((0, 1, 0), (0, 0, -1), "sagittal"),
        ((1, 0, 0), (0, 0.707, 0.707), "oblique"),
        ((0, 0, 0), (0, 0, 0), "unknown"),
    ],
)
def test_image_plane(row, column, plane):
    assert image_plane(row_cosine=row, column_cosine=column) == plane


def test_a_gapped_series_is_described_as_what_it_samples():
    gapped = series("gapped", slice_thickness_mm=1.0, slice_spacing_mm=10.0)
    choice = series_choose(candidates=[series("5mm", slice_thickness_mm=5.0), gapped])
    (lost,) = choice.rejected
    assert "slices of 1 mm every 10 mm" in lost.reason
