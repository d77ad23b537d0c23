"""Learning from corrections: reviewed studies become training examples with their
provenance, ``finetune_segmenter --from-reviews`` fine-tunes the active model on them
(original data mixed in), registers and validates the result; a study of the locked set
is never trained on; the labels follow the review (accepted lesion, rejected candidate,
added lesion drawn by hand)."""

from __future__ import annotations

from dataclasses import replace
from io import StringIO

import numpy as np
import pytest
from django.core.management import CommandError, call_command

from imaging.core.geometry.volume import Volume
from imaging.core.modelhub.corrections import Correction, reviewed_case, reviewed_labels
from imaging.core.segmentation.network import SegmenterSpec, manifest_read
from imaging.core.segmentation.training.patches import _patch_centre
from imaging.modelhub.models import SegmentationModel, TrainingExample
from imaging.modelhub.training import training_examples_sync
from imaging.models import LesionMeasurement, ManualFinding
from tests.imaging.modelhub.conftest import processed_phantom_study, review_all, tiny_active

pytestmark = pytest.mark.django_db


def _grid(array, kind="scalar"):
    return Volume(
        array=array,
        spacing_mm=(2.0, 2.0, 2.0),
        origin_mm=(0.0, 0.0, 0.0),
        direction=np.eye(3),
        kind=kind,
    )


def test_review_decisions_become_hard_labels():
    hu = np.zeros((10, 10, 10), dtype=np.float32)
    organs = np.full(hu.shape, 2, dtype=np.uint8)  # the model's liver everywhere
    organs[0:2] = 4  # and a liver lesion of its own that nobody confirmed
    mask = np.zeros(hu.shape, dtype=np.uint16)
    mask[4:6, 4:6, 4:6] = 1  # accepted
    mask[7:9, 7:9, 7:9] = 2  # rejected
    drawn = np.zeros(hu.shape, dtype=np.uint8)
    drawn[1:3, 6:8, 1:3] = 1  # missed by the model, drawn by the radiologist
    corrections = [Correction("accepted", "liver", 1), Correction("rejected", "liver", 2),
                   Correction("added", "lung", mask=_grid(drawn, "label"))]  # fmt: skip
    label, notes = reviewed_labels(image=_grid(hu), candidate_mask=_grid(mask, "label"),
                                   organ_label=_grid(organs, "label"), corrections=corrections)  # fmt: skip
    assert notes == []
    assert (label.array[4:6, 4:6, 4:6] == 4).all()  # a liver lesion
    assert (label.array[7:9, 7:9, 7:9] == 2).all()  # a hard negative: liver
    assert (label.array[1:3, 6:8, 1:3] == 3).all()  # a lung nodule, as drawn
    assert label.array[0, 0, 0] == 2  # the model's own lesion is not a lesion by itself
    with pytest.raises(
        ValueError, match=r"candidate\(s\) \[2\] of the segmentation have no review decision"
    ):
        reviewed_labels(image=_grid(hu), candidate_mask=_grid(mask, "label"),
                        organ_label=_grid(organs, "label"), corrections=corrections[:1])  # fmt: skip
    with pytest.raises(ValueError, match="needs its drawn mask"):
        reviewed_labels(image=_grid(hu), candidate_mask=_grid(mask, "label"), organ_label=_grid(organs, "label"),
                        corrections=[*corrections[:2], Correction("added", "liver")])  # fmt: skip


def test_examples_carry_provenance_and_say_why_one_is_left_out(tmp_path, tiny_sources, admin_user):
    tiny_active(tiny_sources)
    pending = processed_phantom_study(tmp_path, key="e1", patient_id="MH-E1")
    reviewed = processed_phantom_study(tmp_path, key="e2", patient_id="MH-E2")
    added = processed_phantom_study(tmp_path, key="e3", patient_id="MH-E3")
    LesionMeasurement.objects.filter(study=pending).update(review_state="pending")
    # A study becomes an example with its first review decision: the pending one is none.
    review_all(reviewed, admin_user, state="rejected")
    review_all(added, admin_user)
    ManualFinding.objects.create(patient=added.patient, study=added, lesion_uid="2.25.1", label="Node 1",
                                 organ="lymph_node", longest_diameter_mm=15, short_axis_mm=12, user=admin_user,
                                 reason="missed node")  # fmt: skip
    examples = {e.study_id: e for e in training_examples_sync()}
    assert set(examples) == {reviewed.pk, added.pk}
    ok = examples[reviewed.pk]
    assert ok.status == TrainingExample.Status.INCLUDED
    assert [c["kind"] for c in ok.corrections] == ["rejected"]
    assert ok.provenance["model"] == "tiny-a" and ok.provenance["reviewers"] == [
        admin_user.username
    ]
    assert ok.provenance["study_instance_uid"] == reviewed.study_instance_uid
    left_out = examples[added.pk]
    assert left_out.status == TrainingExample.Status.EXCLUDED
    assert "added by hand have no drawn mask" in left_out.reason


