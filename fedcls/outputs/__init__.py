"""A run folder's files: metrics, summary, plots, checkpoints."""
