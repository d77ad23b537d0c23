"""RadTrack: lesion tracking across serial CT studies.

The Celery application lives in `radtrack.celery` (``celery -A radtrack`` finds it); it
is not imported here, so the Django-free cores can use `radtrack.provenance` without
loading Celery.
"""
