"""routerd: the Jumpstarter router (DESIGN.md §6).

Verifies router tokens, pairs the two callers of a stream id and forwards their
frames verbatim both ways with HTTP/2 flow control. `main` is the daemon,
`config` its YAML file, `service` the RouterService implementation.
"""

import os

# gRPC's core reads GRPC_VERBOSITY once, at its import, and logs each failed TLS handshake to
# stderr (a flood while a CA is wrong); we report such failures in one line ourselves. The package
# runs before any of its modules imports grpc; a GRPC_VERBOSITY given by the operator wins.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
