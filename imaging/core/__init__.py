"""Django-free imaging: volumes with their geometry, DICOM in and out, registration,
segmentation and measurement, synthetic phantoms. Nothing here imports Django
(import-linter contract in pyproject.toml)."""
