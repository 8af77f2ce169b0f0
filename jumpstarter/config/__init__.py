"""Configuration files: exporter configs, inventories, client configs (YAML, errors with file:line)."""
