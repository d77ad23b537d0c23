"""Training batches drawn fresh from the variation generator, with MONAI's random transforms.

Every patch is a new scene (`synthetic.variation`: warped phantom with vessels,
bronchi, cysts and bowel gas), new lesions of every kind and placement
(`synthetic.variation_lesions`) and a new acquisition (`synthetic.variation_render`),
so the network never sees the same patient twice; ``plain_share`` of them are the
cohort's plain phantom, so what it did well before stays covered, and
``cohort_acquisition_share`` of those are acquired as the cohort generator acquires
(its coarse small preset, plain correlated noise: the demo's studies). A lesion the
patch's noise hides is neither painted nor labelled (`synthetic.variation_visibility`).
Patches are centred
on a lesion (``lesion_bias``), on a hard negative (vessel, bronchus, cyst, hilum) or on
organ boundaries, or anywhere in the body. Then, jointly on image and target, a
left-right mirror (half the time: the network must not learn which side is which), and
on the image MONAI's random intensity transforms (scale and shift of HU, smoothing,
bias field). A batch is a function of (seed, step) alone, so a resumed run draws what
an uninterrupted one would; `GeneratedBatches` renders them in a worker process while
the network trains.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from imaging.core.segmentation.network import SegmenterSpec, model_input_array
from imaging.core.segmentation.training.cases import seeded_rng
from imaging.core.segmentation.training.patches import soft_target
from imaging.core.synthetic.variation import TrainingScene, scene_sample
from imaging.core.synthetic.variation_lesions import lesions_draw
from imaging.core.synthetic.variation_render import (
    TrainingCrop,
    acquisition_sample,
    cohort_acquisition_sample,
    crop_render,
)


@dataclass(frozen=True)
class GeneratedData:
    """What the generated batches are made of (recorded in the checkpoint and model card)."""

    patch_size: int
    batch_size: int
    lesion_bias: float
    plain_share: float = 0.2
    hard_negative_share: float = 0.15
    # Of the plain patches, the share acquired as the cohort generator acquires.
    cohort_acquisition_share: float = 0.0


def _hard_negative_point(scene: TrainingScene, rng: np.random.Generator) -> np.ndarray | None:
    extras = scene.extras
    groups = [g for g in (extras.lung_vessels, extras.bronchi, extras.hepatic_vessels) if g]
    if extras.liver_cysts and rng.random() < 0.3:
        cyst = extras.liver_cysts[int(rng.integers(len(extras.liver_cysts)))]
        return np.asarray(cyst.centre_mm, dtype=float)
    if not groups:
        return None
    group = groups[int(rng.integers(len(groups)))]
    segment = group[int(rng.integers(len(group)))]
    p0, p1 = np.asarray(segment.start_mm), np.asarray(segment.end_mm)
    return p0 + rng.random() * (p1 - p0)


def _organ_point(scene: TrainingScene, rng: np.random.Generator) -> np.ndarray:
    anatomy = scene.anatomy
    organ = [anatomy.right_lung, anatomy.left_lung, anatomy.liver][int(rng.integers(3))]
    d = rng.normal(size=3)
    d /= np.linalg.norm(d)
    return np.asarray(organ.centre_mm) + np.asarray(organ.semi_axes_mm) * d * rng.uniform(0.5, 1.1)


def _body_point(scene: TrainingScene, rng: np.random.Generator) -> np.ndarray:
    ax, ay = scene.anatomy.body_semi_axes_mm
    z_lo, z_hi = scene.anatomy.scan_range_z_mm
    return np.array([rng.uniform(-ax, ax), rng.uniform(-ay, ay), rng.uniform(z_lo, z_hi)])


def _centre(scene, lesions, data: GeneratedData, rng: np.random.Generator) -> np.ndarray:
    """A scene point to centre the patch on (a quarter patch of jitter around lesions)."""
    roll = rng.random()
    if roll < data.lesion_bias and lesions:
        lesion = lesions[int(rng.integers(len(lesions)))]
        jitter = rng.uniform(-0.25, 0.25, 3) * data.patch_size * 1.5
        return np.asarray(lesion.shape.centre_body_mm) + jitter
    if roll < data.lesion_bias + data.hard_negative_share:
        point = _hard_negative_point(scene, rng)
        if point is not None:
            return point
    return _organ_point(scene, rng) if rng.random() < 0.6 else _body_point(scene, rng)


def _intensity_augment(hu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """MONAI's random intensity transforms on HU (one random state per patch)."""
    from monai.transforms import (
        RandBiasField,
        RandGaussianSmooth,
        RandScaleIntensity,
        RandShiftIntensity,
    )

    seed = int(rng.integers(2**31 - 1))
    x = hu[None]
    for n, transform in enumerate(
        (
            RandShiftIntensity(offsets=20.0, prob=0.5),
            RandScaleIntensity(factors=0.05, prob=0.3),
            RandGaussianSmooth(
                sigma_x=(0.3, 0.8), sigma_y=(0.3, 0.8), sigma_z=(0.3, 0.8), prob=0.1
            ),  # fmt: skip
        )
    ):
        transform.set_random_state(seed + n)
        x = np.asarray(transform(x))
    bias = RandBiasField(degree=2, coeff_range=(0.0, 0.08), prob=0.2)
    bias.set_random_state(seed + 7)
    # The bias field multiplies; applied to HU + 1000 it darkens or lightens tissue
    # smoothly (as cupping does) and leaves air where it is.
    x = np.asarray(bias(x + 1000.0)) - 1000.0
    return np.asarray(x[0], dtype=np.float32)


