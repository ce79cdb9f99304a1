"""Staff authentication: argon2 passwords, hashed session tokens, CSRF, roles, lockout."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from .config import Settings
from .db import LoginFailure, StaffSession, User
from .errors import ApiError
from .timeutil import Clock

log = logging.getLogger(__name__)

ROLES = ("officer", "sergeant", "records", "admin")
#: Roles that take part in calls and create consultations.
CALL_ROLES = ("officer", "sergeant")
#: Roles that see every consultation, not only their own.
SUPERVISOR_ROLES = ("sergeant", "admin")

SESSION_COOKIE = "evr_session"
CSRF_HEADER = "X-CSRF-Token"
BAD_LOGIN = "Wrong user name or password."

_hasher = PasswordHasher()
# Verified against when the user name is unknown, so both cases cost the same.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


@dataclass(frozen=True)
class Staff:
    """The logged-in user behind a request."""

    id: int
    username: str
    role: str
    session_id: str
    csrf_token: str

    @property
    def sees_all(self) -> bool:
        return self.role in SUPERVISOR_ROLES

    def require(self, *roles: str) -> None:
        if self.role not in roles:
            raise ApiError(403, "forbidden", "Your role may not do that.")


async def add_user(db: AsyncSession, username: str, role: str, password: str, clock: Clock) -> User:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if not username or len(username) > 64 or not username.isprintable() or username.strip() != username:
        raise ValueError("user name must be 1-64 printable characters without surrounding spaces")
    if len(password) < 10:
        raise ValueError("password must be at least 10 characters")
    if await db.scalar(select(User).where(User.username == username)):
        raise ValueError(f"user {username!r} already exists")
    user = User(username=username, role=role, password_hash=hash_password(password), created_at=clock())
    db.add(user)
    await db.commit()
    return user


class Authenticator:
    """Logs staff in and out and resolves session cookies."""

    def __init__(self, settings: Settings, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock

    async def login(self, db: AsyncSession, username: str, password: str) -> tuple[Staff, str]:
        """Check a password; return the staff member and the session cookie's token."""
        now = self.clock()
        key = username.strip().lower()[:64]
        failure = await db.get(LoginFailure, key)
        if failure and failure.locked_until and failure.locked_until > now:
            log.warning("login refused: account locked (user=%s)", key)
            raise ApiError(429, "locked", "Too many failed attempts. Try again later.")
        user = await db.scalar(select(User).where(User.username == username))
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(
            None, verify_password, user.password_hash if user else _DUMMY_HASH, password
        )
        if not ok or user is None or user.disabled:
            await self._record_failure(db, key, failure)
            raise ApiError(401, "bad_credentials", BAD_LOGIN)
        if failure:
            await db.delete(failure)
        token = secrets.token_urlsafe(32)
        session = StaffSession(
            id=sha256_hex(token),
            user_id=user.id,
            csrf_token=secrets.token_urlsafe(32),
            created_at=now,
            expires_at=now + timedelta(hours=self.settings.session_ttl_hours),
        )
        db.add(session)
        await db.commit()
        log.info("login ok (user=%s role=%s)", user.username, user.role)
        return Staff(user.id, user.username, user.role, session.id, session.csrf_token), token

    async def _record_failure(self, db: AsyncSession, key: str, failure: Optional[LoginFailure]) -> None:
        now = self.clock()
        if failure is None:
            failure = LoginFailure(username=key, count=0, last_at=now)
            db.add(failure)
        failure.count += 1
        failure.last_at = now
        if failure.count >= self.settings.login_max_failures:
            failure.locked_until = now + timedelta(minutes=self.settings.login_lockout_minutes)
            failure.count = 0
            log.warning("login failures: user name locked (user=%s)", key)
        else:
            log.info("login failed (user=%s attempt=%d)", key, failure.count)
        count = failure.count
        await db.commit()
        # Slow down guessing: 0.25 s, 0.5 s, 1 s ... capped at 4 s.
        delay = min(4.0, self.settings.login_failure_delay * (2 ** max(0, count - 1)))
        await asyncio.sleep(delay)

    async def resolve(self, db: AsyncSession, token: Optional[str]) -> Optional[Staff]:
        if not token:
            return None
        session = await db.get(StaffSession, sha256_hex(token))
        if session is None:
            return None
        if session.expires_at <= self.clock():
            await db.delete(session)
            await db.commit()
            return None
        user = await db.get(User, session.user_id)
        if user is None or user.disabled:
            return None
        return Staff(user.id, user.username, user.role, session.id, session.csrf_token)

    async def logout(self, db: AsyncSession, staff: Staff) -> None:
        await db.execute(delete(StaffSession).where(StaffSession.id == staff.session_id))
        await db.commit()
        log.info("logout (user=%s)", staff.username)


def csrf_ok(staff: Staff, header: Optional[str]) -> bool:
    return bool(header) and hmac.compare_digest(staff.csrf_token, header or "")