@pytest.mark.slow
def test_finetune_from_reviews_registers_validates_and_never_trains_on_the_locked_set(
    tmp_path, tiny_sources, settings, admin_user
):
    settings.RADTRACK_VALIDATION_SET = {"name": "site-only", "studies": 0}
    tiny_active(tiny_sources)
    locked = processed_phantom_study(tmp_path, key="f1", patient_id="MH-F1")
    train = processed_phantom_study(tmp_path, key="f2", patient_id="MH-F2", seed=3)
    review_all(locked, admin_user)
    review_all(train, admin_user)
    call_command("model_validation_set", f"--add={locked.study_instance_uid}", stdout=StringIO())
    # The shipped RadTrack weights are active again (fine-tuning starts from RadTrack weights).
    SegmentationModel.objects.filter(status="active").update(status="retired")
    SegmentationModel.objects.filter(name="lesionseg").update(status="active")
    with pytest.raises(CommandError, match="takes no DATA or --out"):
        call_command("finetune_segmenter", str(tmp_path), "--from-reviews", stdout=StringIO())

    out = StringIO()
    call_command("finetune_segmenter", "--from-reviews", "--steps=2", "--batch-size=1", "--patch-size=32",
                 "--original-cases=1", "--mining-steps=1", "--tuned-share=0.5", "--distill-weight=1",
                 "--quiet", stdout=out, stderr=StringIO())  # fmt: skip
    shipped = f"lesionseg-{manifest_read()['version']}"
    model = SegmentationModel.objects.get(version=f"{manifest_read()['version']}-ft1")
    assert out.getvalue().startswith(
        f"finetune_segmenter: {shipped}-ft1 from {shipped} on 1 reviewed"
    )
    assert model.parent.label == shipped and model.format == "radtrack"
    assert model.training["studies"] == [train.study_instance_uid]
    assert locked.study_instance_uid not in str(model.training)
    assert len(model.training["original_cases"]) == 1
    # the network's own false candidates on its training cases were mined, then 1 step more
    assert model.training["settings"]["mining_steps"] == 1
    assert isinstance(model.training["mined_false_candidates"], int)
    # and moved half-way back to the active model's weights
    assert model.training["settings"]["tuned_share"] == 0.5
    # with the active model's softmax kept where it agreed with the reviews
    assert model.training["settings"]["distill_weight"] == 1.0
    report = model.reports.get()
    assert report.compared_with.label == shipped
    assert [s["study_instance_uid"] for s in report.site_studies] == [locked.study_instance_uid]
    if report.passed:
        assert model.status == "candidate"
    else:  # regressed: retired at once, never active
        assert model.status == "retired" and model.events.filter(action="retire").exists()
    assert SegmentationModel.objects.get(status="active").label == shipped


def test_a_lesion_a_radiologist_drew_is_a_decision_until_rejected(
    tmp_path, tiny_sources, admin_user
):
    """A radiologist's addition (the correction tool's new segmentation version, origin
    ``added``) is a decision by itself; a propagated one waits for review."""
    tiny_active(tiny_sources)
    study = processed_phantom_study(tmp_path, key="d1", patient_id="MH-D1")
    LesionMeasurement.objects.filter(study=study).update(origin="added", review_state="pending")
    (example,) = training_examples_sync()
    assert example.status == TrainingExample.Status.INCLUDED
    assert [c["kind"] for c in example.corrections] == ["added"]
    LesionMeasurement.objects.filter(study=study).update(origin="propagated")
    (example,) = training_examples_sync()
    assert example.status == TrainingExample.Status.EXCLUDED
    assert example.reason == "no review decision on its newest segmentation"


def test_rejected_candidates_are_kept_as_hard_negatives_and_patches_are_centred_there():
    """What the model wrongly saw as a lesion is where a reviewed study's patches go."""
    hu = np.full((30, 30, 30), 40.0, dtype=np.float32)  # body everywhere
    organs = np.full(hu.shape, 2, dtype=np.uint8)
    mask = np.zeros(hu.shape, dtype=np.uint16)
    mask[5:8, 5:8, 5:8] = 1  # accepted
    mask[20:24, 20:24, 20:24] = 2  # rejected, centred at index 21.5 (43 mm)
    corrections = [Correction("accepted", "liver", 1), Correction("rejected", "liver", 2)]
    case = reviewed_case(case_id="r1", image=_grid(hu), candidate_mask=_grid(mask, "label"),
                         organ_label=_grid(organs, "label"), corrections=corrections,
                         spec=SegmenterSpec())  # fmt: skip

    (point,) = case.meta["hard_negatives_kji"]
    assert np.allclose(np.asarray(point) * np.asarray(case.spacing_mm)[::-1], 43.0, atol=1.5)
    rng = np.random.default_rng(0)
    size = 16
    centres = np.array([_patch_centre(case, rng, size, 0.0) for _ in range(400)])
    near = np.all(np.abs(centres - np.asarray(point)) <= size // 4, axis=1).mean()
    assert 0.3 < near < 0.55  # HARD_NEGATIVE_SHARE of the patches (0.4), and a few by chance
    plain = replace(case, meta={**case.meta, "hard_negatives_kji": []})
    centres = np.array([_patch_centre(plain, rng, size, 0.0) for _ in range(400)])
    assert np.all(np.abs(centres - np.asarray(point)) <= size // 4, axis=1).mean() < 0.15


def test_a_tuned_share_outside_0_1_is_refused_before_anything_is_trained():
    for share in ("0", "1.5"):
        with pytest.raises(CommandError, match=r"--tuned-share must be in \(0, 1\]"):
            call_command("finetune_segmenter", "--from-reviews", f"--tuned-share={share}",
                         stdout=StringIO(), stderr=StringIO())  # fmt: skip
    with pytest.raises(CommandError, match="--distill-weight cannot be negative"):
        call_command("finetune_segmenter", "--from-reviews", "--distill-weight=-1",
                     stdout=StringIO(), stderr=StringIO())  # fmt: skip
