"""Fuzzing the HTTP API: schemathesis against a live ``evr serve``, from the published
OpenAPI document.

Why a real server: aiohttp is neither ASGI nor WSGI, and the defects that matter
(a 500 after a change was committed, a traceback instead of a JSON error, a process
that stops answering) show only over a real socket with the real middlewares. The
server runs as ``evr serve`` on a free port with a fresh data directory, on SQLite
and (unless ``EVR_TEST_POSTGRES=off``) on a fresh PostgreSQL database, whose text
columns refuse what SQLite takes (NUL characters).

Before fuzzing, the fixture builds a realistic state, so paths with ``{id}`` reach
real objects: an officer (and records staff, and a spare session for logout), a
consultation whose link a victim's browser claimed, an upload finished by the victim
and one left unfinished, a statement sent for signature, and a second consultation
with the recordings of a short aiortc call, then closed (the fuzzer's closes go to
it). Three in four generated path parameters are replaced by those real ids (the
rest stay random, for the 404 paths); the victim's operations carry the link's
binding cookie, staff ones the session cookie and X-CSRF-Token.

Three passes over every documented operation:

- ``test_api``: schemathesis's cases: the document's examples, its coverage phase
  (boundaries, wrong types, missing and unexpected parameters, other methods) and
  ``EVR_FUZZ_EXAMPLES`` (10) generated valid and invalid requests.
- ``test_api_hostile``: the same generator, with hostile values put where the
  operation reads input (:func:`_hostile`): what a schema-driven generator rarely
  makes (lone surrogates, NUL, non-ASCII digits, 30,000-deep JSON, invalid UTF-8).
- ``test_every_input``: systematically, each JSON string field, each documented
  query parameter and header with each hostile value, against the real objects.

The seed is fixed (``EVR_FUZZ_SEED``, or ``random``). Checks: no 5xx
(``not_a_server_error``), every answer matches its documented schema
(``response_schema_conformance``; an undocumented status must be the contract's error
shape) and documented content type (``content_type_conformance``). A failure shows the
request as sent and the server's log lines it caused (the traceback). What was sent
and answered per operation goes to ``tests/artifacts/fuzz-http-<backend>.txt``.

Known defects, found by these tests and being fixed elsewhere, are listed once in
:data:`KNOWN_DEFECTS`: those tests are strict xfails (they must fail, so the list
shrinks as fixes land).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest
import requests
from hypothesis import strategies as st

schemathesis = pytest.importorskip("schemathesis")

from conftest import ELIGIBLE, PASSWORD, PG_URL, eventually  # noqa: E402
from schemathesis.checks import (  # noqa: E402  (checks are registered lazily: this loads them)
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
)

from evr import openapi  # noqa: E402
from evr.app import create_app  # noqa: E402
from evr.config import Settings  # noqa: E402

EXAMPLES = int(os.environ.get("EVR_FUZZ_EXAMPLES", "10"))
_seed = os.environ.get("EVR_FUZZ_SEED", "20261130")
SEED: Optional[int] = None if _seed == "random" else int(_seed)

#: Tests that fail because of a known defect: "test METHOD /path" (or with
#: " @postgresql" for one back end) -> what fails and where. Each is a strict xfail:
#: when the fix lands it passes, fails as XPASS, and its line here goes. Empty: the
#: issue 11 defects this fuzzer found (non-ASCII digits in tus headers and cursors,
#: deep JSON and a non-UTF-8 User-Agent on signing, NUL on PostgreSQL, plain-text
#: errors under /j/) are fixed, and each has a test of its own.
KNOWN_DEFECTS: dict[str, str] = {}

#: The document the server publishes, built from the same code (the fixture checks
#: that the live server serves exactly this).
DOCUMENT = openapi.build(create_app(Settings.load(data_dir=Path("/nonexistent-evr-fuzz"), environ={})))


def _config(examples_phase: bool) -> Any:
    settings: dict[str, Any] = {
        "generation": {
            "max-examples": EXAMPLES,
            "mode": "all",  # valid and invalid input
            "no-shrink": True,  # bounded time; the failing request is shown as it was sent
            "with-security-parameters": False,  # the fixture sends real cookies and CSRF headers
        },
        "phases": {"stateful": {"enabled": False}, "examples": {"enabled": examples_phase}},
    }
    if SEED is not None:
        settings["seed"] = SEED
    return schemathesis.Config.from_dict(settings)


schema = schemathesis.openapi.from_dict(DOCUMENT, config=_config(examples_phase=True))
#: For the hostile test (its own Hypothesis data cannot be combined with the document's examples).
hostile_schema = schemathesis.openapi.from_dict(DOCUMENT, config=_config(examples_phase=False))
# tus PATCH bodies are raw bytes.
schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")


# -- the live server -------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _png() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


def _metadata(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


@dataclass
class Live:
    """A running ``evr serve`` and the state the fuzzer works on."""

    url: str
    log: Path
    process: subprocess.Popen[bytes]
    officer: requests.Session = field(default_factory=requests.Session)
    records: requests.Session = field(default_factory=requests.Session)
    spare: requests.Session = field(default_factory=requests.Session)
    victim: requests.Session = field(default_factory=requests.Session)
    csrf: dict[str, str] = field(default_factory=dict)
    #: Real values for each path parameter (several for some).
    real: dict[str, list[str]] = field(default_factory=dict)
    #: The consultation of the call: closed, with finished recordings.
    recorded: str = ""
    #: Answers seen: "METHOD /path" -> status -> count (written to tests/artifacts/).
    statuses: defaultdict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))

    def __repr__(self) -> str:  # short in Hypothesis's reports (and no CSRF tokens)
        return f"Live({self.url})"

    def log_since(self, offset: int) -> str:
        with self.log.open("rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")

    def log_size(self) -> int:
        return self.log.stat().st_size


def _cli(data: Path, env: dict[str, str], *args: str, stdin: str = "") -> None:
    subprocess.run([sys.executable, "-m", "evr", *args, "--data", str(data)], input=stdin.encode(), env=env,
                   check=True, capture_output=True, timeout=60)


def _login(session: requests.Session, url: str, name: str) -> str:
    answer = session.post(f"{url}/api/login", json={"username": name, "password": PASSWORD}, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()["csrf_token"]


def _database(backend: str, data: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{data / 'evr.sqlite3'}"
        return
    import asyncpg

    plain = PG_URL.replace("+asyncpg", "")
    name = f"evr_fuzz_{uuid.uuid4().hex[:12]}"

    async def run(sql: str) -> None:
        admin = await asyncpg.connect(plain)
        try:
            await admin.execute(sql)
        finally:
            await admin.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _backends() -> list[str]:
    return ["sqlite"] if PG_URL == "off" else ["sqlite", "postgresql"]


@pytest.fixture(scope="module", params=_backends())
def live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    data = tmp_path_factory.mktemp("fuzz") / "data"
    data.mkdir()
    database = _database(request.param, data)
    db_url = next(database)
    port = _free_port()
    # Embedded defaults but the database; none of the caller's EVR_* settings.
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("EVR_")},
           "EVR_DATABASE_URL": db_url, "EVR_LOGIN_FAILURE_DELAY": "0.01"}
    for name, role in (("officer1", "officer"), ("records1", "records")):
        _cli(data, env, "user", "add", name, "--role", role, stdin=PASSWORD + "\n")
    log = data.parent / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "evr", "serve", "--host", "127.0.0.1", "--port", str(port),
                                    "--data", str(data)], env=env, stdout=out, stderr=subprocess.STDOUT)
    live = Live(f"http://127.0.0.1:{port}", log, process)
    started = time.monotonic()
    try:
        _wait_ready(live)
        _prepare(live)
        yield live
        _summary(live, request.param, time.monotonic() - started)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for s in (live.officer, live.records, live.spare, live.victim):
            s.close()
        next(database, None)


ARTIFACTS = Path(__file__).parent / "artifacts"


def _summary(live: Live, backend: str, seconds: float) -> None:
    """What the run sent and got, per operation (tests/artifacts/fuzz-http-BACKEND.txt)."""
    ARTIFACTS.mkdir(exist_ok=True)
    total = sum(sum(c.values()) for c in live.statuses.values())
    documented = {f"{m.upper()} {p}" for p, ops in DOCUMENT["paths"].items() for m in ops}
    reached = sum(sum(c.values()) for k, c in live.statuses.items() if k in documented)
    lines = [f"evr serve on {backend}: {total} requests in {seconds:.0f} s (start and set-up included), "
             f"{reached} of them to the {len(documented)} documented operations, the rest other methods on their "
             f"paths; {EXAMPLES} examples per operation and test, seed {SEED}"]
    for label in sorted(live.statuses, key=lambda k: k.split(" ", 1)[::-1]):
        counts = live.statuses[label]
        lines.append(f"{label}: " + ", ".join(f"{status}x{n}" for status, n in sorted(counts.items())))
    (ARTIFACTS / f"fuzz-http-{backend}.txt").write_text("\n".join(lines) + "\n")


def _wait_ready(live: Live) -> None:
    def answers() -> bool:
        if live.process.poll() is not None:
            raise RuntimeError(f"evr serve stopped:\n{live.log_since(0)}")
        try:
            return requests.get(f"{live.url}/healthz", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    try:
        asyncio.run(eventually(answers, timeout=60, interval=0.2, what="evr serve's /healthz"))
    except AssertionError:
        raise RuntimeError(f"evr serve did not start:\n{live.log_since(0)}") from None


def _prepare(live: Live) -> None:
    """The state the fuzzer works on (see the module's docstring)."""
    url = live.url
    served = requests.get(f"{url}{openapi.PATH}", timeout=30)
    assert served.status_code == 200 and served.json() == DOCUMENT, "the server publishes another document"
    live.csrf["officer"] = _login(live.officer, url, "officer1")
    live.csrf["records"] = _login(live.records, url, "records1")
    live.csrf["spare"] = _login(live.spare, url, "officer1")
    officer = {"X-CSRF-Token": live.csrf["officer"]}

    def create(cad: str) -> dict[str, Any]:
        answer = live.officer.post(f"{url}/api/consultations", headers=officer, timeout=30, json={
            "cad_ref": cad, "victim": {"name": "Sam Victim", "phone": "07700 900123"}, "eligibility": ELIGIBLE})
        assert answer.status_code == 201, answer.text
        return answer.json()

    main = create("CAD-FUZZ-1")
    token = main["join_url"].rsplit("/j/", 1)[1]
    link = f"{url}/j/{token}"
    _claim(live.victim, url, token)
    recorded = create("CAD-FUZZ-2")
    live.recorded = recorded["id"]
    phone = requests.Session()
    recorded_token = recorded["join_url"].rsplit("/j/", 1)[1]
    _claim(phone, url, recorded_token)
    rid = _call(live, phone, recorded["id"], recorded_token)
    phone.close()

    tus = {"Tus-Resumable": "1.0.0"}
    png = _png()
    made = live.victim.post(f"{link}/uploads", timeout=30, headers={
        **tus, "Upload-Length": str(len(png)),
        "Upload-Metadata": _metadata(filename="scene.png", filetype="image/png")})
    assert made.status_code == 201, made.text
    finished = made.headers["Location"].rsplit("/", 1)[1]
    sent = live.victim.patch(f"{link}/uploads/{finished}", data=png, timeout=60, headers={
        **tus, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"})
    assert sent.status_code == 204, sent.text
    made = live.victim.post(f"{link}/uploads", timeout=30, headers={
        **tus, "Upload-Length": "100", "Upload-Metadata": _metadata(filename="part.bin")})
    unfinished = made.headers["Location"].rsplit("/", 1)[1]
    live.victim.patch(f"{link}/uploads/{unfinished}", data=b"x" * 10, timeout=30, headers={
        **tus, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"})

    statements = f"{url}/api/consultations/{main['id']}/statements"
    drafted = live.officer.post(statements, headers=officer, timeout=60, json={
        "witness": {"name": "Sam Victim", "over_18": True, "occupation": "Teacher"},
        "text": "On Monday I saw a man take my bicycle from the front garden.",
        "exhibits": [{"ref": "SV/1", "upload_id": finished}], "rear": {"taken_by": "PC Officer"}})
    assert drafted.status_code == 201, drafted.text
    sid = drafted.json()["id"]
    answer = live.officer.post(f"{statements}/{sid}/send", headers=officer, json={}, timeout=60)
    assert answer.status_code == 200, answer.text

    live.real = {"id": [main["id"]], "token": [token], "uid": [finished, unfinished], "sid": [sid],
                 "rid": [rid] if rid else [], "item": [finished, *([rid] if rid else [])]}


def _claim(browser: requests.Session, url: str, token: str) -> None:
    if "/j/{token}/claim" in DOCUMENT["paths"]:
        claimed = browser.post(f"{url}/j/{token}/claim", headers={"Origin": url}, timeout=30)
    else:  # before issue 11's finding 5: opening the page binds the link
        claimed = browser.get(f"{url}/j/{token}", timeout=30)
    assert claimed.status_code == 200, claimed.text


def _call(live: Live, phone_cookies: requests.Session, cid: str, token: str) -> Optional[str]:
    """A short call between two aiortc clients, then closed: the consultation has
    finished recordings (with segments) to play back, export and classify."""
    import aiohttp

    from evr.client import CallClient

    async def run() -> None:
        jar = lambda: aiohttp.CookieJar(unsafe=True)  # noqa: E731 - cookies for 127.0.0.1
        async with aiohttp.ClientSession(cookie_jar=jar()) as console, \
                aiohttp.ClientSession(cookie_jar=jar()) as phone:
            console.cookie_jar.update_cookies(live.officer.cookies.get_dict())
            phone.cookie_jar.update_cookies(phone_cookies.cookies.get_dict(), response_url=aiohttp.client.URL(
                f"{live.url}/j/{token}/ws"))
            ws = live.url.replace("http", "ws", 1)
            victim = CallClient(phone, f"{ws}/j/{token}/ws")
            officer = CallClient(console, f"{ws}/api/consultations/{cid}/ws")
            try:
                await victim.join()
                await officer.join()
                await asyncio.gather(victim.wait_media(audio=50, video=30), officer.wait_media(audio=50, video=30))
            finally:
                await victim.leave()
                await officer.leave()

    asyncio.run(run())
    closed = live.officer.post(f"{live.url}/api/consultations/{cid}/close", timeout=30,
                               headers={"X-CSRF-Token": live.csrf["officer"]})
    assert closed.status_code == 200, closed.text
    def recordings() -> list[dict[str, Any]]:
        return live.officer.get(f"{live.url}/api/consultations/{cid}/recordings", timeout=30).json()["recordings"]

    try:  # the recordings end a moment after the sockets close
        rows = asyncio.run(eventually(recordings, lambda rows: rows and all(r["ended_at"] for r in rows),
                                      timeout=20, interval=0.5, what="the call's recordings ended"))
    except AssertionError:
        rows = recordings()  # the fuzzer works with what there is
    return rows[0]["id"] if rows else None


# -- the fuzz test -----------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _known_defect(request: pytest.FixtureRequest) -> None:
    """Known defects (``KNOWN_DEFECTS``) are strict xfails: they must still fail."""
    # test_api[GET /api/me][sqlite], test_every_input[sqlite-GET /api/me] -> "test_api GET /api/me"
    match = re.fullmatch(r"(\w+)\[(?:(sqlite|postgresql)-)?([^\]]+)\](?:\[(sqlite|postgresql)\])?", request.node.name)
    if match is None:
        return
    label = f"{match[1]} {match[3]}"
    reason = KNOWN_DEFECTS.get(f"{label} @{match[2] or match[4]}") or KNOWN_DEFECTS.get(label)
    if reason:
        request.node.add_marker(pytest.mark.xfail(reason=reason, strict=True))


def _real(value: Any, choices: list[str]) -> Any:
    """Three in four generated values become a real object's id (chosen by the value's
    hash, so a case replays the same); the rest stay as generated."""
    digest = zlib.crc32(repr(value).encode())
    if not choices or digest % 4 == 0:
        return value
    return choices[digest // 4 % len(choices)]


def _user(live: Live, method: str, path: str) -> tuple[requests.Session, dict[str, str]]:
    """Who sends a request to this operation, and the CSRF header it needs."""
    if path.startswith(("/api/retention/", "/api/audit")):
        session, csrf = live.records, live.csrf["records"]
    elif path == "/api/logout":
        session, csrf = live.spare, live.csrf["spare"]  # the first logout ends it; then 401s
    elif path.startswith("/j/"):
        session, csrf = live.victim, None
    else:
        session, csrf = live.officer, live.csrf["officer"]
    return session, ({"X-CSRF-Token": csrf} if csrf and method.upper() not in ("GET", "HEAD", "OPTIONS") else {})


def _traceback(log: str) -> str:
    """The server's log lines of one request, shortened to what locates a defect:
    log records, EVR's own stack frames, and the exception."""
    kept: list[str] = []
    lines = log.strip().splitlines()
    for i, line in enumerate(lines):
        evr_frame = re.search(r'File ".*/(server|recording|retention)/[^"]+\.py"', line) and "site-packages" not in line
        if evr_frame:
            kept.extend([line, *lines[i + 1:i + 2]])
        elif not line.startswith(" ") or re.match(r"\s*[\w.]+(Error|Exception|Exceeded)\b", line):
            kept.append(line)
    return "\n".join(kept)[-4000:]


def _refused_by_parser(log: str) -> bool:
    """Whether aiohttp's HTTP parser refused the message (a request line over 8190
    bytes, a forbidden character in a header) before any of EVR's code ran: its
    plain-text 400 is the only answer possible there."""
    return "aiohttp.http_exceptions." in log


def _run(case: Any, live: Live, extra: Optional[dict[str, Any]] = None) -> None:
    """Send the case as the right user, to real objects mostly, and check the answer."""
    for name, value in list((case.path_parameters or {}).items()):
        if name in live.real:
            case.path_parameters[name] = _real(value, live.real[name])
    path = case.path
    if path.startswith(("/api/consultations/{id}/recordings", "/api/consultations/{id}/close")) \
            and case.path_parameters.get("id") == live.real["id"][0]:
        # The recordings are the closed consultation's; the fuzzer closes that one, not the one it works on.
        case.path_parameters["id"] = live.recorded
    session, headers = _user(live, case.method, path)
    extra = dict(extra or {})
    headers.update(extra.pop("headers", {}))
    offset = live.log_size()
    response = case.call(base_url=live.url, session=session, headers=headers, timeout=60, **extra)
    live.statuses[f"{case.method.upper()} {path}"][response.status_code] += 1
    checks = [not_a_server_error, response_schema_conformance, content_type_conformance]
    if response.status_code == 400 and _refused_by_parser(live.log_since(offset)):
        checks = [not_a_server_error]  # aiohttp's plain-text 400: EVR never saw the request
    try:
        case.validate_response(response, checks=checks)
    except BaseException as exc:  # schemathesis raises a BaseExceptionGroup of its failures
        if not isinstance(exc, (Exception, BaseExceptionGroup)):
            raise
        logged = live.log_since(offset).strip()
        sent = response.request
        body = sent.body if isinstance(sent.body, bytes) else (sent.body or "").encode()
        request = (f"{sent.method} {sent.url}\n" + "".join(f"{k}: {v!r}\n" for k, v in sent.headers.items()
                                                          if k.lower() != "cookie")
                   + f"body ({len(body)} bytes): {body[:400]!r}")
        raise AssertionError(f"{exc}\n\n-- sent --\n{request}\n\n-- server log --\n"
                             f"{_traceback(logged) or '(nothing)'}") from None
    assert live.process.poll() is None, f"evr serve stopped:\n{live.log_since(offset)}"


@schema.parametrize()
def test_api(case: Any, live: Live) -> None:
    """Schemathesis's own cases: valid and invalid input, boundaries, missing parameters."""
    _run(case, live)


# -- hostile input: what a schema-driven generator rarely makes ---------------------------

#: Text that must never cause a 500: lone surrogates (unencodable), NUL (PostgreSQL
#: refuses it), bidi controls, non-ASCII digits, huge numbers, empty, long.
HOSTILE_TEXT = ("\ud800", "a\udfffb", "nul\x00byte", "\u202egpj.exe", "\u2066x\u2069", "\u00b2", "\u0661\u0662\u0663",
                "\U0001d7d7", "9" * 40, "-1", "1e999", "", "   ", "\ufeff", "line\r\nbreak", "../../etc/passwd",
                "\U0001f600" * 300)
HOSTILE_JSON = (*HOSTILE_TEXT, 2**64, -(2**63) - 1, 1e308, -0.0, 0, -1, True, False, None, [], {}, [[["x"]]],
                {"a": {"b": {"c": "\ud800"}}})
#: Raw bytes for headers and query values: invalid UTF-8, digits that are not ASCII,
#: numbers past 64 bits, signs, exponents.
HOSTILE_RAW = (b"\xff", b"\xc3(", b"\xed\xa0\x80", "\u00b2".encode(), "\u0661\u0662".encode(), "\U0001d7d7".encode(),
               b"99999999999999999999999", b"18446744073709551616", b"-1", b"+1", b"1e3", b"0x10", b"1_000",
               b"\x00", b"", b"\xe2\x80\xae")
#: The same for headers, without NUL (HTTP forbids it: aiohttp's parser refuses the
#: whole message with a plain-text 400 before EVR sees it).
HOSTILE_HEADER = tuple(v for v in HOSTILE_RAW if b"\x00" not in v)
#: Whole bodies that are not what a JSON route expects.
HOSTILE_BODIES = (b"[" * 30000 + b"]" * 30000, b"{\"a\":" * 40 + b"1" + b"}" * 40, b'"\\ud800"', b'{"a": "\\udfff"}',
                  b"\xff\xfe{}", b'{"a":', b"null", b"[]", b"\x00")


def _signature_png() -> str:
    from PIL import Image, ImageDraw

    image = Image.new("RGBA", (300, 100), (255, 255, 255, 0))
    ImageDraw.Draw(image).line([(10, 80), (150, 20), (290, 70)], fill=(0, 0, 0, 255), width=6)
    out = io.BytesIO()
    image.save(out, "PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


SIGNATURE = _signature_png()


def _leaves(value: Any, depth: int = 0) -> list[tuple[Any, Any]]:
    """(container, key) of every place in a JSON value, a few levels deep."""
    places: list[tuple[Any, Any]] = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        places.append((value, key))
        if depth < 3:
            places.extend(_leaves(child, depth + 1))
    return places


def _hostile(case: Any, data: Any) -> dict[str, Any]:
    """Hostile values where the operation reads input: a JSON field, a whole body, a
    query parameter or header it documents, the User-Agent. Returned as extra
    arguments of the request (sent as they are: schemathesis would re-check them
    against the schema, and cannot hold bytes or lone surrogates)."""
    import copy

    operation = DOCUMENT["paths"][case.path][case.method.lower()]
    json_body = "application/json" in operation.get("requestBody", {}).get("content", {})
    headers: dict[str, Any] = {}
    params: dict[str, Any] = {}
    body: Any = copy.deepcopy(case.body) if json_body and isinstance(case.body, (dict, list)) else None
    if case.path.endswith("/sign") and data.draw(st.booleans(), "valid signature"):
        # Past the signature checks, into sealing, with hostile text where it is stored.
        body = {"typed_name": data.draw(st.sampled_from(("Sam Victim", *HOSTILE_TEXT)), "typed_name"),
                "signature_png": SIGNATURE, "declaration_accepted": True}
    if isinstance(body, (dict, list)) and data.draw(st.booleans(), "hostile field"):
        places = _leaves(body)
        if places:
            container, key = data.draw(st.sampled_from(places), "field")
            container[key] = data.draw(st.sampled_from(HOSTILE_JSON), "value")
        elif isinstance(body, dict):
            body[data.draw(st.sampled_from(("reason", "message", "id", "\ud800")), "key")] = \
                data.draw(st.sampled_from(HOSTILE_JSON), "value")
    raw_body = json.dumps(body).encode() if body is not None else None
    if json_body and data.draw(st.integers(0, 5), "whole body") == 0:
        raw_body = data.draw(st.sampled_from(HOSTILE_BODIES), "body")
    if raw_body is not None:
        headers["Content-Type"] = "application/json"
    documented = [p for p in operation.get("parameters", []) if p["in"] in ("query", "header")]
    if documented and data.draw(st.booleans(), "hostile parameter"):
        param = data.draw(st.sampled_from(documented), "parameter")
        raw = data.draw(st.sampled_from(HOSTILE_RAW if param["in"] == "query" else HOSTILE_HEADER), "raw")
        (params if param["in"] == "query" else headers)[param["name"]] = raw
    if data.draw(st.integers(0, 3), "user agent") == 0:
        headers["User-Agent"] = data.draw(st.sampled_from(HOSTILE_HEADER), "ua")
    extra: dict[str, Any] = {"headers": headers, "params": params}
    if raw_body:
        extra["data"] = raw_body
    return extra


@pytest.mark.filterwarnings("ignore:Generating overly large repr")  # the drawn 60 kB bodies
@hostile_schema.parametrize()
@hostile_schema.given(data=st.data())
def test_api_hostile(case: Any, data: Any, live: Live) -> None:
    """The same operations with hostile values put where they read input."""
    _run(case, live, _hostile(case, data))


# -- every input, systematically: each text field, parameter and header ---------------------

#: User-Agent headers that are not text: invalid UTF-8, an encoded lone surrogate, a
#: bidi override (what is kept of a browser must be cleaned, never refused or fatal).
HOSTILE_USER_AGENT = (b"\xff\xfe", b"Mozilla/5.0 \xed\xa0\x80", "\u202eMozilla".encode())

#: What every string field of every JSON body gets: text that cannot be stored (a lone
#: surrogate: the database, the audit hash and the logs all encode UTF-8) and NUL
#: (PostgreSQL's text columns refuse it).
UNSTORABLE = ("\ud800", "nul\x00byte")


def _text_places(value: Any, pointer: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, str):
        yield pointer
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        yield from _text_places(child, (*pointer, key))


def _with(value: Any, pointer: tuple[Any, ...], new: Any) -> Any:
    import copy

    copied = copy.deepcopy(value)
    target = copied
    for key in pointer[:-1]:
        target = target[key]
    target[pointer[-1]] = new
    return copied


def _inputs(path: str, method: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(what, request arguments) for every hostile input of one operation."""

    operation = DOCUMENT["paths"][path][method]
    example = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("example")
    if path.endswith("/sign"):
        example = {**example, "signature_png": SIGNATURE}  # past the image checks, into sealing
    valid = {"data": json.dumps(example).encode(), "headers": {"Content-Type": "application/json"}} \
        if example is not None else {"headers": {}}
    for raw in HOSTILE_USER_AGENT:  # an otherwise valid request from a browser that sends this
        yield f"header User-Agent: {raw!r}", {**valid, "headers": {**valid["headers"], "User-Agent": raw}}
    if example is not None:
        for pointer in _text_places(example):
            for value in UNSTORABLE:
                body = json.dumps(_with(example, pointer, value)).encode()
                yield f"body {'.'.join(map(str, pointer))}={value!r}", {
                    "data": body, "headers": {"Content-Type": "application/json"}}
        yield "body 30,000 levels deep", {"data": b"[" * 30000 + b"]" * 30000,
                                          "headers": {"Content-Type": "application/json"}}
    # A tus PATCH reads its headers only with the tus framing and a body.
    tus_patch = "application/offset+octet-stream" in operation.get("requestBody", {}).get("content", {})
    for param in operation.get("parameters", []):
        values = HOSTILE_RAW if param["in"] == "query" else HOSTILE_HEADER if param["in"] == "header" else ()
        for raw in values:
            if param["in"] == "query":
                yield f"query {param['name']}={raw!r}", {"params": {param["name"]: raw}}
            elif tus_patch:
                yield f"header {param['name']}: {raw!r}", {"data": b"x", "headers": {
                    "Tus-Resumable": "1.0.0", "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0",
                    param["name"]: raw}}
            else:
                yield f"header {param['name']}: {raw!r}", {"headers": {param["name"]: raw}}


class _Ids(dict[str, str]):
    """Path parameters: the real objects' ids, and an unknown one for the rest."""

    def __missing__(self, name: str) -> str:
        return "00000000-0000-4000-8000-000000000000"


def _sent_statement(live: Live) -> str:
    """A new statement of the main consultation, sent for signature: its id."""
    statements = f"{live.url}/api/consultations/{live.real['id'][0]}/statements"
    example = DOCUMENT["paths"]["/api/consultations/{id}/statements"]["post"]["requestBody"]["content"][
        "application/json"]["example"]
    officer = {"X-CSRF-Token": live.csrf["officer"]}
    drafted = live.officer.post(statements, json=example, headers=officer, timeout=60)
    assert drafted.status_code == 201, drafted.text
    sid = drafted.json()["id"]
    sent = live.officer.post(f"{statements}/{sid}/send", json={}, headers=officer, timeout=60)
    assert sent.status_code == 200, sent.text
    return sid


OPERATIONS = [(path, method) for path, ops in DOCUMENT["paths"].items() for method in ops
              if any(True for _ in _inputs(path, method))]


@pytest.mark.parametrize(("path", "method"), OPERATIONS, ids=[f"{m.upper()} {p}" for p, m in OPERATIONS])
def test_every_input(path: str, method: str, live: Live) -> None:
    """A User-Agent that is not text on an otherwise valid request, each string field of
    each JSON body with unstorable text, each body nested 30,000 deep, each documented
    query parameter and header with invalid UTF-8, non-ASCII digits and numbers past
    64 bits, against real objects: a JSON 4xx, never a 500."""
    session, csrf = _user(live, method, path)
    real = {name: choices[0] for name, choices in live.real.items() if choices}
    if path.startswith(("/api/consultations/{id}/recordings", "/api/consultations/{id}/close")):
        real["id"] = live.recorded
    url_path = path.format_map(_Ids(version="1", **real))
    operation = DOCUMENT["paths"][path][method]
    tus = {"Tus-Resumable": "1.0.0"} if any(p["name"] == "Tus-Resumable" and p["required"]
                                             for p in operation.get("parameters", [])) else {}
    failures = []
    for what, arguments in _inputs(path, method):
        if path.endswith("/sign"):  # each try on a statement waiting for its signature
            url_path = path.format_map(_Ids(**{**real, "sid": _sent_statement(live)}))
        headers = {**tus, **csrf, **arguments.pop("headers", {})}
        offset = live.log_size()
        answer = session.request(method.upper(), f"{live.url}{url_path}", headers=headers, timeout=60, **arguments)
        live.statuses[f"{method.upper()} {path}"][answer.status_code] += 1
        logged = live.log_since(offset)
        if answer.status_code >= 500:
            failures.append(f"{what}: {answer.status_code} {answer.text[:120]!r}\n{_traceback(logged)}")
        elif answer.status_code >= 400 and method != "head" and not _refused_by_parser(logged):
            try:
                error = answer.json()["error"]
                assert isinstance(error["code"], str) and isinstance(error["message"], str)
            except (ValueError, KeyError, TypeError, AssertionError):
                failures.append(f"{what}: {answer.status_code} is not a JSON error: "
                                f"{answer.headers.get('Content-Type')} {answer.text[:200]!r}")
    assert live.process.poll() is None, "evr serve stopped"
    assert not failures, f"{method.upper()} {path} ({url_path}):\n" + "\n\n".join(failures)
