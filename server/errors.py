"""The contract's error shape: ``{"error": {"code", "message"}}`` with a 4xx/5xx status."""

from __future__ import annotations

from typing import Any, Optional

from aiohttp import web


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
