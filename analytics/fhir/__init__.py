"""FHIR R4 for the EHR: resources built from RadTrack's results, read endpoints, and push."""
