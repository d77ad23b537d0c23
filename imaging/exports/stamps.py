"""The times a DICOM export stamps, kept across rebuilds.

A SEG or SR written under a SOP Instance UID carries its content and instance creation
times (PS3.3 C.12.1, C.10.9). A file that went missing is rebuilt under the same UID with
the times of its first export, which its `DicomExportRecord` keeps.
"""

from __future__ import annotations

import datetime as dt

import pydicom
from django.utils import timezone

from imaging.models import DicomExportRecord


def first_exported_at(kind: str, sop_instance_uid: str) -> dt.datetime | None:
    """When the object with this UID was first exported (None, if never)."""
    field_name = "seg_sop_instance_uid" if kind == "SEG" else "sr_sop_instance_uid"
    return (
        DicomExportRecord.objects.filter(**{field_name: sop_instance_uid})
        .order_by("created_at", "pk")
        .values_list("created_at", flat=True)
        .first()
    )


def content_time_set(
    dataset: pydicom.Dataset, at: dt.datetime, *, built_after: dt.datetime
) -> None:
    """Set the times the build stamped (content and instance creation, PS3.3 C.12.1,
    C.10.9; highdicom's Contributing Equipment item, C.12.1.1.5) to ``at``, in local
    time as highdicom writes them; ``built_after`` tells the stamps apart from the
    source images' own (earlier) contribution times."""
    at = timezone.localtime(at).replace(tzinfo=None)
    for prefix in ("Content", "InstanceCreation"):
        if f"{prefix}Date" in dataset:
            setattr(dataset, f"{prefix}Date", at.strftime("%Y%m%d"))
        if f"{prefix}Time" in dataset:
            setattr(dataset, f"{prefix}Time", at.strftime("%H%M%S"))
    for item in dataset.get("ContributingEquipmentSequence", []):
        stamped = str(item.get("ContributionDateTime", ""))
        try:
            when = dt.datetime.strptime(stamped[:14], "%Y%m%d%H%M%S")
        except ValueError:
            continue
        if when >= built_after.replace(microsecond=0):
            item.ContributionDateTime = at.strftime("%Y%m%d%H%M%S")
