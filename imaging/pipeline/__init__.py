"""Processing of stored studies: the series chosen, the run over it, its record and rows,
and the announcement of a patient's new results."""
