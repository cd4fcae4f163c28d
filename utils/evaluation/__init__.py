"""Metrics, prediction files, ensembles and ABAW submission files."""
