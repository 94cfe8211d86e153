"""How well a detector works: metrics, evaluation, the study grid, plots and the report."""
