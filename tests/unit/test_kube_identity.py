"""The TokenReview cache's bounds (controllerd/kube_identity.py): time, size, requests in flight.

Reviews go to the in-test API server through the official client where the answer matters; the
bounds on concurrency are measured with a review call that holds each request until released.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from controllerd.config import load_controller_config
from controllerd.errors import ResourceExhausted, Unauthenticated, Unavailable
from controllerd.kube_identity import TokenReviewer, cluster_review, token_jti
from jumpstarter.errors import ConfigError
from tests.harness.kube_api import KubeApiServer

AUDIENCE = "controller.example:8082"


@pytest.fixture
def api() -> Iterator[tuple[KubeApiServer, k8s.ApiClient]]:
    with KubeApiServer() as server:
        yield server, k8s_config.new_client_from_config(server.kubeconfig)


def _token(connection: k8s.ApiClient, name: str, audience: str = AUDIENCE) -> str:
    core = k8s.CoreV1Api(connection)
    core.create_namespaced_service_account("lab", {"metadata": {"name": name}})
    spec = {"audiences": [audience], "expirationSeconds": 3600}
    return str(core.create_namespaced_service_account_token(name, "lab", {"spec": spec}).status.token)


def _jwt(exp: float) -> str:
    def part(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none'})}.{part({'exp': exp})}.sig"


def test_answers_are_cached_for_their_time_and_refusals_briefly(api) -> None:
    server, connection = api
    good = _token(connection, "board1")
    wrong = _token(connection, "board2", audience="elsewhere:443")
    reviewer = TokenReviewer(cluster_review(connection), [AUDIENCE], cache_seconds=0.3, negative_seconds=0.3)

    async def run() -> None:
        for _ in range(5):
            assert await reviewer.username(good) == "system:serviceaccount:lab:board1"
            with pytest.raises(Unauthenticated, match="audience"):
                await reviewer.username(wrong)
        assert server.tokens.reviews == 2
        await asyncio.sleep(0.4)  # past both lifetimes: asked again
        await reviewer.username(good)
        with pytest.raises(Unauthenticated):
            await reviewer.username(wrong)
        assert server.tokens.reviews == 4
        await reviewer.username(good, fresh=True)  # a stream's re-review skips the cache
        assert server.tokens.reviews == 5

    asyncio.run(run())


def test_a_positive_answer_never_outlives_the_token() -> None:
    reviewer = TokenReviewer(lambda token, audiences: ("alice", ""), [AUDIENCE], cache_seconds=30)
    soon = _jwt(time.time() + 2)
    expired = _jwt(time.time() - 1)

    async def run() -> None:
        await reviewer.username(soon)
        await reviewer.username(expired)

    asyncio.run(run())
    answers = list(reviewer.cache.values())
    assert len(answers) == 1  # the expired token's answer is not kept at all
    assert answers[0].until <= time.monotonic() + 2


def test_the_cache_is_lru_bounded() -> None:
    asked: list[str] = []
    reviewer = TokenReviewer(
        lambda token, audiences: (asked.append(token) or "u", ""), [AUDIENCE], max_entries=3
    )

    async def run() -> None:
        for token in ("a", "b", "c", "a", "d"):  # "a" used again: "b" is the least recent
            await reviewer.username(token)
        await reviewer.username("a")
        await reviewer.username("b")

    asyncio.run(run())
    assert asked == ["a", "b", "c", "d", "b"]
    assert len(reviewer.cache) == 3


def test_reviews_in_flight_and_waiting_are_bounded() -> None:
    """A flood of distinct tokens: at most `in_flight` reach the API server at once, at most
    `max_waiting` are started (in flight or waiting), the rest are told to retry at once; one token asked 50 times is one review."""
    release = threading.Event()
    lock = threading.Lock()
    now, most, total = 0, 0, 0

    def review(token: str, audiences: list[str]) -> tuple[str, str]:
        nonlocal now, most, total
        with lock:
            now, total = now + 1, total + 1
            most = max(most, now)
        release.wait(30)
        with lock:
            now -= 1
        return "", "unknown token"

    reviewer = TokenReviewer(review, [AUDIENCE], in_flight=4, max_waiting=16)

    async def run() -> list[BaseException | str]:
        calls = [reviewer.username("same") for _ in range(50)]  # shared: one review
        calls += [reviewer.username(f"random-{i}") for i in range(100)]
        tasks = [asyncio.ensure_future(c) for c in calls]
        while reviewer.waiting < 16:  # every turn taken, every waiting place filled
            await asyncio.sleep(0.01)
        release.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(run())
    assert most == 4
    assert total == 16
    refused = [r for r in results if isinstance(r, Unauthenticated)]
    busy = [r for r in results if isinstance(r, ResourceExhausted)]
    assert (len(refused), len(busy)) == (50 + 15, 100 - 15)


def test_new_tokens_are_reviewed_at_a_bounded_rate() -> None:
    asked: list[str] = []
    reviewer = TokenReviewer(
        lambda token, audiences: (asked.append(token) or "u", ""), [AUDIENCE], rate=0.001, burst=3
    )

    async def run() -> None:
        for token in ("a", "b", "c"):
            await reviewer.username(token)
        with pytest.raises(ResourceExhausted, match="try again"):
            await reviewer.username("d")
        assert await reviewer.username("a") == "u"  # answered from the cache: not charged
        await reviewer.username("a", fresh=True)  # a stream's re-review: not charged either

    asyncio.run(run())
    assert asked == ["a", "b", "c", "a"]


def test_an_api_failure_is_not_cached() -> None:
    answers = iter([Unavailable("down"), ("alice", "")])

    def review(token: str, audiences: list[str]) -> tuple[str, str]:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    reviewer = TokenReviewer(review, [AUDIENCE])

    async def run() -> None:
        with pytest.raises(Unavailable):
            await reviewer.username("t")
        assert await reviewer.username("t") == "alice"

    asyncio.run(run())


def test_the_jti_names_a_token_without_revealing_it() -> None:
    token = "header.payload.signature"
    assert token_jti(token) == token_jti(token) and token_jti(token).startswith("sa:")
    assert "payload" not in token_jti(token) and len(token_jti(token)) == 19


def test_the_switch_defaults_on_with_the_kubernetes_store_only(tmp_path: Path) -> None:
    path = tmp_path / "controllerd.yaml"
    path.write_text("store: kubernetes://lab\n")
    assert load_controller_config(str(path)).kubernetes_identities is True
    path.write_text("store: kubernetes://lab\nkubernetes_identities: false\n")
    assert load_controller_config(str(path)).kubernetes_identities is False
    path.write_text(f"store: sqlite://{tmp_path}/c.db\n")
    assert load_controller_config(str(path)).kubernetes_identities is False
    path.write_text(f"store: sqlite://{tmp_path}/c.db\nkubernetes_identities: true\n")
    with pytest.raises(ConfigError, match=rf"^{path}:2: kubernetes_identities: .*Kubernetes store"):
        load_controller_config(str(path))
    path.write_text("store: kubernetes://lab\nkubernetes_identity_cache_seconds: 300\n")
    with pytest.raises(ConfigError, match=rf"^{path}:2: kubernetes_identity_cache_seconds: at most 30"):
        load_controller_config(str(path))
