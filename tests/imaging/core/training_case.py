"""A small labelled training case (a liver lesion in noisy tissue) for training-loop tests."""

from __future__ import annotations

import numpy as np

from imaging.core.segmentation.training.cases import TrainingCase

SHAPE = (32, 32, 32)


def small_case(case_id: str) -> TrainingCase:
    """A 32-voxel cube of liver at 60 HU with a 6-voxel lesion 90 HU brighter."""
    rng = np.random.default_rng(0)
    hu = rng.normal(60.0, 8.0, SHAPE)
    code = np.zeros(SHAPE, dtype=np.uint8)
    code[10:16, 10:16, 10:16] = 4
    hu[code > 0] += 90.0
    return TrainingCase(
        case_id=case_id, hu=hu.astype(np.int16), organ=np.full(SHAPE, 2, dtype=np.uint8),
        lesion_fraction=(code > 0).astype(np.float16), lesion_code=code,
        lesion_index=(code > 0).astype(np.uint8),
        lesions=({"lesion_id": f"{case_id}-C01", "organ": "liver", "volume_ml": 0.7,
                  "diameter_mm": 11.0},),
        spacing_mm=(1.5, 1.5, 1.5), meta={"source": "site"},
    )  # fmt: skip
