"""One table between exceptions and gRPC status codes (PROTOCOL.md §4)."""

from __future__ import annotations

import grpc
import pytest

from jumpstarter import errors


@pytest.mark.parametrize(
    "exc, code",
    [
        (NotImplementedError("x"), grpc.StatusCode.UNIMPLEMENTED),
        (ValueError("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (TimeoutError("x"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (ConnectionRefusedError("x"), grpc.StatusCode.UNAVAILABLE),
        (ConnectionError("x"), grpc.StatusCode.UNAVAILABLE),
        (FileNotFoundError(2, "No such file", "/dev/ttyUSB9"), grpc.StatusCode.INTERNAL),
        (RuntimeError("x"), grpc.StatusCode.UNKNOWN),
        (KeyError("x"), grpc.StatusCode.UNKNOWN),
        (errors.MethodNotFound("x"), grpc.StatusCode.NOT_FOUND),
        (errors.NotReady("x"), grpc.StatusCode.FAILED_PRECONDITION),
    ],
)
def test_exception_maps_to_status(exc, code):
    assert errors.status_for(exc)[0] == code


def test_os_error_message_names_the_file():
    assert (
        errors.status_for(FileNotFoundError(2, "No such file", "/dev/ttyUSB9"))[1]
        == "No such file: /dev/ttyUSB9"
    )


def test_exception_without_text_still_has_a_message():
    assert errors.status_for(RuntimeError())[1] == "RuntimeError"


@pytest.mark.parametrize(
    "code, builtin",
    [
        (grpc.StatusCode.INVALID_ARGUMENT, ValueError),
        (grpc.StatusCode.UNIMPLEMENTED, NotImplementedError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, TimeoutError),
        (grpc.StatusCode.UNAVAILABLE, ConnectionError),
        (grpc.StatusCode.NOT_FOUND, AttributeError),
        (grpc.StatusCode.INTERNAL, OSError),
    ],
)
def test_client_errors_are_builtin_kinds_with_the_server_message(code, builtin):
    exc = errors.error_for(code, "the server said so")
    assert isinstance(exc, builtin) and isinstance(exc, errors.DriverError)
    assert str(exc) == "the server said so" and exc.code == code.name


@pytest.mark.parametrize(
    "details, kind, text",
    [
        (
            "Stream removed (Connection reset)",
            errors.DriverUnavailable,
            "the connection to the exporter was lost",
        ),
        ("Socket closed", errors.DriverUnavailable, "the connection to the exporter was lost"),
        ("failed to connect to all addresses", errors.ConnectError, "exporter unreachable"),
        ("connections to all backends failing; last error: ...", errors.ConnectError, "exporter unreachable"),
        (
            "cannot connect to 127.0.0.1:1",
            errors.DriverUnavailable,
            "cannot connect to 127.0.0.1:1",
        ),  # a driver's
    ],
)
def test_unavailable_says_whether_the_exporter_connection_was_lost_or_unreachable(details, kind, text):
    exc = errors.error_for(grpc.StatusCode.UNAVAILABLE, details, "power.on")
    assert type(exc) is kind and isinstance(exc, ConnectionError) and text in str(exc)
