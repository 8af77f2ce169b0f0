"""Router tokens (PROTOCOL.md §3): short-lived JWTs naming one spliced stream.

The controller mints one per `Dial` and hands the identical token to both peers;
routerd verifies it and pairs the two callers by its subject (the stream id).
HS256 with a key shared by the controller and every router, claims as upstream:
`iss=https://jumpstarter.dev/stream`, `aud=[https://jumpstarter.dev/router]`,
`sub=<stream uuid>`, `exp`, `nbf`, `iat`, `jti`.

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


class RouterTokenError(Exception):
    """A router token did not verify; `reason` says why in a few words (never the token)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def mint(key: bytes, stream_id: str | None = None, ttl: float = DEFAULT_TTL) -> str:
    """A router token for `stream_id` (a fresh uuid when None), valid for `ttl` seconds."""
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": [AUDIENCE],
        "sub": stream_id or str(uuid.uuid4()),
        "iat": now,
        "nbf": now,
        "exp": now + max(1, int(ttl)),
        "jti": str(uuid.uuid4()),
    }
    return jwt.encode(claims, key, algorithm=ALGORITHM)


def verify(key: bytes, token: str) -> str:
    """Check signature, issuer, audience and times; return the stream id (`sub`).

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
    return subject


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
