"""Staff authentication: argon2 passwords, hashed session tokens, CSRF, roles, lockout.

Guessing is bounded before any password is checked. Each attempt first reserves a
place, atomically (``INSERT … ON CONFLICT … DO UPDATE … RETURNING``, on SQLite and
PostgreSQL alike), in two counters: its client address's (across user names, in a
window of ``login_lockout_minutes``) and its user name's; the decision is taken on
the values the database returns, so forty guesses sent at once are counted as forty,
not as one each. Only an attempt both counters admit runs argon2. A success gives its
places back; a failure keeps them, and the failure that reaches
``login_max_failures`` locks the name for ``login_lockout_minutes``.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import logging
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Optional, cast

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import CursorResult, case, delete, literal, null, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from .config import Settings
from .db import ApiKey, LoginFailure, LoginThrottle, StaffSession, User, UTCDateTime
from .errors import ApiError
from .roles import API_KEY_ROLES, RESERVED_NAMES, ROLES, SUPERVISOR_ROLES
from .timeutil import Clock

__all__ = [
    "Authenticator", "BAD_LOGIN", "CSRF_HEADER", "MIN_PASSWORD", "SESSION_COOKIE", "Staff", "add_user",
    "check_password", "csrf_ok", "end_sessions", "hash_password", "insert_user", "new_api_key", "new_user",
    "resolve_api_key", "sha256_hex", "username_problem", "verify_password",
]

log = logging.getLogger(__name__)

SESSION_COOKIE = "evr_session"
CSRF_HEADER = "X-CSRF-Token"
BAD_LOGIN = "Wrong user name or password."
MIN_PASSWORD = 10

_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the user name is unknown, so both cases cost the same
    (made on first use: importing this module stays cheap for the command line)."""
    return _hasher.hash(secrets.token_urlsafe(16))


def sha256_hex(value: str) -> str:
    # surrogatepass: a token from a header or path that was not UTF-8 hashes (and
    # matches nothing) instead of failing with UnicodeEncodeError.
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


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
    #: Authenticated by an API key (``Authorization: Bearer``): no session, no CSRF.
    #: ``id`` is then minus the key's id, ``username`` the key's name.
    api_key: bool = False

    @property
    def sees_all(self) -> bool:
        return self.role in SUPERVISOR_ROLES

    def require(self, *roles: str) -> None:
        if self.role not in roles:
            raise ApiError(403, "forbidden", "Your role may not do that.")


# -- accounts -------------------------------------------------------------------------


def username_problem(username: str) -> Optional[str]:
    """Why ``username`` cannot be a user's name, or None when it can."""
    if not username or len(username) > 64 or not username.isprintable() or username.strip() != username:
        return "user name must be 1-64 printable characters without surrounding spaces"
    if ":" in username:
        return "user name must not hold a colon (the audit log names API keys key:NAME)"
    if unicodedata.normalize("NFKC", username).casefold() in RESERVED_NAMES:
        return f"the user names {' and '.join(RESERVED_NAMES)} are reserved (the audit log uses them)"
    return None


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"password must be at least {MIN_PASSWORD} characters")


