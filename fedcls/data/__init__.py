"""Data: sources (tensors), partitions (indices per site), and the federation's site data."""
