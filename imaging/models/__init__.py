"""The imaging app's models, one module per part of a study's life (Django finds them here)."""

from imaging.models.exchange import DicomExportRecord, FhirPushRecord, PacsTransfer
from imaging.models.lesions import (
    Lesion,
    LesionLink,
    LesionMeasurement,
    ManualFinding,
    ReviewEvent,
)
from imaging.models.processing import ProcessingRun, Registration, Segmentation
from imaging.models.studies import (
    ANALYSED_MODALITIES,
    IngestIssue,
    IngestSession,
    Instance,
    Series,
    Study,
    StudyQuerySet,
    study_order,
)

__all__ = [
    "ANALYSED_MODALITIES",
    "DicomExportRecord",
    "FhirPushRecord",
    "IngestIssue",
    "IngestSession",
    "Instance",
    "Lesion",
    "LesionLink",
    "LesionMeasurement",
    "ManualFinding",
    "PacsTransfer",
    "ProcessingRun",
    "Registration",
    "ReviewEvent",
    "Segmentation",
    "Series",
    "Study",
    "StudyQuerySet",
    "study_order",
]
