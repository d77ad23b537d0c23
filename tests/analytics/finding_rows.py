"""Rows with every kind of finding the response rules know, beside `tests.api.helpers.rows_make`:
a lesion not found at the follow-up, one merged into the followed lesion, one rejected
for the whole identity (rejected at baseline, unreviewed at the follow-up), a lymph node
measured by hand (no volume) and a lesion a radiologist says is too small to measure.
Shared by the FHIR, HL7 and risk tests, which must each say none of these as a measured 0."""

from __future__ import annotations

from dataclasses import dataclass

from imaging.models import Lesion, LesionMeasurement, ManualFinding
from tests.api.helpers import Rows
from tests.imaging.factories import LesionFactory, LesionMeasurementFactory

NOT_FOUND_REASON = (
    "not found at this study: a radiologist must confirm it gone, mark it too small to "
    "measure, or measure it by hand; until then the time point is not evaluable"
)


@dataclass
class FindingRows:
    not_found: LesionMeasurement
    merged: LesionMeasurement
    rejected_baseline: LesionMeasurement
    rejected_followup: LesionMeasurement
    node: LesionMeasurement
    too_small: LesionMeasurement


def finding_rows_make(rows: Rows) -> FindingRows:
    """Add the findings to ``rows`` (Alice's baseline and follow-up); all are targets
    where that matters, so that a message listing target lesions meets each."""
    alice, baseline, followup = rows.alice, rows.baseline, rows.followup

    def lesion(label: str, organ: str = Lesion.Organ.LIVER) -> Lesion:
        return LesionFactory(patient=alice, label=label, organ=organ)

    def at(lesion_row: Lesion, study, **fields) -> LesionMeasurement:
        defaults = {"status": "tracked", "review_state": "accepted", "is_target": True}
        return LesionMeasurementFactory(lesion=lesion_row, study=study, **{**defaults, **fields})

    missed = lesion("Liver 3")
    at(missed, baseline, status="new", volume_ml=2.0, longest_diameter_mm=14.0)
    not_found = at(
        missed, followup, status="not_found", finding_state="not_found",
        state_reason=NOT_FOUND_REASON, review_state="pending", volume_ml=0.0,
        longest_diameter_mm=0.0, short_axis_mm=0.0,
    )  # fmt: skip
    absorbed = lesion("Liver 4")
    at(absorbed, baseline, status="new", volume_ml=1.5, longest_diameter_mm=12.0)
    merged = at(
        absorbed, followup, status="merged", merged_into=rows.lesion, volume_ml=0.0,
        longest_diameter_mm=0.0, short_axis_mm=0.0,
        state_reason="merged into Liver 1: measured as part of it",
    )  # fmt: skip
    false = lesion("Liver 5")
    reason = "rejected as not a lesion by a radiologist; the rejection holds at every study"
    rejected_baseline = at(
        false, baseline, status="new", review_state="rejected", finding_state="rejected",
        state_reason=reason, volume_ml=0.9, longest_diameter_mm=11.0,
    )  # fmt: skip
    rejected_followup = at(
        false, followup, review_state="pending", finding_state="rejected", state_reason=reason,
        volume_ml=1.1, longest_diameter_mm=12.5,
    )  # fmt: skip
    node_lesion = lesion("Node 1", Lesion.Organ.LYMPH_NODE)
    finding = ManualFinding.objects.create(
        patient=alice, study=followup, lesion_uid=node_lesion.tracking_uid, label="Node 1",
        organ=Lesion.Organ.LYMPH_NODE, longest_diameter_mm=22.0, short_axis_mm=16.0,
        volume_ml=None, reason="a node the segmenter does not find",
    )  # fmt: skip
    node = at(
        node_lesion, followup, status="new", volume_ml=None, longest_diameter_mm=22.0,
        short_axis_mm=16.0, manual_finding=finding, segmentation=None, component_label=None,
        confidence=None,
    )  # fmt: skip
    small = lesion("Liver 6")
    at(small, baseline, status="new", volume_ml=0.6, longest_diameter_mm=10.5)
    too_small = at(
        small, followup, status="tracked", too_small=True, review_state="edited",
        volume_ml=0.0, longest_diameter_mm=0.0, short_axis_mm=0.0,
    )  # fmt: skip
    return FindingRows(
        not_found=not_found, merged=merged, rejected_baseline=rejected_baseline,
        rejected_followup=rejected_followup, node=node, too_small=too_small,
    )  # fmt: skip
