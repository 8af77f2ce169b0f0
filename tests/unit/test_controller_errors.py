"""controllerd's one error table (controllerd/errors.py): each error a caller can see, and its status."""

from __future__ import annotations

import grpc
import pytest

from controllerd import errors
from controllerd.convert import BadName
from controllerd.policy import PolicyDenied
from controllerd.scheduler import QuotaExceeded
from controllerd.store import Conflict, NotFound, StorageError, StorageFull
from controllerd.validate import LeaseRequestError
from jumpstarter.names import InvalidName
from jumpstarter.selector import SelectorError

S = grpc.StatusCode


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.InvalidArgument("x"), S.INVALID_ARGUMENT),
        (BadName("x"), S.INVALID_ARGUMENT),
        (LeaseRequestError("x"), S.INVALID_ARGUMENT),
        (InvalidName("x"), S.INVALID_ARGUMENT),  # shared parsers' ValueErrors
        (SelectorError("x"), S.INVALID_ARGUMENT),
        (errors.Unauthenticated("x"), S.UNAUTHENTICATED),
        (errors.PermissionDenied("x"), S.PERMISSION_DENIED),
        (PolicyDenied("x"), S.PERMISSION_DENIED),
        (NotFound("x"), S.NOT_FOUND),
        (Conflict("x"), S.ALREADY_EXISTS),
        (errors.FailedPrecondition("x"), S.FAILED_PRECONDITION),
        (QuotaExceeded("x"), S.RESOURCE_EXHAUSTED),
        (errors.ResourceExhausted("x"), S.RESOURCE_EXHAUSTED),
        (StorageFull("x"), S.RESOURCE_EXHAUSTED),  # retry once there is room
        (StorageError("x"), S.UNAVAILABLE),
        (errors.Unavailable("x"), S.UNAVAILABLE),
        (errors.Unimplemented("x"), S.UNIMPLEMENTED),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else None,
)
def test_each_error_has_one_status_and_its_message_as_details(error, code):
    assert errors.status_of(error) == (code, "x")


@pytest.mark.parametrize("error", [KeyError("x"), TypeError("x"), RuntimeError("x"), LookupError("x")])
def test_anything_else_is_an_internal_error(error):
    assert errors.status_of(error) is None
