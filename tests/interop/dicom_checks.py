"""Checks of exported DICOM objects against each other, read back with highdicom only."""

from __future__ import annotations

import highdicom as hd
import numpy as np

VOLUME = hd.sr.CodedConcept("118565006", "SCT", "Volume")
SUM_OF_VOXELS = "126030"


def segment_volume_ml(seg: hd.seg.Segmentation, segment_number: int) -> float:
    """The volume (ml) of one segment: its voxels in the SEG times the voxel's volume."""
    volume = seg.get_volume(segment_numbers=[segment_number], combine_segments=True)
    return float((np.asarray(volume.array) > 0).sum()) * float(np.prod(volume.spacing)) / 1000.0


def sr_mask_volumes(seg: hd.seg.Segmentation, sr: hd.sr.Comprehensive3DSR) -> list[tuple]:
    """For every SR group that references a segment: (tracking id, the SR's voxel-sum
    volume, the segment's volume recomputed from the SEG, the method of each Volume)."""
    out = []
    for group in sr.content.get_volumetric_roi_measurement_groups():
        (number,) = group.referenced_segment.referenced_segment_numbers
        assert group.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
        volumes = group.get_measurements(name=VOLUME)
        methods = [m.method.value if m.method is not None else None for m in volumes]
        by_voxels = [
            m.value for m in volumes if m.method is not None and m.method.value == SUM_OF_VOXELS
        ]
        out.append(
            (
                group.tracking_identifier,
                by_voxels[0] if by_voxels else None,
                segment_volume_ml(seg, number),
                methods,
            )
        )
    return out
