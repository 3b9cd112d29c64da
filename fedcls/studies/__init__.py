"""Sweeps of runs and their reports (tables, plots)."""
