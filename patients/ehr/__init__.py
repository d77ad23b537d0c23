"""EHR data in: labs and outcome events from FHIR R4 Bundles and cohort CSVs."""
