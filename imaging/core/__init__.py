"""Django-free imaging: volumes, DICOM conversion, transforms, models and phantoms.

Nothing under this package may import Django (a test checks it).
"""
