"""fedcls: federated + continual learning simulator for Non-IID sites, on Flower and Ray."""

__version__ = "0.1.0"
