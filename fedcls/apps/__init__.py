"""Flower apps: the ClientApp, the ServerApp and its round loop, the per-process runtime, the cohort executor's actor side."""
