"""Lesion segmentation: the U-Net and its weights, post-processing, measurement, the classical
baseline, and training."""