def new_user(username: str, role: str, password: str, clock: Clock) -> User:
    """A user checked and with its password hashed, not yet added (ValueError says why not)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    problem = username_problem(username)
    if problem:
        raise ValueError(problem)
    check_password(password)
    return User(username=username, role=role, password_hash=hash_password(password), created_at=clock())


async def add_user(db: AsyncSession, username: str, role: str, password: str, clock: Clock,
                   commit: bool = True) -> User:
    """Add a user (ValueError says why not: a bad or reserved name, a short password,
    a name already taken). With ``commit=False`` the caller commits (with its audit entry)."""
    return await insert_user(db, new_user(username, role, password, clock), commit)


async def insert_user(db: AsyncSession, user: User, commit: bool = True) -> User:
    """Add a user made by :func:`new_user` (ValueError when the name is taken, also by
    someone adding it a moment ago)."""
    if await db.scalar(select(User.id).where(User.username == user.username)) is not None:
        raise ValueError(f"user {user.username!r} already exists")
    db.add(user)
    try:
        await db.flush()
        if commit:
            await db.commit()
    except IntegrityError:
        await db.rollback()
        raise ValueError(f"user {user.username!r} already exists") from None
    return user


async def end_sessions(db: AsyncSession, user_id: int) -> int:
    """Delete every session of a user (in the caller's transaction); how many there were."""
    result = await db.execute(delete(StaffSession).where(StaffSession.user_id == user_id))
    return int(cast(CursorResult[Any], result).rowcount or 0)


# -- logging in -----------------------------------------------------------------------


def _insert(db: AsyncSession) -> Any:
    """The dialect's INSERT, which has ``on_conflict_do_update`` on both databases."""
    dialect = db.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql
        return postgresql.insert
    if dialect == "sqlite":
        from sqlalchemy.dialects import sqlite
        return sqlite.insert
    raise RuntimeError(f"no atomic login counting on {dialect}")  # pragma: no cover - EVR runs on these two


def _at(value: datetime) -> Any:
    """A time as a bound value of the column type (naive UTC), wherever it is used."""
    return literal(value, UTCDateTime())


class Authenticator:
    """Logs staff in and out and resolves session cookies."""

    def __init__(self, settings: Settings, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        self._pruned_at: Optional[datetime] = None
        _dummy_hash()  # made now, so the first unknown name costs what a known one does

    @property
    def _lockout(self) -> timedelta:
        return timedelta(minutes=self.settings.login_lockout_minutes)

    async def check(self, db: AsyncSession, username: str, password: str, address: Optional[str]) -> User:
        """The user, once the throttles admit the attempt and the password is right;
        otherwise ApiError 429 (``locked``, ``throttled``) or 401 (``bad_credentials``)."""
        address = (address or "unknown")[:64]
        possible = username_problem(username) is None or await self._exists(db, username)
        key = username.strip().lower()[:64] if possible else None
        if key is not None:
            # Cheap refusal first: a locked name is refused without touching the address.
            if await self._locked(db, key):
                raise ApiError(429, "locked", "Too many failed attempts. Try again later.")
        admitted = await self._reserve(db, address, key)
        if not possible:  # no user can have this name: nothing to check
            await self._failed(db, address, None, 0)
            raise ApiError(401, "bad_credentials", BAD_LOGIN)
        user = await db.scalar(select(User).where(User.username == username))
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(None, verify_password, user.password_hash if user else _dummy_hash(),
                                        password)
        if not ok or user is None or user.disabled:
            await self._failed(db, address, key, admitted)
            raise ApiError(401, "bad_credentials", BAD_LOGIN)
        await self._succeeded(db, address, key)
        return user

    async def _exists(self, db: AsyncSession, username: str) -> bool:
        """A name no new user may have (reserved, say) that an older database holds."""
        if not username or len(username) > 64 or "\x00" in username:
            return False
        return await db.scalar(select(User.id).where(User.username == username)) is not None

    async def _locked(self, db: AsyncSession, key: str) -> bool:
        until = await db.scalar(select(LoginFailure.locked_until).where(LoginFailure.username == key))
        await db.commit()  # end the read: the writes below start a transaction of their own
        return until is not None and until > self.clock()

    async def _reserve(self, db: AsyncSession, address: str, key: Optional[str]) -> int:
        """Count this attempt against its address and its user name, atomically, and
        decide on the counts returned. Returns the name's count (its place in line)."""
        now = self.clock()
        insert = _insert(db)
        window_open = LoginThrottle.window_start > _at(now - self._lockout)
        by_address = (
            insert(LoginThrottle).values(address=address, count=1, window_start=now)
            .on_conflict_do_update(index_elements=[LoginThrottle.address], set_={
                "count": case((window_open, LoginThrottle.count + 1), else_=1),
                "window_start": case((window_open, LoginThrottle.window_start), else_=_at(now)),
            })
            .returning(LoginThrottle.count)
        )
        tries = (await db.execute(by_address)).scalar_one()
        if tries > self.settings.login_address_max_failures:
            await db.commit()
            log.warning("login refused: too many failures from one address")
            raise ApiError(429, "throttled", "Too many failed attempts from here. Try again later.")
        if key is None:
            await db.commit()
            return 0
        locked = LoginFailure.locked_until > _at(now)
        by_name = (
            insert(LoginFailure).values(username=key, count=1, last_at=now, locked_until=None)
            .on_conflict_do_update(index_elements=[LoginFailure.username], set_={
                # Locked: unchanged. A lock that has ended: start again. Otherwise one more.
                "count": case((locked, LoginFailure.count), (LoginFailure.locked_until.is_not(None), 1),
                              else_=LoginFailure.count + 1),
                "locked_until": case((locked, LoginFailure.locked_until), else_=null()),
                "last_at": _at(now),
            })
            .returning(LoginFailure.count, LoginFailure.locked_until)
        )
        count, until = (await db.execute(by_name)).one()
        if until is not None or count > self.settings.login_max_failures:
            if until is None:  # others hold every place: lock now, so the refusal ends
                await self._lock(db, key, now)
            await db.commit()
            log.warning("login refused: account locked (user=%s)", key)
            raise ApiError(429, "locked", "Too many failed attempts. Try again later.")
        await db.commit()
        return int(count)

    async def _lock(self, db: AsyncSession, key: str, now: datetime) -> None:
        await db.execute(update(LoginFailure).where(LoginFailure.username == key,
                                                    LoginFailure.locked_until.is_(None))
                         .values(locked_until=now + self._lockout))

    async def _failed(self, db: AsyncSession, address: str, key: Optional[str], count: int) -> None:
        """The attempt's places stay taken; the one that reaches the limit locks the name."""
        now = self.clock()
        if key is not None and count >= self.settings.login_max_failures:
            await self._lock(db, key, now)
            log.warning("login failures: user name locked (user=%s)", key)
        else:
            log.info("login failed (user=%s attempt=%d)", key or "-", count)
        await self._prune(db, now)
        await db.commit()
        # Slow down guessing: 0.25 s, 0.5 s, 1 s ... capped at 4 s.
        delay = min(4.0, self.settings.login_failure_delay * (2 ** max(0, count - 1)))
        await asyncio.sleep(delay)

    async def _prune(self, db: AsyncSession, now: datetime) -> None:
        """Forget rows that decide nothing any more (the next attempt would start them
        again): address windows and name locks that have ended. Failures make rows, from
        any address and for any name, so this runs after one, at most once a window."""
        if self._pruned_at is not None and now - self._pruned_at < self._lockout:
            return
        self._pruned_at = now
        await db.execute(delete(LoginThrottle).where(LoginThrottle.window_start <= _at(now - self._lockout)))
        await db.execute(delete(LoginFailure).where(LoginFailure.locked_until <= _at(now)))

    async def _succeeded(self, db: AsyncSession, address: str, key: Optional[str]) -> None:
        """Give the places back: the name's failures are forgotten, the address's
        attempt was not a failure."""
        await db.execute(update(LoginThrottle).where(LoginThrottle.address == address, LoginThrottle.count > 0)
                         .values(count=LoginThrottle.count - 1))
        if key is not None:
            await db.execute(delete(LoginFailure).where(LoginFailure.username == key))
        await db.commit()

    def open_session(self, db: AsyncSession, user: User) -> tuple[Staff, str]:
        """A new session for ``user`` added to ``db`` (the caller commits, with its
        audit entry); returns the staff member and the session cookie's token."""
        now = self.clock()
        token = secrets.token_urlsafe(32)
        session = StaffSession(
            id=sha256_hex(token),
            user_id=user.id,
            csrf_token=secrets.token_urlsafe(32),
            created_at=now,
            expires_at=now + timedelta(hours=self.settings.session_ttl_hours),
        )
        db.add(session)
        return Staff(user.id, user.username, user.role, session.id, session.csrf_token), token

    async def resolve(self, db: AsyncSession, token: Optional[str]) -> Optional[Staff]:
        if not token or len(token) > 128:
            return None
        session = await db.get(StaffSession, sha256_hex(token))
        if session is None:
            return None
        if session.expires_at <= self.clock():
            # A statement, not the ORM's delete: parallel requests with the same
            # expired cookie each delete it (once) without a stale-row error.
            await db.execute(delete(StaffSession).where(StaffSession.id == session.id))
            await db.commit()
            return None
        user = await db.get(User, session.user_id)
        if user is None or user.disabled:
            return None
        return Staff(user.id, user.username, user.role, session.id, session.csrf_token)

    async def logout(self, db: AsyncSession, staff: Staff) -> None:
        """End ``staff``'s session in ``db``'s transaction (the caller commits it with
        its audit entry)."""
        await db.execute(delete(StaffSession).where(StaffSession.id == staff.session_id))
        log.info("logout (user=%s)", staff.username)


# -- API keys (a force's systems) -----------------------------------------------------

API_KEY_PREFIX = "evr_"


#: How the audit log and the timelines name what an API key does: ``key:NAME``.
KEY_ACTOR = "key:"


def new_api_key(name: str, role: str, clock: Clock) -> tuple[ApiKey, str]:
    """A new key row (only the key's SHA-256) and the key itself, shown once (ValueError
    says why not: a bad name or role)."""
    if role not in API_KEY_ROLES:
        raise ValueError(f"role must be one of {', '.join(API_KEY_ROLES)}")
    problem = username_problem(name)
    if problem:
        raise ValueError(problem.replace("user name", "key name"))
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    return ApiKey(name=name, role=role, key_hash=sha256_hex(key), created_at=clock()), key


async def resolve_api_key(db: AsyncSession, header: str) -> Staff:
    """The caller of an ``Authorization: Bearer <key>`` request; 401 for any other
    scheme, an unknown key or a revoked one (the same answer for each)."""
    scheme, _, key = header.strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key or len(key) > 128:
        raise ApiError(401, "bad_api_key", "The Authorization header must be Bearer and a valid API key.")
    found = await db.scalar(select(ApiKey).where(ApiKey.key_hash == sha256_hex(key)))
    if found is None or found.revoked_at is not None:
        raise ApiError(401, "bad_api_key", "The Authorization header must be Bearer and a valid API key.")
    # Named "key:NAME" wherever it acts (the audit log, an incident's timeline): a user's
    # name holds no colon, so a key never reads as a person.
    return Staff(-found.id, f"{KEY_ACTOR}{found.name}", found.role, f"apikey:{found.id}", "", api_key=True)


def csrf_ok(staff: Staff, header: Optional[str]) -> bool:
    # compare_digest refuses non-ASCII str (TypeError): a token is ASCII, so anything
    # else is simply wrong.
    if not header or not header.isascii():
        return False
    return hmac.compare_digest(staff.csrf_token, header)
