"""The audit page for administrators: the trail filtered, and its CSV and FHIR exports."""
