"""The one local step with its hooks, models, and the features' two halves (CORAL, continual learning, domain evaluation)."""
