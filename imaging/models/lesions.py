"""Lesions over time: identities, their measurement at each study, and radiologists' decisions."""

from django.conf import settings
from django.db import models

from imaging.models.processing import Segmentation
from imaging.models.studies import Study
from patients.models import Patient


class Lesion(models.Model):
    """One lesion's identity across a patient's studies (DICOM Tracking UID (0062,0021))."""

    class Organ(models.TextChoices):
        LUNG = "lung", "Lung"
        LIVER = "liver", "Liver"
        OTHER = "other", "Other"

    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="lesions")
    tracking_uid = models.CharField(max_length=64, unique=True)
    label = models.CharField(max_length=64, help_text='readable identifier, e.g. "Liver 2"')
    organ = models.CharField(max_length=16, choices=Organ.choices)
    merged_into = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="merged_from"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["patient", "organ", "label"]
        constraints = [
            models.UniqueConstraint(
                fields=["patient", "label"], name="unique_lesion_label_per_patient"
            )
        ]

    def __str__(self) -> str:
        return self.label


class LesionMeasurement(models.Model):
    """A lesion at one study: automated measurements, and a radiologist's review of them.

    Automated values are never overwritten: an override is kept beside them with its
    reason, and ``effective_*`` properties give the value in force.
    """

    class Status(models.TextChoices):
        NEW = "new", "New"
        TRACKED = "tracked", "Tracked"
        RESOLVED = "resolved", "Resolved"

    class Review(models.TextChoices):
        PENDING = "pending", "Awaiting review"
        ACCEPTED = "accepted", "Accepted"
        REJECTED = "rejected", "Rejected (false positive)"
        EDITED = "edited", "Edited"

    lesion = models.ForeignKey(Lesion, on_delete=models.CASCADE, related_name="measurements")
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="lesion_measurements")
    segmentation = models.ForeignKey(
        Segmentation, null=True, blank=True, on_delete=models.SET_NULL, related_name="measurements"
    )
    component_label = models.PositiveIntegerField(
        null=True, blank=True, help_text="value of this lesion in the segmentation's label map"
    )
    status = models.CharField(max_length=16, choices=Status.choices)
    volume_ml = models.FloatField()
    longest_diameter_mm = models.FloatField()
    short_axis_mm = models.FloatField()
    max_3d_diameter_mm = models.FloatField(null=True, blank=True)
    centroid_x_mm = models.FloatField(null=True, blank=True)
    centroid_y_mm = models.FloatField(null=True, blank=True)
    centroid_z_mm = models.FloatField(null=True, blank=True)
    mean_hu = models.FloatField(null=True, blank=True)
    sd_hu = models.FloatField(null=True, blank=True)
    sphericity = models.FloatField(null=True, blank=True)
    confidence = models.FloatField(null=True, blank=True)
    uncertainty = models.FloatField(null=True, blank=True)
    is_target = models.BooleanField(default=False)
    target_by_hand = models.BooleanField(
        default=False, help_text="is_target was chosen by a radiologist, not by the RECIST rules"
    )
    component_labels = models.JSONField(
        default=list,
        blank=True,
        help_text="every label-map value attributed to this lesion at this study (a split "
        "lesion's fragments); component_label is the largest",
    )
    review_state = models.CharField(max_length=16, choices=Review.choices, default=Review.PENDING)
    override_volume_ml = models.FloatField(null=True, blank=True)
    override_longest_diameter_mm = models.FloatField(null=True, blank=True)
    override_short_axis_mm = models.FloatField(null=True, blank=True)
    review_reason = models.TextField(blank=True)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["lesion", "study__study_date"]
        constraints = [
            models.UniqueConstraint(
                fields=["lesion", "study"], name="one_measurement_per_lesion_and_study"
            )
        ]

    def __str__(self) -> str:
        return f"{self.lesion} at study {self.study_id}"

    @property
    def effective_volume_ml(self) -> float:
        return self.override_volume_ml if self.override_volume_ml is not None else self.volume_ml

    @property
    def effective_longest_diameter_mm(self) -> float:
        if self.override_longest_diameter_mm is not None:
            return self.override_longest_diameter_mm
        return self.longest_diameter_mm

    @property
    def effective_short_axis_mm(self) -> float:
        if self.override_short_axis_mm is not None:
            return self.override_short_axis_mm
        return self.short_axis_mm


class ReviewEvent(models.Model):
    """One radiologist action on the lesions (accept, reject, relink, merge, split, target,
    override), with who, when, why and what the values were before."""

    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="review_events")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    action = models.CharField(max_length=32)
    measurement = models.ForeignKey(
        LesionMeasurement,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="review_events",
    )
    reason = models.TextField(blank=True)
    before = models.JSONField(default=dict, blank=True)
    after = models.JSONField(default=dict, blank=True)
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-at"]

    def __str__(self) -> str:
        return f"{self.action} by {self.user_id} at {self.at}"


class LesionLink(models.Model):
    """A radiologist's decision about which lesion one candidate belongs to.

    A candidate is a connected component of a segmentation (``component_label`` in its
    label map). ``anchor_*`` names another candidate: this one belongs to the lesion that
    candidate belongs to (a relink or a merge). Without an anchor the candidate starts a
    lesion of its own (a split). `analytics.lesions.tracking.track.patient_track` applies these
    links study by study on every rebuild, so the decision outlives re-tracking.
    """

    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="lesion_links")
    segmentation = models.ForeignKey(Segmentation, on_delete=models.CASCADE, related_name="+")
    component_label = models.PositiveIntegerField()
    anchor_segmentation = models.ForeignKey(
        Segmentation, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    anchor_component_label = models.PositiveIntegerField(null=True, blank=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    reason = models.TextField()
    at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["patient", "at"]
        constraints = [
            models.UniqueConstraint(
                fields=["segmentation", "component_label"], name="one_link_per_lesion_candidate"
            ),
            models.CheckConstraint(
                condition=models.Q(
                    anchor_segmentation__isnull=True, anchor_component_label__isnull=True
                )
                | models.Q(anchor_segmentation__isnull=False, anchor_component_label__isnull=False),
                name="lesion_link_anchor_complete",
            ),
        ]

    def __str__(self) -> str:
        if self.anchor_segmentation_id is None:
            target = "as a lesion of its own"
        else:
            target = (
                f"with candidate {self.anchor_component_label} "
                f"of segmentation {self.anchor_segmentation_id}"
            )
        return f"candidate {self.component_label} of segmentation {self.segmentation_id} {target}"
