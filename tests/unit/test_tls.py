"""Self-signed TLS material: generated once, reused, usable by a real gRPC TLS handshake."""

from __future__ import annotations

import datetime
import os
import stat
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from jumpstarter import tls
from jumpstarter.errors import ConfigError
from jumpstarter.v1 import router_pb2, router_pb2_grpc


def test_generates_a_p256_ca_certificate_valid_ten_years_with_the_given_names(tmp_path: Any) -> None:
    cert_path, key_path = str(tmp_path / "tls" / "tls.crt"), str(tmp_path / "tls" / "tls.key")
    cert_pem, key_pem = tls.load_or_create(cert_path, key_path, ["router.lab.example", "10.0.0.5"])
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    assert set(tls.certificate_names(cert_pem)) == {
        "router.lab.example",
        "10.0.0.5",
        "localhost",
        "127.0.0.1",
        "::1",
    }
    lifetime = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(days=3640) < lifetime <= datetime.timedelta(days=3650)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(cert_path).st_mode) == 0o644
    assert sorted(os.listdir(tmp_path / "tls")) == ["tls.crt", "tls.key"]
    assert tls.describe(cert_pem)["self_signed"] is True


def test_existing_files_are_reused_not_regenerated(tmp_path: Any) -> None:
    paths = str(tmp_path / "c.pem"), str(tmp_path / "k.pem")
    first = tls.load_or_create(*paths, ["a"])
    assert tls.load_or_create(*paths, ["b"]) == first


def test_a_lone_cert_or_key_is_an_error_and_nothing_is_overwritten(tmp_path: Any) -> None:
    cert_path, key_path = str(tmp_path / "c.pem"), str(tmp_path / "k.pem")
    tls.load_or_create(cert_path, key_path, [])
    os.unlink(key_path)
    with pytest.raises(ConfigError, match="remove both"):
        tls.load_or_create(cert_path, key_path, [])
    assert not os.path.exists(key_path)


def test_a_key_from_another_pair_is_refused(tmp_path: Any) -> None:
    a = str(tmp_path / "a.crt"), str(tmp_path / "a.key")
    b = str(tmp_path / "b.crt"), str(tmp_path / "b.key")
    tls.load_or_create(*a, [])
    tls.load_or_create(*b, [])
    with pytest.raises(ConfigError, match="does not belong"):
        tls.load_or_create(a[0], b[1], [])
    (tmp_path / "bad.crt").write_text("hello")
    with pytest.raises(ConfigError, match="not a PEM certificate"):
        tls.load_or_create(str(tmp_path / "bad.crt"), a[1], [])


def test_covers_matches_exact_names_ips_and_wildcards() -> None:
    cert_pem, _ = tls.generate_self_signed(["*.routers.example", "router.example"])
    assert tls.covers(cert_pem, "router.example")
    assert tls.covers(cert_pem, "r1.routers.example")
    assert tls.covers(cert_pem, "127.0.0.1") and tls.covers(cert_pem, "[::1]")
    assert not tls.covers(cert_pem, "a.b.routers.example")
    assert not tls.covers(cert_pem, "other.example")


class Echo(router_pb2_grpc.RouterServiceServicer):
    def Stream(self, request_iterator: Any, context: Any) -> Any:
        for request in request_iterator:
            yield router_pb2.StreamResponse(payload=request.payload)


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "router.test"])
def test_grpc_clients_trusting_the_certificate_connect_by_each_name(tmp_path: Any, host: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    cert_pem, key_pem = tls.load_or_create(str(tmp_path / "c"), str(tmp_path / "k"), ["router.test"])
    server = grpc.server(ThreadPoolExecutor(2))
    router_pb2_grpc.add_RouterServiceServicer_to_server(Echo(), server)
    port = server.add_secure_port("127.0.0.1:0", tls.server_credentials(cert_pem, key_pem))
    server.start()
    try:
        options = [("grpc.ssl_target_name_override", host)] if host == "router.test" else []
        target = f"{host}:{port}" if host != "router.test" else f"127.0.0.1:{port}"
        creds = grpc.ssl_channel_credentials(root_certificates=cert_pem)
        with grpc.secure_channel(target, creds, options=options) as channel:
            replies = router_pb2_grpc.RouterServiceStub(channel).Stream(
                iter([router_pb2.StreamRequest(payload=b"hi")]), timeout=10
            )
            assert [r.payload for r in replies] == [b"hi"]
    finally:
        server.stop(None)


def test_a_client_trusting_another_certificate_is_refused(tmp_path: Any) -> None:
    from concurrent.futures import ThreadPoolExecutor

    cert_pem, key_pem = tls.load_or_create(str(tmp_path / "c"), str(tmp_path / "k"), [])
    other_pem, _ = tls.generate_self_signed([])
    server = grpc.server(ThreadPoolExecutor(2))
    router_pb2_grpc.add_RouterServiceServicer_to_server(Echo(), server)
    port = server.add_secure_port("127.0.0.1:0", tls.server_credentials(cert_pem, key_pem))
    server.start()
    try:
        creds = grpc.ssl_channel_credentials(root_certificates=other_pem)
        with grpc.secure_channel(f"127.0.0.1:{port}", creds) as channel:
            with pytest.raises(grpc.RpcError) as caught:
                list(router_pb2_grpc.RouterServiceStub(channel).Stream(iter([]), timeout=5))
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(None)
