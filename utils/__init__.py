"""Shared machinery of the kit: config, console, files and runs here; readers, models, training, evaluation and the synthetic data in subpackages."""
