"""The locked validation set as it is now: its definition, its lock, the site's studies in
it, and the identity a validation report must share with it to allow a promotion.

A report stands for the set it was made on: ``set_name``, ``set_spec``, ``set_checksum``
(the generated part) and ``site_studies`` (each reviewed study of the site with its
digest and its review key). When any of them is no longer what the set is now, the
report says nothing about the set a promotion would be judged by, and the version must
be validated again (`identity_mismatch`). The review key (`site_review_key`) follows a
site study's digest without reading its volume: the run whose volume it is and every
decision that makes its truth.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db.models import QuerySet

from imaging.core.modelhub.validation_set import LOCKED_CHECKSUMS, ValidationSetSpec
from imaging.modelhub.models import ValidationReport, ValidationSetStudy
from imaging.modelhub.selectors import StudyReview, study_review


def validation_spec() -> ValidationSetSpec:
    """The locked set's definition: ``RADTRACK_VALIDATION_SET`` or the shipped one."""
    configured = getattr(settings, "RADTRACK_VALIDATION_SET", None)
    return ValidationSetSpec.from_json(configured) if configured else ValidationSetSpec()


def set_entries() -> QuerySet[ValidationSetStudy]:
    """The site's studies in the set now (removed ones stay as rows, out of the set)."""
    return ValidationSetStudy.objects.filter(removed_at__isnull=True)


def locked_checksum(spec: ValidationSetSpec) -> str | None:
    """The generated part's checksum the set is locked to: in code for the shipped set,
    else the first report's on a set of that name (None before any)."""
    if spec.name in LOCKED_CHECKSUMS:
        return LOCKED_CHECKSUMS[spec.name]
    first = ValidationReport.objects.filter(set_name=spec.name).order_by("created_at").first()
    return first.set_checksum if first else None


def site_review_key(review: StudyReview) -> str:
    """SHA-256 over what a site study's case digest rests on: the run (its volume), the
    segmentation, and every decision (kind, organ, lesion, centroid, volume, diameter)."""
    decisions = sorted(
        json.dumps([d["kind"], d["component_label"], d["organ"], d["lesion_uid"],
                    d["centroid_lps_mm"], d["volume_ml"], d["longest_diameter_mm"]], default=str)
        for d in review.decisions
    )  # fmt: skip
    parts = [review.run.pk if review.run else None,
             review.segmentation.pk if review.segmentation else None, decisions]  # fmt: skip
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


@dataclass(frozen=True)
class SetIdentity:
    """The set now: definition, locked checksum (None before any report), site studies
    that count (fully reviewed), each ``{study_instance_uid, review_key}``, in order."""

    spec: ValidationSetSpec
    checksum: str | None
    site: list[dict[str, str]] = field(default_factory=list)

    def review_keys(self) -> dict[str, str]:
        return {s["study_instance_uid"]: s["review_key"] for s in self.site}


def validation_set_identity() -> SetIdentity:
    """What the locked set is now (database reads only: no volume is read)."""
    spec = validation_spec()
    site = []
    for entry in set_entries().select_related("study").order_by("added_at"):
        review = study_review(entry.study)
        if review.reviewed:
            site.append({"study_instance_uid": entry.study.study_instance_uid,
                         "review_key": site_review_key(review)})  # fmt: skip
    return SetIdentity(spec=spec, checksum=locked_checksum(spec), site=site)


def identity_mismatch(report: ValidationReport, identity: SetIdentity) -> str | None:
    """How ``report``'s set differs from the set now, or None when it is the same set."""
    spec = identity.spec
    if report.set_name != spec.name:
        return f"it was made on the set {report.set_name}, but the locked set is now {spec.name}"
    if _canonical(report.set_spec) != _canonical(spec.as_json()):
        return f"the definition of {spec.name} changed since it was made"
    if identity.checksum is None or report.set_checksum != identity.checksum:
        return f"the generated studies of {spec.name} are no longer the ones it was made on"
    made_on = [(s.get("study_instance_uid"), s.get("review_key")) for s in report.site_studies]
    now = [(s["study_instance_uid"], s["review_key"]) for s in identity.site]
    if made_on != now:
        before = {uid for uid, _ in made_on}
        current = {uid for uid, _ in now}
        parts = []
        if current - before:
            parts.append(f"{len(current - before)} site stud(ies) joined the set")
        if before - current:
            parts.append(f"{len(before - current)} left it")
        if not parts:
            parts.append("a site study's images or review decisions changed")
        return f"the site's studies in the set changed since it was made ({', '.join(parts)})"
    return None


def _canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, default=list)
