"""routerd: the Jumpstarter router (DESIGN.md §6).

Verifies router tokens, pairs the two callers of a stream id and forwards their
frames verbatim both ways with HTTP/2 flow control. `main` is the daemon,
`config` its YAML file, `service` the RouterService implementation.
"""
