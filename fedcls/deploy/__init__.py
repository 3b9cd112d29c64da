"""Real sites: TLS certificates and site data folders for SuperLink/SuperNode deployments."""
