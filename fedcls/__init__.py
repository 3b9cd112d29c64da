"""fedcls: federated + continual learning simulator for Non-IID sites, on Flower and Ray."""

import os

__version__ = "0.1.0"

# Flower posts usage events (run ids hashed, OS, versions) to its servers unless told not to; a
# hospital's run should send nothing it did not ask for. Set before Flower is imported; an explicit
# FLWR_TELEMETRY_ENABLED=1 in the environment turns it back on.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
