"""The Django-free arithmetic of the risk models: features, estimators, metrics, validation."""
