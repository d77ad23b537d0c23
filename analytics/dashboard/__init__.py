"""The dashboard pages: worklist, cohort, pipeline and patient pages, with their figures."""
