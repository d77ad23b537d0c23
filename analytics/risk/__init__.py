"""Risk models: landmark features, fitting and scoring, and their REST API and tasks."""
