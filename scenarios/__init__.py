"""fedcls scenarios: one YAML per scenario (``scenario=NAME`` loads NAME.yaml), shipped as package data."""
