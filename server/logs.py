"""Logging without link tokens.

A victim's link (``/j/<token>``, and their survey's, ``/s/<token>``) is the key to their call, their uploads and their
statement, so no log record may carry it: not the access log, not a warning that
quotes a path, not the text of an exception. :class:`RedactLinks` takes every
``/j/<token>`` out of a record (its message, its arguments, its exception and stack
text and any extra string attribute, such as the access log's request line) before a
handler formats it. :func:`install` puts it on every handler of the root logger, the
one place every record passes through; ``evr``'s ``main()`` calls :func:`configure`,
and tests call :func:`install` on pytest's handlers.

:func:`redact_links` is also what the outbox keeps of a link message.
"""

from __future__ import annotations

import logging
import re
from typing import Optional

#: A link token in a path or URL: ``/j/`` (the call) or ``/s/`` (the victim's survey)
#: and the token's URL-safe base64 characters.
LINK_TOKEN = re.compile(r"/([js])/[A-Za-z0-9_-]+")
REDACTED = r"/\1/…"

#: Record attributes that are never built from outside input.
_FIXED = frozenset({"name", "levelname", "pathname", "filename", "module", "funcName",
                    "processName", "threadName", "taskName"})


def redact_links(text: str) -> str:
    """``text`` with every link token replaced by ``…`` (``/j/<token>`` → ``/j/…``)."""
    return LINK_TOKEN.sub(REDACTED, text)


class RedactLinks(logging.Filter):
    """Take link tokens out of every part of a record that a handler may write."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        # The message with its arguments, rendered once and redacted: arguments of any
        # type (a URL, a request) may carry the token in their str().
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep what there is, redacted
            message = f"{record.msg!s} {record.args!r}"
        record.msg, record.args = redact_links(message), None
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = self._formatter.formatException(record.exc_info)
            # The traceback as text only: the exception object itself may hold the token.
            record.exc_info = None
        if record.exc_text:
            record.exc_text = redact_links(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_links(record.stack_info)
        for key, value in list(vars(record).items()):
            if isinstance(value, str) and key not in _FIXED and ("/j/" in value or "/s/" in value):
                setattr(record, key, redact_links(value))
        return True


def install(root: Optional[logging.Logger] = None) -> None:
    """Add :class:`RedactLinks` to every handler of ``root`` (the root logger by
    default) that lacks it. Handlers added later need another call."""
    for handler in (root or logging.getLogger()).handlers:
        if not any(isinstance(f, RedactLinks) for f in handler.filters):
            handler.addFilter(RedactLinks())


def configure(level: int = logging.INFO) -> None:
    """The service's logging: one line per record on standard error, tokens redacted."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # aiosqlite's debug records carry every query's parameters (personal data).
    logging.getLogger("aiosqlite").setLevel(max(level, logging.INFO))
    install()
