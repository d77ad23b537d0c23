"""Lesions: tracking across studies, radiologists' review, RECIST 1.1 and volumetric
responses, the side-by-side viewer and the lesion API."""
