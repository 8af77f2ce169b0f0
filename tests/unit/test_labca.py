"""The lab CA: made once (also by two daemons starting together), signs server certificates that a
real gRPC TLS handshake accepts; `channels.tls_failure` names why another CA is refused."""

from __future__ import annotations

import base64
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from cryptography import x509

from jumpstarter import channels, tls
from jumpstarter.errors import ConfigError
from jumpstarter.names import InvalidName, check_host
from jumpstarter.v1 import router_pb2, router_pb2_grpc


class Echo(router_pb2_grpc.RouterServiceServicer):
    def Stream(self, request_iterator: Any, context: Any) -> Any:  # noqa: N802 - gRPC method name
        for request in request_iterator:
            yield router_pb2.StreamResponse(payload=request.payload)


def serve(cert_pem: bytes, key_pem: bytes) -> tuple[grpc.Server, int]:
    server = grpc.server(ThreadPoolExecutor(2))
    router_pb2_grpc.add_RouterServiceServicer_to_server(Echo(), server)
    port = server.add_secure_port("127.0.0.1:0", tls.server_credentials(cert_pem, key_pem))
    server.start()
    return server, port


def test_two_daemons_issuing_at_once_share_one_ca_whose_key_is_private(tmp_path: Any) -> None:
    ca_cert, ca_key = str(tmp_path / "tls" / "ca.crt"), str(tmp_path / "tls" / "ca.key")
    barrier = threading.Barrier(2)

    def start(name: str) -> tuple[bytes, bytes, bool]:
        barrier.wait(30)
        paths = str(tmp_path / "tls" / f"{name}.crt"), str(tmp_path / "tls" / f"{name}.key")
        return tls.load_or_issue(*paths, [f"{name}.lab.example"], ca_cert, ca_key)

    # .result() re-raises a thread's exception, so a broken CA race fails the test instead of vanishing
    with ThreadPoolExecutor(2) as pool:
        futures = {name: pool.submit(start, name) for name in ("controller", "router")}
        results = {name: future.result(timeout=60) for name, future in futures.items()}
    with open(ca_cert, "rb") as handle:
        ca_pem = handle.read()
    for name, (cert_pem, _key, generated) in results.items():
        assert generated and tls.signed_by(cert_pem, ca_pem), name
        assert f"{name}.lab.example" in tls.certificate_names(cert_pem)
        leaf = x509.load_pem_x509_certificate(cert_pem)
        assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert os.stat(ca_key).st_mode & 0o777 == 0o600
    again = tls.load_or_issue(
        str(tmp_path / "tls" / "router.crt"), str(tmp_path / "tls" / "router.key"), [], ca_cert, ca_key
    )
    assert again == (*results["router"][:2], False)  # existing files are used as they are


def test_a_ca_certificate_without_its_key_cannot_sign_and_says_so(tmp_path: Any) -> None:
    ca_cert = str(tmp_path / "ca.crt")
    with open(ca_cert, "wb") as handle:
        handle.write(tls.generate_ca()[0])
    with pytest.raises(ConfigError, match="ca.key: missing while .*ca.crt exists"):
        tls.load_or_issue(str(tmp_path / "c"), str(tmp_path / "k"), [], ca_cert, str(tmp_path / "ca.key"))
    assert not os.path.exists(tmp_path / "c")


def test_a_lab_ca_leaf_serves_grpc_and_another_ca_is_named_as_the_cause(tmp_path: Any) -> None:
    ca = tls.load_or_create_ca(str(tmp_path / "ca.crt"), str(tmp_path / "ca.key"))
    server, port = serve(*tls.issue(ca, ["router.test"]))
    endpoint = f"127.0.0.1:{port}"
    try:
        creds = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem)
        with grpc.secure_channel(endpoint, creds) as channel:
            replies = router_pb2_grpc.RouterServiceStub(channel).Stream(
                iter([router_pb2.StreamRequest(payload=b"hi")]), timeout=10
            )
            assert [r.payload for r in replies] == [b"hi"]
        right = base64.b64encode(ca.cert_pem).decode()
        assert channels.tls_failure(endpoint, right) is None
        wrong = base64.b64encode(tls.generate_ca()[0]).decode()
        problem = channels.tls_failure(endpoint, wrong, whose="exporter")
        assert problem is not None and problem.startswith(
            f"TLS to {endpoint} failed: certificate verify failed"
        )
        assert "the CA in your exporter config does not sign this server's certificate" in problem
        assert channels.tls_failure(endpoint, wrong, insecure=True) is None  # trust on first use
    finally:
        server.stop(None)


def test_an_endpoint_that_does_not_answer_is_not_called_a_tls_problem() -> None:
    import socket

    with socket.socket() as probe:  # a port that was free a moment ago: connection refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert channels.tls_failure(f"127.0.0.1:{port}", "", timeout=2) is None


@pytest.mark.parametrize("value", ["router.lab.example", "10.0.0.5", "[::1]", "Router-1"])
def test_certificate_hosts_accept_dns_names_and_ips(value: str) -> None:
    assert check_host(value) in {"router.lab.example", "10.0.0.5", "::1", "router-1"}


@pytest.mark.parametrize("value", ["", "a b", "*.lab", "x" * 300, "-bad.example", 5])
def test_certificate_hosts_refuse_anything_else(value: object) -> None:
    with pytest.raises(InvalidName):
        check_host(value)
