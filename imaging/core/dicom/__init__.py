"""DICOM in and out without Django: checking received files, building geometry-true
volumes from series, choosing the series to analyse, and writing CT, SEG and SR objects."""
