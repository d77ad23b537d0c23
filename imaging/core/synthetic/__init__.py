"""Synthetic longitudinal CT cohorts: a chest/abdomen phantom, its lesions and disease course,
and the DICOM series, health records and ground truth written from them."""
