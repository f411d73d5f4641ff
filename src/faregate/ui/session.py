"""The UI's session: a signed cookie that says who is looking (admin, or one virtual key by its
hash) and carries the session's CSRF token.

The cookie is signed with a key derived from the master key (HMAC), so it holds no secret: the
master key is never in it, and changing the master key ends every session. It expires after
`SESSION_MAX_AGE_S`; logout replaces it with an anonymous one.

A key's session holds no rights: what it may see is decided at every page from the key's row
and its user's role as they are then (site.Gate), so a demotion needs no cookie to change.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass, replace
from typing import Literal

import orjson

from faregate.secret import Secret

COOKIE = "faregate_ui"
SESSION_MAX_AGE_S = 12 * 3600
Role = Literal["anonymous", "admin", "key"]


@dataclass(frozen=True)
class Session:
    role: Role
    csrf: str                       # compared with every POSTed form's `csrf` field
    issued_at: int                  # unix seconds
    token: str | None = None        # role "key": the key's hash

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @classmethod
    def anonymous(cls, now_s: int) -> Session:
        return cls("anonymous", secrets.token_urlsafe(24), now_s)

    def signed_in(self, role: Role, now_s: int, token: str | None = None) -> Session:
        """A new session for whoever just logged in: a fresh CSRF token too, so a token seen
        before the login (a fixation) is worth nothing after it."""
        return replace(self, role=role, token=token, issued_at=now_s,
                       csrf=secrets.token_urlsafe(24))

    def csrf_matches(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(self.csrf.encode(),
                                                             presented.encode())


class SessionSigner:
    """Session <-> cookie value: base64(json) + "." + base64(hmac-sha256)."""

    def __init__(self, master_key: Secret, max_age_s: int = SESSION_MAX_AGE_S) -> None:
        self._key = hmac.new(master_key.reveal().encode(), b"faregate ui session v1",
                             hashlib.sha256).digest()
        self._max_age_s = max_age_s

    def dumps(self, session: Session) -> str:
        body = _b64(orjson.dumps({"r": session.role, "c": session.csrf, "i": session.issued_at,
                                  "t": session.token}))
        return f"{body}.{_b64(self._mac(body))}"

    def loads(self, value: str | None, now_s: int) -> Session | None:
        """The session in a cookie value; None if absent, forged, malformed or expired."""
        if not value or len(value) > 1024:
            return None
        body, _, mac = value.partition(".")
        try:
            if not hmac.compare_digest(_unb64(mac), self._mac(body)):
                return None
            data = orjson.loads(_unb64(body))
            session = Session(data["r"], data["c"], int(data["i"]), data["t"])
        except (ValueError, KeyError, TypeError):
            return None
        if session.role not in ("anonymous", "admin", "key") or not isinstance(session.csrf, str):
            return None
        if session.role == "key" and not isinstance(session.token, str):
            return None
        if not 0 <= now_s - session.issued_at <= self._max_age_s:
            return None
        return session

    def _mac(self, body: str) -> bytes:
        return hmac.new(self._key, body.encode(), hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
