"""The `jumpstarter` command line."""
