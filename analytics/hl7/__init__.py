"""HL7 v2.5.1 results out: each assessed study's response as an ORU^R01 over MLLP to the EHR."""
