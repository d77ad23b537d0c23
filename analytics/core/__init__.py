"""Django-free analytics: lab units, landmark features and survival models.

Modules here take and return DataFrames, arrays and dataclasses; the Django apps map
them onto models. Nothing here imports Django (a test checks).
"""
