"""The standard drivers (exporter side). Config `type:` names resolve in `registry`."""
