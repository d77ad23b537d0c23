"""Lesion tracking: a patient's lesion identities and measurements rebuilt across studies,
with radiologists' decisions carried through every rebuild."""
