"""Test harness, not shipped: a throwaway lab host under a real supervisord (sandbox.py)."""
