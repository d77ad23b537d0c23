"""Segmentation models other than the shipped one, and how any model version is judged.

Django-free (docs/ARCHITECTURE.md): `conventions` (what a model's outputs mean and what
input it expects), `files` (a model's files and their SHA-256), `adapters` (nnU-Net v2,
MONAI bundles, ONNX and RadTrack's own weights behind one ``segment`` call whose output
goes through the same post-processing and measurement), `validation_set` and `scoring`
(the locked validation set and the arithmetic of a validation report), `compare` (the
promotion rule), `corrections` (reviewed studies as training cases), `drift` (input and
output statistics of processed studies, and the two-sample tests on them), `figures` and
`report_html` (the report's Plotly figures and its self-contained HTML export).
The Django side (registry rows, commands, pages) is `imaging.modelhub`.
"""
