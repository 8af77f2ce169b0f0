"""Dashboard logins: a token is posted once and traded for a session cookie.

Browsers cannot put a bearer token on a page load or an EventSource, so the page posts the
token (JSON, same origin only) and gets an opaque random session id in an HttpOnly, Secure,
SameSite=Strict `__Host-` cookie. Sessions live in memory only (a restart logs everyone out),
are bounded in number (per identity and in total: the oldest goes first) and in lifetime
(never past the token's own expiry), and end at once when their token is revoked.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from controllerd.auth import Identity, TokenAuthority

COOKIE = "__Host-jumpstarter-dashboard"
PER_IDENTITY = 8  # sessions one identity keeps (several browsers); its oldest goes first
SESSION_ID_BYTES = 32


@dataclass(frozen=True)
class Session:
    identity: Identity | None  # None: an anonymous visitor (only when the dashboard allows them)
    expires: float

    @property
    def who(self) -> str:
        if self.identity is None:
            return "anonymous"
        return f"{self.identity.kind.lower()}:{self.identity.namespace}/{self.identity.name}"

    @property
    def namespace(self) -> str | None:
        """The namespace this session may see (None: all, for anonymous dashboards)."""
        return None if self.identity is None else self.identity.namespace


class Sessions:
    def __init__(
        self,
        auth: TokenAuthority,
        *,
        lifetime: float,
        max_sessions: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.auth = auth
        self.lifetime = lifetime
        self.max_sessions = max_sessions
        self.clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()  # oldest first

    async def login(self, token: str) -> tuple[str, Session]:
        """A new session for the holder of `token`; raises Unauthenticated/PermissionDenied."""
        identity = await self.auth.authenticate_viewer(token)
        token_expires = float(self.auth.verify(token.strip())["exp"])
        now = self.clock()
        session = Session(identity, min(now + self.lifetime, token_expires))
        self._drop_expired(now)
        mine = [sid for sid, s in self._sessions.items() if s.identity == identity]
        for sid in mine[: max(0, len(mine) - PER_IDENTITY + 1)]:
            del self._sessions[sid]
        while len(self._sessions) >= self.max_sessions:
            self._sessions.popitem(last=False)
        sid = secrets.token_urlsafe(SESSION_ID_BYTES)
        self._sessions[sid] = session
        return sid, session

    def lookup(self, sid: str | None) -> Session | None:
        """The live session named by a cookie value, or None (unknown, expired or revoked)."""
        if not sid or len(sid) > 2 * SESSION_ID_BYTES:
            return None
        session = self._sessions.get(sid)
        if session is None:
            return None
        if session.expires <= self.clock() or (
            session.identity is not None and session.identity.jti in self.auth.revoked
        ):
            del self._sessions[sid]
            return None
        return session

    def logout(self, sid: str | None) -> None:
        if sid:
            self._sessions.pop(sid, None)

    def __len__(self) -> int:
        return len(self._sessions)

    def _drop_expired(self, now: float) -> None:
        for sid in [sid for sid, s in self._sessions.items() if s.expires <= now]:
            del self._sessions[sid]


def cookie_value(header: str | None) -> str | None:
    """Our session id from a Cookie header (other cookies ignored)."""
    for part in (header or "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            return value
    return None


def set_cookie(sid: str, max_age: float) -> str:
    return f"{COOKIE}={sid}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={max(0, int(max_age))}"


def clear_cookie() -> str:
    return f"{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0"
