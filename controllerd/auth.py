"""Identities and tokens (PROTOCOL.md §3, DESIGN.md §5).

The controller signs ES256 JWTs for clients and exporters with a key kept on
disk. A token's audience is the controller's gRPC endpoint, so a token alone
tells a client where to connect, and tokens minted for another endpoint are
refused. Every token has a `jti`; revoking it takes effect at once.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jwt
import structlog
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from controllerd.errors import InvalidArgument, PermissionDenied, Unauthenticated
from controllerd.records import AuditEvent, TokenRecord
from controllerd.store import NotFound, StorageError, Store
from jumpstarter.errors import ConfigError
from jumpstarter.files import write_atomic

if TYPE_CHECKING:
    from controllerd.kube_identity import ClusterIdentities

log = structlog.get_logger("controllerd.auth")

ALGORITHM = "ES256"
DEFAULT_TTL = 365 * 24 * 3600.0
KINDS = ("Client", "Exporter")  # who may call over gRPC
VIEWER = "Viewer"  # a dashboard-only identity: its tokens are refused by every gRPC call (not in KINDS)
MAX_TOKEN = 16 * 1024
MAX_KEY_FILE = 64 * 1024
REVOCATION_SYNC = 2.0  # seconds: how late a revocation made on another replica can take effect here


@dataclass(frozen=True)
class Identity:
    kind: str  # Client | Exporter | Viewer (the dashboard only)
    namespace: str
    name: str
    uid: str
    jti: str

    @property
    def resource(self) -> str:
        return f"namespaces/{self.namespace}/{self.kind.lower()}s/{self.name}"


def load_or_create_key(path: str) -> ec.EllipticCurvePrivateKey:
    """The signing key: created (P-256, mode 0600, directory 0700) on first start.

    A key that cannot be read or parsed is a ConfigError naming `path`, never replaced.
    """
    if os.path.exists(path):
        try:
            with open(path, "rb") as handle:
                key = serialization.load_pem_private_key(handle.read(MAX_KEY_FILE), password=None)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the signing key: {exc.strerror or exc}") from None
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise ConfigError(
                f"{path}: not an unencrypted PEM private key (truncated or corrupt?); restore it from"
                " a backup, or remove it to create a new one (every issued token then stops working)"
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{path}: the signing key is not an EC private key")
        return key
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        write_atomic(path, pem, 0o600, exclusive=True, dir_mode=0o700)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot create the signing key: {exc.strerror or exc}") from None
    return key


def subject(kind: str, namespace: str, name: str, uid: str) -> str:
    return f"{kind.lower()}:{namespace}:{name}:{uid}"


class TokenAuthority:
    """Mints and checks the controller's own tokens."""

    def __init__(
        self, store: Store, key: ec.EllipticCurvePrivateKey, endpoint: str, audiences: list[str] | None = None
    ) -> None:
        self.store = store
        self.key = key
        self.public = key.public_key()
        self.endpoint = endpoint
        self.issuer = f"https://{endpoint}"
        self.audiences = [endpoint, *(audiences or [])]
        self.revoked: set[str] = set()
        self.on_revoke: Callable[[TokenRecord], None] = lambda record: None  # ends open streams
        self.cluster: ClusterIdentities | None = None  # ServiceAccount tokens (TokenReview), Kubernetes only

    async def load(self) -> None:
        self.revoked = {record.jti for record in await self.store.revoked_tokens()}

    async def sync_revocations(self) -> int:
        """Take in revocations another replica stored (Kubernetes store); returns how many were new.

        Each replica keeps the revoked set in memory: one revoked through another pod's admin socket
        reaches this one only through the store. Open streams of the new ones end (`on_revoke`)."""
        fresh = [r for r in await self.store.revoked_tokens() if r.jti not in self.revoked]
        for record in fresh:
            self.revoked.add(record.jti)
            self.on_revoke(record)
        return len(fresh)

    async def sync_revocations_forever(self, every: float = REVOCATION_SYNC) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                if count := await self.sync_revocations():
                    log.info("revocations made on another replica taken in", tokens=count)
            except StorageError as exc:  # the API server away: the next round tries again
                log.warning("cannot read revocations from the store", error=str(exc))

    async def issue(
        self, kind: str, namespace: str, name: str, uid: str, ttl: float = DEFAULT_TTL
    ) -> tuple[str, float]:
        now = time.time()
        jti = str(uuid.uuid4())
        expires = now + ttl
        claims = {
            "iss": self.issuer,
            "sub": subject(kind, namespace, name, uid),
            "aud": self.endpoint,
            "iat": int(now),
            "nbf": int(now),
            "exp": int(expires),
            "jti": jti,
        }
        token = jwt.encode(claims, self.key, algorithm=ALGORITHM)
        await self.store.save_token(TokenRecord(jti, str(claims["sub"]), namespace, kind, name, now, expires))
        return token, expires

    async def revoke(
        self,
        *,
        jti: str | None = None,
        subject_prefix: str | None = None,
        audit: Sequence[AuditEvent] = (),
    ) -> int:
        """Revoke one token, or every token of a subject (`client:ns:name:`); returns how many.

        The tokens and `audit` are stored in one write (the events are stored even if none matched)."""
        matched = []
        for record in await self.store.list_tokens():
            if record.revoked:
                continue
            if (jti and record.jti == jti) or (subject_prefix and record.subject.startswith(subject_prefix)):
                record.revoked = True
                matched.append(record)
        await self.store.save_tokens(matched, audit)
        for record in matched:
            self.revoked.add(record.jti)
            self.on_revoke(record)
        return len(matched)

    def ours(self, token: str) -> bool:
        """Whether `token` claims to come from this controller (unverified: only picks the check)."""
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return False
        return isinstance(claims, dict) and claims.get("iss") == self.issuer

    def verify(self, token: str) -> dict[str, Any]:
        if len(token) > MAX_TOKEN:
            raise Unauthenticated("token too long")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self.public,
                algorithms=[ALGORITHM],
                audience=self.audiences,
                issuer=self.issuer,
                options={"require": ["exp", "iat", "sub", "aud", "jti"]},
            )
        except jwt.InvalidAudienceError:
            raise Unauthenticated(
                f"token was issued for another controller (this is {self.endpoint})",
            ) from None
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("token expired; ask an admin for a new one") from None
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"invalid token: {exc}") from None
        if claims["jti"] in self.revoked:
            raise Unauthenticated("token revoked")
        return claims

    async def authenticate(self, metadata: Any, kind: str | None = None) -> Identity:
        """Check the call metadata (PROTOCOL.md §3) and return who is calling."""
        values: dict[str, list[str]] = {}
        for key, value in metadata or ():
            values.setdefault(key.lower(), []).append(value if isinstance(value, str) else value.decode())
        auth = values.get("authorization", [])
        if not auth:
            raise Unauthenticated("missing authorization metadata (Bearer token)")
        if len(auth) > 1:
            raise InvalidArgument("more than one authorization header")
        scheme, _, token = auth[0].partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise InvalidArgument("authorization must be 'Bearer <token>'")
        for header in ("jumpstarter-kind", "jumpstarter-namespace", "jumpstarter-name"):
            if len(values.get(header, [])) != 1:
                raise InvalidArgument(f"missing or repeated {header} metadata")
        md_kind = values["jumpstarter-kind"][0]
        namespace = values["jumpstarter-namespace"][0]
        name = values["jumpstarter-name"][0]
        if md_kind not in KINDS:
            raise InvalidArgument(
                f"jumpstarter-kind must be Client or Exporter, not {md_kind!r}",
            )
        if self.cluster is not None and len(token) <= MAX_TOKEN and not self.ours(token.strip()):
            if kind is not None and md_kind != kind:
                raise InvalidArgument(f"this call is for {kind.lower()}s, not {md_kind.lower()}s")
            return await self.cluster.authenticate(token.strip(), md_kind, namespace, name)
        claims = self.verify(token.strip())
        parts = str(claims["sub"]).split(":")
        if len(parts) != 4:
            raise Unauthenticated("token subject has the wrong shape")
        sub_kind, sub_ns, sub_name, uid = parts
        if sub_kind != md_kind.lower():
            raise InvalidArgument("object kind mismatch")
        if kind is not None and md_kind != kind:
            raise InvalidArgument(f"this call is for {kind.lower()}s, not {md_kind.lower()}s")
        if (sub_ns, sub_name) != (namespace, name):
            raise PermissionDenied("token does not belong to the named object")
        try:
            record = await (
                self.store.get_client(namespace, name)
                if md_kind == "Client"
                else self.store.get_exporter(namespace, name)
            )
        except NotFound:
            raise PermissionDenied(f"{md_kind.lower()} {namespace}/{name} does not exist") from None
        if record.uid != uid:
            raise PermissionDenied(
                f"{md_kind.lower()} {namespace}/{name} was re-created; this token is stale",
            )
        return Identity(md_kind, namespace, name, uid, str(claims["jti"]))

    async def authenticate_viewer(self, token: str) -> Identity:
        """Who presents `token` to the dashboard: a client or a viewer, current and not revoked.

        Exporter tokens are refused: an exporter has no business reading the lab's state."""
        claims = self.verify(token.strip())
        parts = str(claims["sub"]).split(":")
        if len(parts) != 4 or parts[0] not in ("client", VIEWER.lower()):
            raise PermissionDenied("the dashboard takes a client or viewer token")
        kind, namespace, name, uid = parts
        if kind == "client":
            try:
                record = await self.store.get_client(namespace, name)
            except NotFound:
                raise PermissionDenied(f"client {namespace}/{name} does not exist") from None
            if record.uid != uid:
                raise PermissionDenied(f"client {namespace}/{name} was re-created; this token is stale")
        elif not any(t.jti == claims["jti"] for t in await self.store.list_tokens(str(claims["sub"]))):
            raise PermissionDenied(f"viewer {namespace}/{name} does not exist")  # deleted with its tokens
        return Identity(kind.capitalize(), namespace, name, uid, str(claims["jti"]))
