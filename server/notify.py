"""Link delivery: a notifier interface, the outbox default and a GOV.UK Notify-style gateway.

Every message is kept in the outbox table, with the link's token taken out
(:attr:`LinkMessage.kept`): the raw link lives only in memory, as long as the notifier
needs it, and in the one answer to the officer who created it. A notifier decides
whether the message also leaves the building. Logs and the outbox never carry the
link, and a gateway's answer is reduced to its status and error codes (its text may
echo the recipient or the message).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Optional, Protocol

import aiohttp
import jwt

from .config import Settings
from .logs import redact_links
from .text import parse_json

log = logging.getLogger(__name__)

SMS_TEXT = (
    "Your video appointment is ready. Open this link on your phone to join: {url}\n"
    "The link works on one phone only. In an emergency call 999."
)
EMAIL_SUBJECT = "Your video appointment"
EMAIL_TEXT = (
    "Your video appointment is ready.\n\n"
    "Open this link on your phone or computer to join: {url}\n\n"
    "The link works on one device only. In an emergency call 999."
)


@dataclass(frozen=True)
class LinkMessage:
    channel: str  # "sms" or "email"
    recipient: str
    subject: str
    body: str
    url: str

    @property
    def kept(self) -> str:
        """The body as the outbox keeps it: the link without its token (``…/j/…``)."""
        return redact_links(self.body)


@dataclass(frozen=True)
class Delivery:
    status: str  # "outbox", "sent" or "failed"
    provider: str
    ref: Optional[str] = None
    error: Optional[str] = None


SURVEY_SMS_TEXT = (
    "A few short questions about your recent video appointment, if you would like to answer them: {url}\n"
    "You can ignore this message."
)
SURVEY_EMAIL_SUBJECT = "Your recent video appointment"
SURVEY_EMAIL_TEXT = (
    "We would like to know how your recent video appointment went for you.\n\n"
    "There are four short questions, and you can skip any of them: {url}\n\n"
    "You can ignore this message. In an emergency call 999."
)


def compose(channel: str, recipient: str, url: str, survey: bool = False) -> LinkMessage:
    """The neutral wording: no crime details, no names, nothing but the link (the call's,
    or with ``survey`` the victim's survey's)."""
    if survey:
        text = SURVEY_SMS_TEXT if channel == "sms" else SURVEY_EMAIL_TEXT
        return LinkMessage(channel, recipient, SURVEY_EMAIL_SUBJECT, text.format(url=url), url)
    text = SMS_TEXT if channel == "sms" else EMAIL_TEXT
    return LinkMessage(channel, recipient, EMAIL_SUBJECT, text.format(url=url), url)


class Notifier(Protocol):
    name: str

    async def send(self, message: LinkMessage) -> Delivery: ...

    async def close(self) -> None: ...


class OutboxNotifier:
    """The default: the message waits in the outbox for staff to pass on."""

    name = "outbox"

    async def send(self, message: LinkMessage) -> Delivery:
        return Delivery("outbox", self.name)

    async def close(self) -> None:
        pass


class NotifyGatewayNotifier:
    """An HTTP SMS/email gateway with GOV.UK Notify's API.

    ``POST {url}/v2/notifications/sms|email`` with a JSON body naming a template and
    its personalisation (``body``, ``subject``, ``link``), authorised by a JWT
    (HS256, ``iss`` = service id, ``iat`` = now) signed with the API key's secret.
    The key has Notify's form ``{name}-{service_id}-{secret}`` (two UUIDs at the end).
    """

    name = "notify"

    def __init__(self, url: str, api_key: str, sms_template: str = "", email_template: str = "",
                 timeout: float = 10.0) -> None:
        if len(api_key) < 74:
            raise ValueError("notify API key must end with the service id and secret (two UUIDs)")
        self.url = url.rstrip("/")
        self.service_id = api_key[-73:-37]
        self.secret = api_key[-36:]
        self.templates = {"sms": sms_template, "email": email_template}
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: Optional[aiohttp.ClientSession] = None

    def _token(self) -> str:
        return jwt.encode({"iss": self.service_id, "iat": int(time.time())}, self.secret, algorithm="HS256")

    async def send(self, message: LinkMessage) -> Delivery:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        address = "phone_number" if message.channel == "sms" else "email_address"
        payload = {
            address: message.recipient,
            "template_id": self.templates.get(message.channel, ""),
            "personalisation": {"body": message.body, "subject": message.subject, "link": message.url},
        }
        headers = {"Authorization": f"Bearer {self._token()}"}
        try:
            async with self._session.post(
                f"{self.url}/v2/notifications/{message.channel}", json=payload, headers=headers
            ) as response:
                try:
                    data = parse_json(await response.text())
                except (ValueError, UnicodeDecodeError):  # not JSON (a proxy's page): the status says enough
                    data = None
                if response.status >= 300:
                    return Delivery("failed", self.name, error=gateway_error(response.status, data))
                ref = data.get("id") if isinstance(data, dict) else None
                return Delivery("sent", self.name, ref=str(ref)[:128] if ref is not None else None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return Delivery("failed", self.name, error=f"gateway unreachable: {type(exc).__name__}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


#: What may be kept of a gateway's error: Notify's error class names (``BadRequestError``...).
_ERROR_CODE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")


def gateway_error(status: int, data: object) -> str:
    """A refusal as its status and error codes only (``gateway answered 400:
    BadRequestError``): never the gateway's text, which may quote the message or the
    recipient, and is stored in the outbox and logged."""
    errors = data.get("errors") if isinstance(data, dict) else None
    codes = []
    for error in errors if isinstance(errors, list) else []:
        code = error.get("error") if isinstance(error, dict) else None
        if isinstance(code, str) and _ERROR_CODE.match(code) and code not in codes:
            codes.append(code)
    return f"gateway answered {status}" + (": " + ", ".join(codes[:5]) if codes else "")


def make_notifier(settings: Settings) -> Notifier:
    if settings.notifier == "outbox":
        return OutboxNotifier()
    if settings.notifier == "notify":
        return NotifyGatewayNotifier(
            settings.notify_url,
            settings.notify_api_key,
            sms_template=settings.notify_sms_template,
            email_template=settings.notify_email_template,
        )
    raise ValueError(f"unknown notifier {settings.notifier!r} (outbox or notify)")
