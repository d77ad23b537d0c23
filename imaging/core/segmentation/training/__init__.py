"""Training and fine-tuning of the lesion segmenter: cases, patches, the training loop,
calibration, validation, shipped weights with their model card, and site data."""
