"""Image geometry in DICOM patient coordinates: the `Volume`, NIfTI storage and preprocessing."""
