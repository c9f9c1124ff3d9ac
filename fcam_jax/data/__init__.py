"""Datasets: the built-in synthetic WSOL set, the wsolevaluation metadata layout, pipelines."""
