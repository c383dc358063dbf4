"""The comparison report behind compare_runs.py: load finished runs (runs), test them (stats), write tables
(tables) and figures (figures). Metric definitions are in metrics, the seed-count arithmetic in power."""
