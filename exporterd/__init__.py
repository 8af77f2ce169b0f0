"""exporterd: serves one board's drivers on its unix socket (DESIGN.md §1)."""
