"""Coded concepts of the SEG and SR (units, finding sites, volume methods, RadTrack's private
codes) and the time point (TID 1502) a study falls at."""

from __future__ import annotations

import datetime as dt
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import highdicom as hd
from pydicom.sr.codedict import codes

from imaging.core.dicom.seg_geometry import DicomExportError

#: UCUM millilitre; pydicom's code dictionary has no keyword for it.
MILLILITRE = hd.sr.CodedConcept(value="ml", scheme_designator="UCUM", meaning="milliliter")
#: Finding sites by organ (SNOMED CT, CID 7151 Segmentation Property Types).
ORGAN_SITES = {
    "liver": codes.SCT.Liver,
    "lung": codes.SCT.Lung,
    "lymph_node": codes.SCT.LymphNode,
}
#: PS3.16 CID 7474: the volume of the segment's voxels.
MASK_VOLUME_METHOD = codes.DCM.SumOfSegmentedVoxelMethodForVolume
#: RadTrack's own methods (a private coding scheme, "99" prefix as PS3.16 8.2 allows).
PARTIAL_VOLUME_METHOD = hd.sr.CodedConcept(
    value="PVV", scheme_designator="99RADTRACK", meaning="Partial-volume corrected volumetry"
)
RADIOLOGIST_METHOD = hd.sr.CodedConcept(
    value="RADVAL", scheme_designator="99RADTRACK", meaning="Value entered by a radiologist"
)
#: The Qualitative Evaluation naming a finding's state when it is not a plain measured
#: lesion, and its values, by `seg_sr.ExportedLesion.state`.
FINDING_STATE = hd.sr.CodedConcept(
    value="FSTATE", scheme_designator="99RADTRACK", meaning="Finding state"
)
FINDING_STATES = {
    "equivocal": hd.sr.CodedConcept(
        value="EQUIVOCAL",
        scheme_designator="99RADTRACK",
        meaning="Equivocal, awaiting confirmation",
    ),
    "not_found": hd.sr.CodedConcept(
        value="NOTFOUND", scheme_designator="99RADTRACK", meaning="Not found, needs review"
    ),
    "merged": hd.sr.CodedConcept(
        value="MERGED", scheme_designator="99RADTRACK", meaning="Merged into another lesion"
    ),
    "too_small": hd.sr.CodedConcept(
        value="TOOSMALL", scheme_designator="99RADTRACK", meaning="Present, too small to measure"
    ),
    "not_assessable": hd.sr.CodedConcept(
        value="NOTASSESS", scheme_designator="99RADTRACK", meaning="Seen, size not assessable"
    ),
}
#: The Qualitative Evaluation saying that a lesion's link to its earlier studies is
#: provisional (`seg_sr.ExportedLesion.link_provisional`), and its value.
TRACKING_LINK = hd.sr.CodedConcept(
    value="TRKLINK", scheme_designator="99RADTRACK", meaning="Link to earlier studies"
)
PROVISIONAL_LINK = hd.sr.CodedConcept(
    value="PROVLINK",
    scheme_designator="99RADTRACK",
    meaning="Provisional: proposed without registration, not yet confirmed",
)


@dataclass(frozen=True)
class TimePoint:
    """Where a study falls in the patient's series of studies (TID 1502).

    ``order`` counts from 1 (the baseline).
    """

    order: int

    def __post_init__(self) -> None:
        if self.order < 1:
            raise DicomExportError(f"time point order counts from 1; got {self.order}")

    @property
    def label(self) -> str:
        return "Baseline" if self.order == 1 else f"Follow-up {self.order - 1}"

    @property
    def code(self) -> hd.sr.CodedConcept:
        """CID 6146 Time Point Types: Baseline, or Posttreatment for a follow-up."""
        return codes.cid6146.Baseline if self.order == 1 else codes.cid6146.Posttreatment


def time_point_of(study: Hashable, studies: Sequence[tuple[Hashable, dt.date | None]]) -> TimePoint:
    """The time point of ``study`` among the patient's ``studies`` ((key, Study Date
    (0008,0020)) pairs, ``study`` among them).

    Studies of one date are one time point (RECIST 1.1 reads the disease at each
    assessment, whatever the number of scans it took; the rule of the response
    assessment, which reads a date's studies as one): the dates in order give the
    order. A study without a date cannot share one: each is a time point of its own,
    after the dated ones, in the order given.
    """
    dates = dict(studies)
    if study not in dates:
        raise DicomExportError(f"study {study!r} is not among the patient's studies")
    dated = sorted({date for _, date in studies if date is not None})
    date = dates[study]
    if date is not None:
        return TimePoint(order=dated.index(date) + 1)
    undated = [key for key, day in studies if day is None]
    return TimePoint(order=len(dated) + undated.index(study) + 1)