def patch_generate(
    rng: np.random.Generator, *, spec: SegmenterSpec, data: GeneratedData
) -> tuple[np.ndarray, np.ndarray]:
    """One generated patch: inputs (C, s, s, s) and soft targets (classes, s, s, s)."""
    plain = bool(rng.random() < data.plain_share)
    scene = scene_sample(rng, plain=plain)
    lesions = lesions_draw(scene, rng)
    centre = _centre(scene, lesions, data, rng)
    cohort_like = (
        plain and data.cohort_acquisition_share and (rng.random() < data.cohort_acquisition_share)
    )
    crop: TrainingCrop = crop_render(
        scene=scene,
        lesions=lesions,
        centre_scene_mm=centre,
        acquisition=cohort_acquisition_sample(rng) if cohort_like else acquisition_sample(rng),
        rng=rng,
        size=data.patch_size,
        spacing_mm=float(spec.spacing_mm[0]),
    )
    arrays = [crop.hu, crop.organ, crop.lesion_fraction, crop.lesion_code]
    if rng.random() < 0.5:  # left-right mirror of the whole patch (i is the last axis)
        arrays = [np.ascontiguousarray(a[..., ::-1]) for a in arrays]
    hu, organ, fraction, code = arrays
    inputs = model_input_array(_intensity_augment(hu, rng), spec)
    return inputs, soft_target(organ, fraction, code)


def batch_generate(
    *, seed: int, step: int, spec: SegmenterSpec, data: GeneratedData, stream: int = 7
) -> tuple[np.ndarray, np.ndarray]:
    """The batch of ``step``: ``data.batch_size`` patches from ``seeded_rng(seed, stream, step)``."""
    rng = seeded_rng(seed, stream, step)
    patches = [patch_generate(rng, spec=spec, data=data) for _ in range(data.batch_size)]
    return np.stack([p[0] for p in patches]), np.stack([p[1] for p in patches])


class GeneratedBatches(torch.utils.data.Dataset):
    """Batch ``step`` of a run, for a `torch.utils.data.DataLoader` with worker processes."""

    def __init__(self, *, seed: int, spec: SegmenterSpec, data: GeneratedData, stream: int = 7):
        self.seed, self.spec, self.data, self.stream = seed, spec, data, stream

    def __len__(self) -> int:
        return 10**9

    def __getitem__(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        return batch_generate(
            seed=self.seed, step=int(step), spec=self.spec, data=self.data, stream=self.stream
        )


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)


def loader_build(
    *, seed: int, spec: SegmenterSpec, data: GeneratedData, first_step: int, last_step: int,
    workers: int = 1,
) -> torch.utils.data.DataLoader:  # fmt: skip
    """Batches ``first_step``..``last_step - 1`` in order, rendered by ``workers`` processes
    (0: in this process)."""
    return torch.utils.data.DataLoader(
        GeneratedBatches(seed=seed, spec=spec, data=data),
        batch_size=None,
        sampler=range(first_step, last_step),
        num_workers=workers,
        worker_init_fn=_worker_init if workers else None,
        prefetch_factor=2 if workers else None,
        persistent_workers=False,
    )
