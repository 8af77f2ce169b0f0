"""Router tokens (PROTOCOL.md §3): short-lived JWTs naming one spliced stream.

The controller mints one pair per `Dial`: a token for the client and one for the
exporter, with the same subject (the stream id) by which routerd pairs the two
callers. HS256 with a key shared by the controller and every router, claims as
upstream: `iss=https://jumpstarter.dev/stream`, `aud=[https://jumpstarter.dev/router]`,
`sub=<stream uuid>`, `exp`, `nbf`, `iat`, `jti`; plus our own `jumpstarter.dev/role`
(client|exporter) and `jumpstarter.dev/lease` (`<namespace>/<lease>`), which bind
each token to one side of one stream of one lease. Peers treat the token as
opaque and upstream routers ignore the extra claims; tokens without them (from
an upstream controller) still verify, as "unbound" tokens.

The key is the text of the key file with surrounding whitespace removed, used
verbatim as the HMAC secret (upstream uses its `ROUTER_KEY` string the same way),
so one key file can be shared with upstream controllers and routers.
"""

from __future__ import annotations

import os
import secrets
import stat
import time
import uuid
from dataclasses import dataclass

import jwt

from jumpstarter.errors import ConfigError
from jumpstarter.files import write_atomic

ISSUER = "https://jumpstarter.dev/stream"
AUDIENCE = "https://jumpstarter.dev/router"
ALGORITHM = "HS256"
ACCEPTED_ALGORITHMS = ["HS256", "HS384", "HS512"]  # upstream routers accept all three
DEFAULT_TTL = 1800.0
LEEWAY = 30.0  # seconds of clock skew tolerated between the controller and a router
MIN_KEY_BYTES = 32
ROLE_CLAIM = "jumpstarter.dev/role"
LEASE_CLAIM = "jumpstarter.dev/lease"
ROLES = ("client", "exporter")
MAX_LEASE_CLAIM = 300  # namespace and lease names are bounded well below this


class RouterTokenError(Exception):
    """A router token did not verify; `reason` says why in a few words (never the token)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class RouterClaims:
    """What routerd needs from a verified token; `role`/`lease` are None for unbound tokens."""

    stream_id: str
    expires: float
    role: str | None = None
    lease: str | None = None


def mint(
    key: bytes,
    stream_id: str | None = None,
    ttl: float = DEFAULT_TTL,
    role: str | None = None,
    lease: str | None = None,
) -> str:
    """A router token for `stream_id` (a fresh uuid when None), valid for `ttl` seconds.

    With `role` and `lease` the token is bound to that side of the stream of that lease.
    """
    if (role is None) != (lease is None) or (role is not None and role not in ROLES):
        raise ValueError("a bound router token needs a role (client|exporter) and a lease")
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": ISSUER,
        "aud": [AUDIENCE],
        "sub": stream_id or str(uuid.uuid4()),
        "iat": now,
        "nbf": now,
        "exp": now + max(1, int(ttl)),
        "jti": str(uuid.uuid4()),
    }
    if role is not None:
        claims[ROLE_CLAIM] = role
        claims[LEASE_CLAIM] = lease
    return jwt.encode(claims, key, algorithm=ALGORITHM)


def mint_pair(key: bytes, lease: str, ttl: float = DEFAULT_TTL) -> tuple[str, str]:
    """(client token, exporter token) for one fresh stream of `lease` (`<namespace>/<name>`)."""
    stream_id = str(uuid.uuid4())
    return (
        mint(key, stream_id, ttl, role="client", lease=lease),
        mint(key, stream_id, ttl, role="exporter", lease=lease),
    )


def verify(key: bytes, token: str) -> str:
    """Check signature, issuer, audience and times; return the stream id (`sub`)."""
    return verify_claims(key, token).stream_id


def verify_claims(key: bytes, token: str) -> RouterClaims:
    """Check signature, issuer, audience, times and our binding claims.

    Raises RouterTokenError with a short reason on any failure.
    """
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=ACCEPTED_ALGORITHMS,
            audience=AUDIENCE,
            issuer=ISSUER,
            leeway=LEEWAY,
            options={"require": ["exp", "iat", "sub"]},
        )
    except jwt.ExpiredSignatureError:
        raise RouterTokenError("token expired") from None
    except jwt.ImmatureSignatureError:
        raise RouterTokenError("token not yet valid") from None
    except jwt.InvalidAudienceError:
        raise RouterTokenError("token is not for a router (wrong audience)") from None
    except jwt.InvalidIssuerError:
        raise RouterTokenError("token is not a stream token (wrong issuer)") from None
    except jwt.InvalidSignatureError:
        raise RouterTokenError("bad signature (router key differs from the controller's?)") from None
    except jwt.InvalidAlgorithmError:
        raise RouterTokenError("token signed with an unsupported algorithm") from None
    except jwt.MissingRequiredClaimError as exc:
        raise RouterTokenError(f"token lacks the {exc.claim!r} claim") from None
    except jwt.InvalidTokenError as exc:
        raise RouterTokenError(f"malformed token: {exc}") from None
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise RouterTokenError("token has an empty stream id")
    role, lease = claims.get(ROLE_CLAIM), claims.get(LEASE_CLAIM)
    if role is None and lease is None:
        return RouterClaims(subject, float(claims["exp"]))
    if role not in ROLES:
        raise RouterTokenError("token names an unknown peer role")
    if not isinstance(lease, str) or not lease or len(lease) > MAX_LEASE_CLAIM:
        raise RouterTokenError("token names no valid lease")
    return RouterClaims(subject, float(claims["exp"]), role, lease)


def load_key(path: str) -> bytes:
    """Read the shared router key; refuse a file that other users can access.

    Group read is allowed (controllerd and routerd may run as different users of
    one group); group write and any access by others are refused.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: router key file missing (copy it from the controller, or create one"
            " with `jumpstarter-routerd --create-key`)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read router key: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{path}: router key is not a regular file")
        if info.st_mode & 0o027:
            raise ConfigError(
                f"{path}: router key is accessible to other users (mode {stat.S_IMODE(info.st_mode):04o});"
                f" run `chmod 600 {path}`"
            )
        key = handle.read(4096).strip()
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(f"{path}: router key too short ({len(key)} bytes, need at least {MIN_KEY_BYTES})")
    return key


def generate_key(path: str) -> bytes:
    """Create a new key file (32 random bytes as hex, mode 0600); never overwrites one.

    Written to a temporary file and linked into place, so readers never see a
    partial key and a concurrent creator loses cleanly (ConfigError: file exists).
    """
    key = secrets.token_hex(32).encode()
    try:
        write_atomic(path, key + b"\n", 0o600, exclusive=True, dir_mode=0o700)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot create the router key: {exc.strerror or exc}") from None
    return key
