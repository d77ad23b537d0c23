"""The model registry, validation reports, learning from reviews and drift (Django side).

The arithmetic is Django-free in `imaging.core.modelhub`; here are the rows (`models`),
the workflows that write them (`services`, `validation`, `training`, `drift`), what the
pages and commands read (`selectors`), the pages (`views`) and the commands
(``model_register``, ``model_validate``, ``model_promote``, ``model_rollback``).
"""
