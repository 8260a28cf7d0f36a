"""Authentication: argon2 passwords, server-side login sessions, throttling, CSRF tokens.

Login sessions live in the database (not in a node's memory) so that any node, and the
Socket.IO connection of the same browser, can check the cookie. The cookie holds a random
token; the table holds only its SHA-256.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import ForeignKey, Integer, String, case, delete, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from cloudhall.db import Base, Database, utcnow
from cloudhall.errors import NotFound, TooManyRequests, Unauthenticated
from cloudhall.identities import Principal, get_user, get_user_by_username
from cloudhall.settings import HttpSettings

SESSION_COOKIE = "ch_session"
CSRF_COOKIE = "ch_csrf"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"

_hasher = PasswordHasher()
# A valid hash to verify against when the username is unknown, so timing does not reveal it.
_DUMMY_HASH = _hasher.hash("not-a-password")
MIN_PASSWORD_LENGTH = 8


class LoginSession(Base):
    __tablename__ = "login_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    remote: Mapped[str] = mapped_column(String(64), default="")


class LoginThrottle(Base):
    """Failed logins per username and address (both counted), shared by every node."""

    __tablename__ = "login_throttle"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failure_at: Mapped[datetime] = mapped_column(default=utcnow)
    locked_until: Mapped[datetime | None] = mapped_column(nullable=True)


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Authenticated:
    principal: Principal
    csrf_token: str


class AuthService:
    """Logs users in and out and resolves a session cookie to a :class:`Principal`."""

    def __init__(self, db: Database, settings: HttpSettings) -> None:
        self._db = db
        self._settings = settings

    async def login(self, username: str, password: str, remote: str) -> tuple[str, Authenticated]:
        """Check credentials; return (cookie token, authenticated).

        Raises :class:`TooManyRequests` while the username or address is locked out and
        :class:`Unauthenticated` for a wrong username, password or a disabled account
        (one message for all three, so accounts cannot be enumerated).
        """
        now = utcnow()
        keys = [f"user:{username.strip().lower()}", f"addr:{remote}"]
        async with self._db.transaction() as session:
            for key in keys:
                row = await session.get(LoginThrottle, key)
                if row and row.locked_until and row.locked_until > now:
                    wait = int((row.locked_until - now).total_seconds()) + 1
                    raise TooManyRequests(
                        f"too many failed logins: try again in {wait} seconds", details={"retry_after": wait}
                    )
            user = await get_user_by_username(session, username.strip())
            ok = verify_password(user.password_hash if user else _DUMMY_HASH, password)
            if not ok or user is None or not user.enabled:
                await self._record_failure(session, keys, now)
        if not ok or user is None or not user.enabled:
            raise Unauthenticated("wrong username or password, or the account is disabled")
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        async with self._db.transaction() as session:
            for key in keys[:1]:
                await session.execute(delete(LoginThrottle).where(LoginThrottle.key == key))
            session.add(
                LoginSession(
                    token_hash=token_digest(token),
                    user_id=user.id,
                    csrf_token=csrf,
                    created_at=now,
                    expires_at=now + timedelta(seconds=self._settings.session_ttl_seconds),
                    remote=remote[:64],
                )
            )
            await session.execute(delete(LoginSession).where(LoginSession.expires_at < now))
        return token, Authenticated(Principal.from_user(user), csrf)

    async def _record_failure(self, session: AsyncSession, keys: list[str], now: datetime) -> None:
        """Count one failure per key atomically (two nodes failing at once both count)."""
        window = timedelta(seconds=self._settings.login_lockout_seconds)
        insert = sqlite_insert if session.bind.dialect.name == "sqlite" else pg_insert
        for key in keys:
            await session.execute(
                insert(LoginThrottle)
                .values(key=key, failures=0, last_failure_at=now)
                .on_conflict_do_nothing(index_elements=["key"])
            )
            # The address limit is looser: a whole service point may share one address.
            limit = self._settings.login_max_failures * (1 if key.startswith("user:") else 4)
            # A failure older than the window starts a new count.
            failures = case(
                (LoginThrottle.last_failure_at < now - window, 1), else_=LoginThrottle.failures + 1
            )
            await session.execute(
                update(LoginThrottle)
                .where(LoginThrottle.key == key)
                .values(
                    failures=failures,
                    last_failure_at=now,
                    locked_until=case((failures >= limit, now + window), else_=LoginThrottle.locked_until),
                )
            )

    async def resolve(self, token: str | None) -> Authenticated | None:
        """Return who holds this session cookie, or None when it is unknown, expired or disabled."""
        if not token or len(token) > 128:
            return None
        now = utcnow()
        async with self._db.transaction() as session:
            login = await session.get(LoginSession, token_digest(token))
            if login is None or login.expires_at <= now:
                return None
            try:
                user = await get_user(session, login.user_id)
            except NotFound:  # the user was deleted; a database fault must not look like "logged out"
                return None
            if not user.enabled:
                return None
            return Authenticated(Principal.from_user(user), login.csrf_token)

    async def logout(self, token: str | None) -> None:
        if not token:
            return
        async with self._db.transaction() as session:
            await session.execute(delete(LoginSession).where(LoginSession.token_hash == token_digest(token)))

    async def logout_user(self, user_id: int) -> None:
        """End every session of a user (after disabling them or changing their password)."""
        async with self._db.transaction() as session:
            await session.execute(delete(LoginSession).where(LoginSession.user_id == user_id))


def anonymous_csrf_token(secret_key: str, nonce: str) -> str:
    """CSRF token for a not-yet-logged-in browser (the login form): HMAC of its csrf cookie."""
    return hmac.new(secret_key.encode(), nonce.encode(), hashlib.sha256).hexdigest()


def csrf_matches(expected: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(expected.encode(), str(given).encode())

