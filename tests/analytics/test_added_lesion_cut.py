"""A lesion a radiologist adds with one click where the scan ends across it (the
baseline's first slice cuts the nodule): segmented, not refused as a leak, stored with
the edge it reaches, and read as seen, its size not assessable, so it is no target."""

from __future__ import annotations

import numpy as np
import pytest

from imaging.core.geometry.nifti import volume_read_nifti, volume_write_nifti
from imaging.models import LesionMeasurement, ProcessingRun, Segmentation
from imaging.store import data_dir
from tests.analytics.correction_patient import MISSED, _rendered, correction_patient
from tests.analytics.test_lesion_corrections import _add, _client
from tests.patients.factories import UserFactory

pytestmark = pytest.mark.django_db


def _first_slices_removed(study, n: int) -> None:
    """The study's stored volume and label map without their first ``n`` slices, as if
    its scanned range began there."""
    run = ProcessingRun.objects.get(series=study.chosen_series)
    segmentation = Segmentation.objects.get(series=study.chosen_series)
    for relative, kind in ((run.volume_path, "scalar"), (segmentation.mask_path, "label")):
        path = data_dir() / relative
        whole = volume_read_nifti(path=path, kind=kind)
        origin = whole.index_to_lps(np.array([0.0, 0.0, float(n)]))
        part = type(whole)(array=np.ascontiguousarray(whole.array[n:]), spacing_mm=whole.spacing_mm,
                           origin_mm=tuple(origin), direction=whole.direction, kind=kind)  # fmt: skip
        volume_write_nifti(volume=part, path=path)


def test_a_nodule_added_where_the_scan_begins_across_it_is_stored_as_cut():
    case = correction_patient(patient_id="CUT-ADD-1", missed_at=(0,))
    baseline, follow_up = case.studies
    k_first = int(np.argwhere(_rendered(0).masks[MISSED])[:, 0].min())
    _first_slices_removed(baseline, k_first + 1)  # the range begins inside the nodule

    answer = _add(_client(UserFactory(groups=["radiologist"])), baseline, case.centres[0])

    assert answer.status_code == 201, answer.json()
    body = answer.json()
    rows = LesionMeasurement.objects.filter(lesion__tracking_uid=body["tracking_uid"])
    added = rows.get(study=baseline)
    assert added.origin == "added"
    assert added.edges_reached == ["scan_start"]
    assert added.finding_state == LesionMeasurement.FindingState.NOT_ASSESSABLE
    assert "edge of the scanned range (its first slice)" in added.state_reason
    assert not added.is_target
    candidate = next(
        c for c in Segmentation.objects.get(pk=added.segmentation_id).lesions
        if c["component_label"] == added.component_label
    )  # fmt: skip
    assert candidate["edges_reached"] == ["scan_start"]
    # the follow-up sees it whole: linked, its size read
    later = rows.get(study=follow_up)
    assert later.edges_reached == [] and later.finding_state != "not_assessable"
