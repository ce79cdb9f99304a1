"""The contract's error shape: ``{"error": {"code", "message"}}`` with a 4xx/5xx status."""

from __future__ import annotations

from typing import Any, Literal, Optional, overload

from aiohttp import web

from .text import plain_text

#: The longest reason anyone gives for what they do (it is kept in the audit log).
MAX_REASON = 1000


class ApiError(Exception):
    """A refusal, raised by services and views and rendered in one place
    (:func:`evr.app.json_errors`): as this JSON for an API, as a page for a page.
    ``reason`` names the page when it differs from ``code`` (two refusals may share
    an API code); ``retry_after`` (seconds) goes out as ``Retry-After``."""

    def __init__(self, status: int, code: str, message: str, *, reason: Optional[str] = None,
                 retry_after: Optional[int] = None, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.reason = reason or code
        self.retry_after = retry_after
        self.extra = extra

    def response(self) -> web.Response:
        response = error_response(self.status, self.code, self.message, **self.extra)
        if self.retry_after:
            response.headers["Retry-After"] = str(self.retry_after)
        return response


def error_response(status: int, code: str, message: str, **extra: Any) -> web.Response:
    body: dict[str, Any] = {"code": code, "message": message, **extra}
    return web.json_response({"error": body}, status=status)


def bad_request(message: str, code: str = "bad_request") -> ApiError:
    return ApiError(400, code, message)


def not_found(message: str = "Not found.") -> ApiError:
    return ApiError(404, "not_found", message)


def forbidden(message: str = "You are not allowed to do that.", code: str = "forbidden") -> ApiError:
    return ApiError(403, code, message)


@overload
def checked_reason(value: Any, *, required: Literal[True] = True) -> str: ...
@overload
def checked_reason(value: Any, *, required: bool) -> Optional[str]: ...


def checked_reason(value: Any, *, required: bool = True) -> Optional[str]:
    """A reason for the audit log (why someone opens, exports, classifies, holds or
    disposes of evidence), checked alike everywhere, web and command line: a string,
    stripped, at most :data:`MAX_REASON` characters of plain text (no controls: NUL
    cannot be stored by PostgreSQL; no lone surrogates). 422 ``reason_required``,
    ``reason_too_long`` or ``invalid_reason``; None when not ``required`` and not given."""
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise ApiError(422, "reason_required", "Give a reason: it is kept in the audit log.", fields=["reason"])
        return None
    if not isinstance(value, str):
        raise ApiError(422, "invalid_reason", "The reason must be text.", fields=["reason"])
    if len(value) > MAX_REASON:
        raise ApiError(422, "reason_too_long", f"The reason is longer than {MAX_REASON} characters.",
                       fields=["reason"])
    if not plain_text(value):
        raise ApiError(422, "invalid_reason", "The reason holds control characters or text that is not valid "
                                              "Unicode.", fields=["reason"])
    return value.strip()
