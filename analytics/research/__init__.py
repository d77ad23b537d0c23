"""De-identified research export: DICOM under the PS3.15 Annex E Basic Application Level
Confidentiality Profile (with the Retain Longitudinal Temporal Information with Modified
Dates, Retain Patient Characteristics, Clean Descriptors and Clean Structured Content
options) and the measurement, response and laboratory tables under the same pseudonyms
and shifted dates. The action table is data (`annex_e_table.csv`, with its edition).
"""
