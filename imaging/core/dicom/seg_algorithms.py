"""Who drew a DICOM SEG segment and an SR measurement: the model, a radiologist's click,
a radiologist's hand, or a classical second reader (`seg_sr`)."""

from __future__ import annotations

from typing import Protocol

import highdicom as hd
from pydicom.sr.codedict import codes

#: A segment's Segment Algorithm Type (0062,0008) by who drew it (`seg_sr.ExportedLesion`).
ALGORITHM_TYPES = ("AUTOMATIC", "SEMIAUTOMATIC", "MANUAL")
#: The click-guided method a radiologist's added (SEMIAUTOMATIC) segment was grown with.
CLICK_ALGORITHM_NAME = "RadTrack click-guided region growing"
#: The classical readers of the liver and the lungs (`segmentation.liver_reader`,
#: `segmentation.lung_reader`) by the organ of what they drew: their segments are
#: AUTOMATIC, but not the model's.
SECOND_READER_ALGORITHM_NAMES = {
    "liver": "RadTrack liver second reader",
    "lung": "RadTrack lung second reader",
}


def second_reader_name(organ: str) -> str:
    """The name of the classical reader that drew a lesion of ``organ``."""
    return SECOND_READER_ALGORITHM_NAMES.get(organ, "RadTrack second reader")


def segment_algorithms(
    model_name: str, model_version: str, software_version: str
) -> dict[str, hd.AlgorithmIdentificationSequence | None]:
    """The Algorithm Identification of each segment algorithm type (PS3.3 C.8.20.4), and
    of each second reader (``SECOND_READER:<organ>``)."""
    return {
        "AUTOMATIC": hd.AlgorithmIdentificationSequence(
            name=model_name[:64],
            family=codes.cid7162.ArtificialIntelligence,
            version=model_version[:64],
        ),
        "SEMIAUTOMATIC": hd.AlgorithmIdentificationSequence(
            name=CLICK_ALGORITHM_NAME,
            family=codes.cid7162.NeighborhoodAnalysis,
            version=software_version[:64],
        ),
        "MANUAL": None,  # drawn by a person: no algorithm (PS3.3 C.8.20.4)
        **{
            f"SECOND_READER:{organ}": hd.AlgorithmIdentificationSequence(
                name=second_reader_name(organ),
                family=codes.cid7162.MultiScaleResolutionFiltering,
                version=software_version[:64],
            )
            for organ in (*SECOND_READER_ALGORITHM_NAMES, "")
        },
    }


def drawn_by_reader(second_reader: bool, algorithm_type: str) -> bool:
    """Whether a lesion's segment is a second reader's (an AUTOMATIC one it drew)."""
    return second_reader and algorithm_type == "AUTOMATIC"


class Drawn(Protocol):
    """What says who drew a lesion's segment (`seg_sr.ExportedLesion`)."""

    @property
    def algorithm_type(self) -> str: ...
    @property
    def second_reader(self) -> bool: ...
    @property
    def organ(self) -> str: ...


def segment_algorithm_of(
    lesion: Drawn, algorithms: dict[str, hd.AlgorithmIdentificationSequence | None]
) -> hd.AlgorithmIdentificationSequence | None:
    """The Algorithm Identification of a lesion's segment: its type's, or its organ's
    second reader's for an AUTOMATIC segment a second reader drew."""
    if drawn_by_reader(lesion.second_reader, lesion.algorithm_type):
        organ = lesion.organ if lesion.organ in SECOND_READER_ALGORITHM_NAMES else ""
        return algorithms[f"SECOND_READER:{organ}"]
    return algorithms[lesion.algorithm_type]
