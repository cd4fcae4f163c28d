"""Shared machinery of the kit: config, data layouts, metrics, runs, console."""
