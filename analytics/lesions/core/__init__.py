"""The Django-free lesion core: matching lesions across studies, RECIST 1.1 and
volumetric response rules on timelines of readings."""
