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
        # Measured by its short axis (RECIST 1.1 section 3.1.1); added by a radiologist.
        LYMPH_NODE = "lymph_node", "Lymph node"
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

    ``status`` says what the tracking found: the lesion (``new``, ``tracked``), nothing
    where it was expected (``not_found``: its stored numbers are 0 and mean nothing;
    never read as gone), or nothing because it joined another lesion (``merged``).
    ``resolved`` is a lesion a radiologist confirmed gone. ``finding_state`` says what
    the rules may count (`analytics.lesions.core.findings`), ``state_reason`` why.
    ``edges_reached``: the edges of what was imaged that the lesion reaches at this
    study; its numbers there are then lower bounds, and its finding state
    ``not_assessable`` (seen, size not assessable) unless a radiologist measured it.
    """

    class Status(models.TextChoices):
        NEW = "new", "New"
        TRACKED = "tracked", "Tracked"
        RESOLVED = "resolved", "Gone (confirmed by a radiologist)"
        NOT_FOUND = "not_found", "Not found, needs review"
        MERGED = "merged", "Merged into another lesion"

    class FindingState(models.TextChoices):
        CONFIRMED = "confirmed", "Confirmed"
        EQUIVOCAL = "equivocal", "Equivocal, awaiting confirmation"
        NOT_FOUND = "not_found", "Not found, needs review"
        REJECTED = "rejected", "Rejected"
        NOT_ASSESSABLE = "not_assessable", "Seen, size not assessable"

    #: Statuses of a row whose lesion was seen at its study.
    FOUND = (Status.NEW, Status.TRACKED)

    class Origin(models.TextChoices):
        AUTOMATED = "automated", "Found by the segmenter"
        ADDED = "added", "Added by a radiologist"
        PROPAGATED = "propagated", "Propagated from a radiologist's addition"
        EDITED = "edited", "Mask edited by a radiologist"
        SECOND_READER = (
            "second_reader",
            "Found by a classical second reader (liver or lung), not the segmenter",
        )

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
    volume_ml = models.FloatField(
        null=True, blank=True, help_text="none when not measured (a lesion measured by hand)"
    )
    volume_core_ml = models.FloatField(
        null=True,
        blank=True,
        help_text="when the volume was measured with the lesion's outer layer (the ground "
        "glass of a part-solid nodule, a cystic lesion's wall: the segmentation's "
        "volume_layer), the volume without it; none otherwise",
    )
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
    edges_reached = models.JSONField(
        default=list,
        blank=True,
        help_text="the edges of what was imaged that the lesion reaches at this study: "
        "scan_start or scan_end (the first or last slice of the scanned range), "
        "field_of_view (the in-plane edge of the images), padding (pixels outside the "
        "reconstructed field of view); empty when it lies wholly inside. Its size is "
        "then not assessable",
    )
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
    origin = models.CharField(
        max_length=16,
        choices=Origin.choices,
        default=Origin.AUTOMATED,
        help_text="who drew the lesion's mask at this study (its candidate's source)",
    )
    finding_state = models.CharField(
        max_length=16, choices=FindingState.choices, default=FindingState.CONFIRMED
    )
    state_reason = models.TextField(blank=True, help_text="why the finding is in its state")
    link_provisional = models.BooleanField(
        default=False,
        help_text="linked to its lesion without a registration to the baseline (anatomical "
        "landmarks): a proposal awaiting a radiologist's review",
    )
    merged_into = models.ForeignKey(
        Lesion,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="status merged: the lesion that absorbed this one at this study",
    )
    too_small = models.BooleanField(
        default=False,
        help_text="a radiologist says the lesion is present but too small to measure "
        "(counts 5 mm, RECIST 1.1 section 4.3.2)",
    )
    manual_finding = models.ForeignKey(
        "ManualFinding",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="measurements",
        help_text="measured by hand by a radiologist, not by the segmentation",
    )
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
    def is_found(self) -> bool:
        """The lesion was seen at this study (by the segmentation or a radiologist)."""
        return self.status in self.FOUND

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


class ManualFinding(models.Model):
    """A lesion a radiologist measured by hand at one study (a lymph node the segmenter
    does not find, or a lesion it missed). ``lesion_uid`` names its identity: a new one
    made when it was added, or a lesion the segmentation follows. Re-tracking turns each
    into a measurement row, so the finding outlives every rebuild."""

    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="manual_findings")
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="manual_findings")
    lesion_uid = models.CharField(max_length=64, help_text="Tracking UID of its lesion")
    label = models.CharField(max_length=64, help_text="the lesion's label when it was added")
    organ = models.CharField(max_length=16, choices=Lesion.Organ.choices)
    longest_diameter_mm = models.FloatField()
    short_axis_mm = models.FloatField()
    volume_ml = models.FloatField(null=True, blank=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    reason = models.TextField()
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["patient", "at"]
        constraints = [
            models.UniqueConstraint(
                fields=["study", "lesion_uid"], name="one_manual_finding_per_lesion_and_study"
            )
        ]

    def __str__(self) -> str:
        return f"{self.label} measured by hand at study {self.study_id}"
