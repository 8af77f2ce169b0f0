"""The in-test API server's ServiceAccount tokens behave as the Kubernetes API documents them
(TokenRequest, TokenReview), through the official client: tests of the identity code rely on it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client, config

from tests.harness.kube_api import KubeApiServer


@pytest.fixture
def apis() -> Iterator[tuple[KubeApiServer, client.CoreV1Api, client.AuthenticationV1Api]]:
    with KubeApiServer() as api:
        connection = config.new_client_from_config(api.kubeconfig)
        yield api, client.CoreV1Api(connection), client.AuthenticationV1Api(connection)


def _token(core: client.CoreV1Api, name: str, audiences: list[str] | None = None) -> str:
    spec: dict[str, object] = {"expirationSeconds": 3600}
    if audiences is not None:
        spec["audiences"] = audiences
    return core.create_namespaced_service_account_token(name, "lab", {"spec": spec}).status.token


def test_a_requested_token_is_reviewed_for_its_audience_only(apis) -> None:
    _, core, auth = apis
    core.create_namespaced_service_account("lab", {"metadata": {"name": "board1"}})
    token = _token(core, "board1", ["ctl.example:443"])
    review = auth.create_token_review({"spec": {"token": token, "audiences": ["ctl.example:443"]}})
    assert review.status.authenticated is True
    assert review.status.user.username == "system:serviceaccount:lab:board1"
    assert review.status.audiences == ["ctl.example:443"]
    other = auth.create_token_review({"spec": {"token": token, "audiences": ["elsewhere:443"]}})
    assert other.status.authenticated is False and "audiences" in other.status.error


def test_a_token_dies_with_its_service_account(apis) -> None:
    _, core, auth = apis
    core.create_namespaced_service_account("lab", {"metadata": {"name": "board1"}})
    token = _token(core, "board1")
    core.delete_namespaced_service_account("board1", "lab")
    core.create_namespaced_service_account("lab", {"metadata": {"name": "board1"}})  # same name, new uid
    review = auth.create_token_review({"spec": {"token": token}})
    assert review.status.authenticated is False


def test_token_requests_are_validated(apis) -> None:
    _, core, auth = apis
    with pytest.raises(client.ApiException) as missing:
        _token(core, "nobody")
    assert missing.value.status == 404
    core.create_namespaced_service_account("lab", {"metadata": {"name": "board1"}})
    with pytest.raises(client.ApiException) as short:
        core.create_namespaced_service_account_token("board1", "lab", {"spec": {"expirationSeconds": 60}})
    assert short.value.status == 422
    forged = auth.create_token_review({"spec": {"token": "not-a-token"}})
    assert forged.status.authenticated is False


def test_secrets_are_plain_namespaced_objects(apis) -> None:
    _, core, _ = apis
    core.create_namespaced_secret("lab", {"metadata": {"name": "c-token"}, "data": {"token": "eA=="}})
    assert core.read_namespaced_secret("c-token", "lab").data == {"token": "eA=="}
    assert [s.metadata.name for s in core.list_namespaced_secret("lab").items] == ["c-token"]
