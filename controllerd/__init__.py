"""controllerd: the Jumpstarter controller (DESIGN.md §5): leases, scheduler, auth, stores."""

import os

# gRPC's core reads GRPC_VERBOSITY once, at its import, and logs each failed TLS handshake to
# stderr (a flood while a CA is wrong); we report such failures in one line ourselves. The package
# runs before any of its modules imports grpc; a GRPC_VERBOSITY given by the operator wins.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
