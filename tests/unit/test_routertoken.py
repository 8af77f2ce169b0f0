"""Router tokens: mint/verify round trip, every rejection reason, key files."""

from __future__ import annotations

import os
import stat
import time
from typing import Any

import jwt
import pytest

from jumpstarter import routertoken
from jumpstarter.errors import ConfigError
from jumpstarter.routertoken import RouterTokenError, generate_key, load_key, mint, verify

KEY = b"0123456789abcdef" * 4


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "iss": routertoken.ISSUER,
        "aud": [routertoken.AUDIENCE],
        "sub": "s",
        "iat": now,
        "nbf": now,
        "exp": now + 60,
        "jti": "j",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def test_minted_token_verifies_to_its_stream_id_with_upstream_claims() -> None:
    token = mint(KEY, "3f1c1a9e-0000-4000-8000-000000000001")
    assert verify(KEY, token) == "3f1c1a9e-0000-4000-8000-000000000001"
    header = jwt.get_unverified_header(token)
    body = jwt.decode(token, options={"verify_signature": False})
    assert header["alg"] == "HS256"
    assert body["iss"] == "https://jumpstarter.dev/stream"
    assert body["aud"] == ["https://jumpstarter.dev/router"]
    assert {"sub", "exp", "nbf", "iat", "jti"} <= set(body)
    assert 1790 <= body["exp"] - body["iat"] <= 1800


def test_each_mint_gets_a_fresh_stream_id_and_jti() -> None:
    a, b = (jwt.decode(mint(KEY), options={"verify_signature": False}) for _ in range(2))
    assert a["sub"] != b["sub"] and a["jti"] != b["jti"]


def test_tokens_signed_with_hs384_and_hs512_are_accepted_like_upstream() -> None:
    for algorithm in ("HS384", "HS512"):
        assert verify(KEY, jwt.encode(claims(), KEY, algorithm)) == "s"


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (lambda: jwt.encode(claims(exp=int(time.time()) - 120), KEY, "HS256"), "expired"),
        (lambda: jwt.encode(claims(nbf=int(time.time()) + 600), KEY, "HS256"), "not yet valid"),
        (lambda: jwt.encode(claims(aud=["https://jumpstarter.dev"]), KEY, "HS256"), "wrong audience"),
        (lambda: jwt.encode(claims(aud=None), KEY, "HS256"), "aud"),
        (lambda: jwt.encode(claims(iss="https://localhost:8085"), KEY, "HS256"), "wrong issuer"),
        (lambda: jwt.encode(claims(), b"x" * 64, "HS256"), "bad signature"),
        (lambda: jwt.encode(claims(exp=None), KEY, "HS256"), "'exp'"),
        (lambda: jwt.encode(claims(sub=None), KEY, "HS256"), "'sub'"),
        (lambda: jwt.encode(claims(sub=""), KEY, "HS256"), "empty stream id"),
        (lambda: jwt.encode(claims(), None, "none"), "algorithm"),
        (lambda: "not.a.jwt", "malformed"),
        (lambda: "", "malformed"),
    ],
    ids=[
        "expired",
        "not-yet-valid",
        "wrong-audience",
        "no-audience",
        "wrong-issuer",
        "wrong-key",
        "no-exp",
        "no-sub",
        "empty-sub",
        "alg-none",
        "garbage",
        "empty",
    ],
)
def test_verify_rejects_with_a_reason(token: Any, reason: str) -> None:
    with pytest.raises(RouterTokenError) as caught:
        verify(KEY, token())
    assert reason in caught.value.reason


def test_small_clock_skew_is_tolerated() -> None:
    assert verify(KEY, jwt.encode(claims(nbf=int(time.time()) + 10, iat=int(time.time()) + 10), KEY, "HS256"))


def test_generate_key_writes_64_hex_chars_mode_0600_and_never_overwrites(tmp_path: Any) -> None:
    path = str(tmp_path / "router.key")
    key = generate_key(path)
    assert len(key) == 64 and int(key, 16) >= 0
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_key(path) == key
    with pytest.raises(ConfigError, match="router.key: cannot create the router key: File exists"):
        generate_key(path)
    assert load_key(path) == key
    assert os.listdir(tmp_path) == ["router.key"]  # no temporary left behind


def test_the_key_is_the_file_text_used_verbatim(tmp_path: Any) -> None:
    path = tmp_path / "router.key"
    path.write_text("  shared-secret-from-an-upstream-ROUTER_KEY-value\n")
    path.chmod(0o600)
    key = load_key(str(path))
    assert key == b"shared-secret-from-an-upstream-ROUTER_KEY-value"
    token = jwt.encode(claims(), "shared-secret-from-an-upstream-ROUTER_KEY-value", "HS256")
    assert verify(key, token) == "s"


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o640, 0o440])
def test_load_key_accepts_owner_and_group_read(tmp_path: Any, mode: int) -> None:
    path = tmp_path / "router.key"
    path.write_text("a" * 64)
    path.chmod(mode)
    assert load_key(str(path)) == b"a" * 64


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o660, 0o602])
def test_load_key_refuses_a_key_others_can_read_or_change(tmp_path: Any, mode: int) -> None:
    path = tmp_path / "router.key"
    path.write_text("a" * 64)
    path.chmod(mode)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_key(str(path))


def test_load_key_refuses_missing_short_and_non_regular_files(tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match="missing"):
        load_key(str(tmp_path / "absent.key"))
    short = tmp_path / "short.key"
    short.write_text("abc\n")
    short.chmod(0o600)
    with pytest.raises(ConfigError, match="too short"):
        load_key(str(short))
    target = tmp_path / "real.key"
    target.write_text("a" * 64)
    target.chmod(0o600)
    (tmp_path / "link.key").symlink_to(target)
    with pytest.raises(ConfigError):
        load_key(str(tmp_path / "link.key"))


def test_a_dial_pair_shares_its_stream_and_binds_each_side_and_the_lease() -> None:
    from jumpstarter.routertoken import mint_pair, verify_claims

    client, exporter = mint_pair(KEY, "lab/lease-1")
    a, b = verify_claims(KEY, client), verify_claims(KEY, exporter)
    assert a.stream_id == b.stream_id
    assert (a.role, b.role) == ("client", "exporter")
    assert a.lease == b.lease == "lab/lease-1"
    unbound = verify_claims(KEY, mint(KEY))  # an upstream controller's token
    assert unbound.role is None and unbound.lease is None


def test_a_token_naming_an_unknown_role_does_not_verify() -> None:
    token = jwt.encode(
        {**claims(), "jumpstarter.dev/role": "admin", "jumpstarter.dev/lease": "lab/x"}, KEY, "HS256"
    )
    with pytest.raises(RouterTokenError, match="role"):
        verify(KEY, token)
