"""Results back to the PACS: DICOM SEG of the lesion masks and a TID 1500 SR of the
measurements, written and sent (STOW-RS)."""
