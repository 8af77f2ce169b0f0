"""The one table between Python exceptions and gRPC status codes (PROTOCOL.md §4).

Driver side: `status_for(exc)` picks the code a driver exception travels as.
Client side: `error_for(code, details)` turns a status back into a Python
exception of the matching builtin kind, so `except ValueError` works on both
sides of the wire; a lost or unreachable exporter connection says so.
`from_rpc(exc)` does the same for a raised `grpc.RpcError`.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import grpc


class JumpstarterError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(JumpstarterError):
    """A configuration file or value is invalid; the message names file:line: key."""


class ConnectError(JumpstarterError, ConnectionError):
    """The exporter could not be reached."""


class BoardRestarted(JumpstarterError, ConnectionError):
    """The exporter's session changed under an open client tree: its drivers are new, the board may
    have been reset. Raised instead of a confusing "no driver with uuid"; open a new connection."""


class DriverError(JumpstarterError):
    """A driver call failed on the exporter; `code` is the gRPC status code name."""

    code: str = "UNKNOWN"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class DriverMethodNotFound(DriverError, AttributeError):
    code = "NOT_FOUND"


class DriverNotImplemented(DriverError, NotImplementedError):
    code = "UNIMPLEMENTED"


class DriverInvalidArgument(DriverError, ValueError):
    code = "INVALID_ARGUMENT"


class DriverTimeout(DriverError, TimeoutError):
    code = "DEADLINE_EXCEEDED"


class DriverUnavailable(DriverError, ConnectionError):
    code = "UNAVAILABLE"


class DriverInternalError(DriverError, OSError):
    code = "INTERNAL"


class ExporterNotReady(DriverError):
    code = "FAILED_PRECONDITION"


class MethodNotFound(LookupError):
    """Raised on the exporter for an unknown driver or method: travels as NOT_FOUND."""


class NotReady(RuntimeError):
    """Raised on the exporter when the session does not accept calls: FAILED_PRECONDITION."""


@cache
def _tables() -> tuple[tuple[tuple[type[BaseException], Any], ...], dict[Any, type[DriverError]]]:
    """Built on first use, so that importing this module does not import gRPC."""
    import grpc

    # Order matters: subclasses before their bases (ConnectionError is an OSError).
    to_status = (
        (MethodNotFound, grpc.StatusCode.NOT_FOUND),
        (NotReady, grpc.StatusCode.FAILED_PRECONDITION),
        (NotImplementedError, grpc.StatusCode.UNIMPLEMENTED),
        (ValueError, grpc.StatusCode.INVALID_ARGUMENT),
        (TimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED),
        (ConnectionError, grpc.StatusCode.UNAVAILABLE),
        (OSError, grpc.StatusCode.INTERNAL),
    )
    to_exception = {
        grpc.StatusCode.NOT_FOUND: DriverMethodNotFound,
        grpc.StatusCode.UNIMPLEMENTED: DriverNotImplemented,
        grpc.StatusCode.INVALID_ARGUMENT: DriverInvalidArgument,
        grpc.StatusCode.DEADLINE_EXCEEDED: DriverTimeout,
        grpc.StatusCode.UNAVAILABLE: DriverUnavailable,
        grpc.StatusCode.INTERNAL: DriverInternalError,
        grpc.StatusCode.FAILED_PRECONDITION: ExporterNotReady,
    }
    return to_status, to_exception


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and one-line human message for an exception raised by a driver."""
    import grpc

    code = grpc.StatusCode.UNKNOWN
    for kind, status in _tables()[0]:
        if isinstance(exc, kind):
            code = status
            break
    message = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror and exc.filename:
        message = f"{exc.strerror}: {exc.filename}"
    return code, message


# gRPC's own details when the connection (a router tunnel, an exporter socket) went away under a call
CONNECTION_LOST = ("Stream removed", "Socket closed")
# gRPC's own details when it could not connect at all (not a driver's "cannot connect to ..." message)
UNREACHABLE = ("failed to connect", "connections to all backends failing")


def from_rpc(exc: grpc.RpcError, what: str = "") -> JumpstarterError:
    """`error_for` the status of a failed gRPC call (`grpc.RpcError`)."""
    import grpc

    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return error_for(code, details, what)


def error_for(code: grpc.StatusCode, details: str | None, what: str = "") -> JumpstarterError:
    """The client-side exception for a failed call (`what`: the call, named in connection errors)."""
    import grpc

    text = details or ""
    if code == grpc.StatusCode.UNAVAILABLE and text.startswith(CONNECTION_LOST):
        # gRPC's own words ("Stream removed (Socket closed)") do not say what went away
        return DriverUnavailable(
            f"{what}: the connection to the exporter was lost ({details}); the next call reconnects",
            code.name,
        )
    if code == grpc.StatusCode.UNAVAILABLE and any(words in text.lower() for words in UNREACHABLE):
        return ConnectError(f"{what}: exporter unreachable: {details}")
    kind = _tables()[1].get(code, DriverError)
    return kind(details or code.name, code.name)
