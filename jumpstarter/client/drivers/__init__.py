"""Client classes for the standard driver interfaces (each adds its CLI commands)."""
