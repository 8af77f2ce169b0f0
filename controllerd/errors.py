"""controllerd's one error vocabulary: each exception a caller can see, and its gRPC status.

Code raises the class that says what went wrong (`NotFound("lease x not found")`); the
services (controllerd/rpc.py) and the admin socket turn it into `STATUS[class]` with
`str(exc)` as the details. Narrower errors subclass these (`PolicyDenied(PermissionDenied)`,
`QuotaExceeded(ResourceExhausted)`); anything not in the table is an internal error.
"""

from __future__ import annotations

import grpc


class ControllerError(Exception):
    """An error the caller is told about: its status comes from STATUS, its details are str(exc)."""


class InvalidArgument(ControllerError, ValueError):
    """The request itself is wrong (bad name, selector, times); retrying it as is cannot help."""


class Unauthenticated(ControllerError):
    """No valid token (missing, expired, revoked, for another controller)."""


class PermissionDenied(ControllerError):
    """A valid caller asking for what is not theirs or not allowed."""


class NotFound(ControllerError, LookupError):
    """The named record does not exist."""


class Conflict(ControllerError, RuntimeError):
    """A write that would break an invariant (a record that exists, a second active lease on one exporter)."""


class FailedPrecondition(ControllerError):
    """Not possible in the current state (lease ended, exporter offline or not ready)."""


class ResourceExhausted(ControllerError):
    """A limit reached (pending leases, Dial rate); possible again later."""


class Unavailable(ControllerError):
    """A part the call needs is not there now (no router, exporter not listening)."""


class Unimplemented(ControllerError):
    """An operation this controller does not have."""


class StorageError(Unavailable, RuntimeError):
    """The store could not write (an I/O error): nothing of the change was stored."""


class StorageFull(StorageError):
    """The store could not write because the disk is full: nothing was stored; retry once there is room."""


# The one table: the first class in an exception's MRO found here gives its status.
STATUS: dict[type[BaseException], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Conflict: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    StorageFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
    ValueError: grpc.StatusCode.INVALID_ARGUMENT,  # shared parsers' errors (selectors, names, labels)
}


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """(status, details) the caller is told, or None for an internal error (logged, never detailed)."""
    for cls in type(exc).__mro__:
        code = STATUS.get(cls)
        if code is not None:
            return code, str(exc)
    return None
