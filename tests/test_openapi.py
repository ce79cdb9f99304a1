"""The OpenAPI document (``GET /api/openapi.json``) is valid and kept true.

True both ways: every route the application registers (pages and static files aside)
is documented, and every documented operation exists; and real answers of the main
operations, and the errors, validate against the schemas the document gives them.
The fuzz tests (tests/test_fuzz_http.py) then check every answer of a live server
against it.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import pytest
from conftest import ELIGIBLE, PASSWORD
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from evr import openapi
from evr.app import create_app
from evr.config import Settings
from evr.http import SETTINGS


@pytest.fixture(scope="module")
def app_and_document() -> tuple[Any, dict[str, Any]]:
    app = create_app(Settings.load(data_dir=Path("/nonexistent-evr-openapi"), environ={}))
    return app, openapi.build(app)


def test_the_document_is_valid_openapi_3_1(app_and_document: tuple[Any, dict[str, Any]]) -> None:
    _, document = app_and_document
    validate(document)  # raises on any error
    assert document["openapi"].startswith("3.1")
    assert set(document["components"]["securitySchemes"]) == {"session", "csrf", "link", "apikey"}


def test_every_route_is_documented_and_every_documented_operation_exists(
        app_and_document: tuple[Any, dict[str, Any]]) -> None:
    app, document = app_and_document
    registered = openapi.routes(app)
    documented = {(method.upper(), path) for path, operations in document["paths"].items() for method in operations}
    assert registered - documented == set(), "routes missing from server/openapi.py"
    assert documented - registered == set(), "documented operations the application does not have"
    # The route list itself: explicit tus HEAD and OPTIONS kept; aiohttp's implicit HEAD
    # beside a GET, the pages and the static files left out.
    assert {("HEAD", "/j/{token}/uploads/{uid}"), ("OPTIONS", "/api/consultations/{id}/uploads"),
            ("GET", "/api/me"), ("GET", "/j/{token}/ws")} <= registered
    assert not {("HEAD", "/api/me"), ("GET", "/console"), ("GET", "/j/{token}")} & registered
    assert not any(path.startswith("/static") for _, path in registered)
    assert len(registered) > 50


def test_every_operation_documents_a_success_and_the_error_shape(
        app_and_document: tuple[Any, dict[str, Any]]) -> None:
    _, document = app_and_document
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            statuses = set(operation["responses"])
            assert any(s.startswith(("1", "2")) for s in statuses), (method, path)
            assert operation["responses"]["default"] == {"$ref": "#/components/responses/Error"}, (method, path)
            assert "security" in operation, (method, path)
            staff = path.startswith("/api/") and operation["security"]
            if staff and method not in ("get", "head", "options"):
                assert {"session": [], "csrf": []} in operation["security"], (method, path)
            if path.startswith("/j/") and path != "/j/{token}/claim":
                assert operation["security"] == [{"link": []}], (method, path)


# -- real answers against their schemas -------------------------------------------------


def _schema_for(document: dict[str, Any], method: str, path: str, status: int) -> dict[str, Any]:
    answers = document["paths"][path][method.lower()]["responses"]
    assert str(status) in answers, f"{method} {path} does not document {status}"
    answer = answers[str(status)]
    if "$ref" in answer:
        answer = document["components"]["responses"][answer["$ref"].rsplit("/", 1)[1]]
    return answer["content"]["application/json"]["schema"]


def _problems(document: dict[str, Any], method: str, path: str, status: int, body: Any) -> list[str]:
    schema = {**_schema_for(document, method, path, status), "components": document["components"]}
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(body)]


async def _check(document: dict[str, Any], response: Any, method: str, path: str, status: int) -> Any:
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body = await response.json()
    problems = _problems(document, method, path, status, body)
    assert not problems, f"{method} {path} {status}: {problems}"
    return body


def _png() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (8, 8), (0, 90, 200)).save(out, "PNG")
    return out.getvalue()


async def test_served_without_a_session_the_same_to_everyone(server: Any, new_client: Any, staff: Any) -> None:
    anonymous = await new_client()
    answer = await anonymous.get(openapi.PATH)
    assert answer.status == 200 and answer.content_type == "application/json"
    assert "Set-Cookie" not in answer.headers
    served = await answer.json()
    assert served == openapi.build(server.app)
    officer = await staff()
    as_officer = await officer.get(openapi.PATH)
    assert await as_officer.json() == served
    text = await as_officer.text()
    assert officer.csrf not in text and str(server.app[SETTINGS].data_dir) not in text


async def test_real_answers_match_their_schemas(server: Any, link: Any, new_client: Any, users: Any,
                                               staff: Any) -> None:
    document = openapi.build(server.app)
    opened = await link()
    officer, cid = opened.officer, opened.id
    c = officer.client
    base = f"/api/consultations/{cid}"

    # Staff authentication.
    browser = await new_client()
    await users("bob", "sergeant")
    login = await _check(document, await browser.post("/api/login", json={"username": "bob", "password": PASSWORD}),
                         "POST", "/api/login", 200)
    assert login["role"] == "sergeant"
    await _check(document, await browser.get("/api/me"), "GET", "/api/me", 200)
    await _check(document, await browser.post("/api/login", json={"username": "bob", "password": "wrong one!"}),
                 "POST", "/api/login", 401)

    # Consultations and the outbox.
    created = await _check(document, await officer.post("/api/consultations", {
        "cad_ref": "CAD-OPENAPI-1", "victim": {"email": "sam@example.org"}, "eligibility": ELIGIBLE}),
        "POST", "/api/consultations", 201)
    assert created["message"] is not None
    await _check(document, await c.get("/api/consultations"), "GET", "/api/consultations", 200)
    await _check(document, await c.get(base), "GET", "/api/consultations/{id}", 200)
    await _check(document, await c.get("/api/outbox"), "GET", "/api/outbox", 200)
    await _check(document, await c.get(f"{base}/recordings"), "GET", "/api/consultations/{id}/recordings", 200)

    # An upload by the victim: the receipt, and staff's view of it.
    png = _png()
    tus = {"Tus-Resumable": "1.0.0"}
    made = await opened.phone.post(f"{opened.path}/uploads", headers={
        **tus, "Upload-Length": str(len(png)), "Upload-Metadata": "filename " + base64.b64encode(b"a.png").decode()})
    assert made.status == 201, await made.text()
    location = made.headers["Location"]
    sent = await opened.phone.patch(location, data=png, headers={
        **tus, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"})
    assert sent.status == 204, await sent.text()
    uid = location.rsplit("/", 1)[1]
    await _check(document, await opened.phone.get(f"{opened.path}/uploads"), "GET", "/j/{token}/uploads", 200)
    await _check(document, await opened.phone.get(location), "GET", "/j/{token}/uploads/{uid}", 200)
    await _check(document, await c.get(f"{base}/uploads"), "GET", "/api/consultations/{id}/uploads", 200)
    await _check(document, await c.get(f"{base}/uploads/{uid}"), "GET", "/api/consultations/{id}/uploads/{uid}", 200)
    changed = await c.patch(f"{base}/uploads/{uid}", json={"exhibit_ref": "SV/9"}, headers=officer.headers())
    await _check(document, changed, "PATCH", "/api/consultations/{id}/uploads/{uid}", 200)

    # A statement: drafted, saved, sent, read by the victim.
    example = document["paths"]["/api/consultations/{id}/statements"]["post"]["requestBody"]["content"][
        "application/json"]["example"]
    drafted = await _check(document, await officer.post(f"{base}/statements", example),
                           "POST", "/api/consultations/{id}/statements", 201)
    sid = drafted["id"]
    st = f"{base}/statements/{sid}"
    saved = await c.put(st, json={**example, "text": example["text"] + " Then he rode off."},
                        headers=officer.headers())
    await _check(document, saved, "PUT", "/api/consultations/{id}/statements/{sid}", 200)
    await _check(document, await c.get(f"{base}/statements"), "GET", "/api/consultations/{id}/statements", 200)
    await _check(document, await c.get(f"{st}/versions/1"), "GET",
                 "/api/consultations/{id}/statements/{sid}/versions/{version}", 200)
    await _check(document, await officer.post(f"{st}/send", {}), "POST",
                 "/api/consultations/{id}/statements/{sid}/send", 200)
    await _check(document, await c.get(st), "GET", "/api/consultations/{id}/statements/{sid}", 200)
    await _check(document, await opened.phone.get(f"{opened.path}/statements"), "GET", "/j/{token}/statements", 200)
    await _check(document, await opened.phone.get(f"{opened.path}/statements/{sid}"),
                 "GET", "/j/{token}/statements/{sid}", 200)

    # Retention and the audit log.
    await _check(document, await c.get(f"{base}/retention"), "GET", "/api/consultations/{id}/retention", 200)
    await _check(document, await c.put(f"{base}/retention", json={"class": "group2", "reason": "Assault"},
                                       headers=officer.headers()), "PUT", "/api/consultations/{id}/retention", 200)
    await _check(document, await c.get("/api/retention/classes"), "GET", "/api/retention/classes", 200)
    records = await staff("rita", "records")
    r = records.client
    await _check(document, await r.get("/api/retention/due"), "GET", "/api/retention/due", 200)
    await _check(document, await r.get(f"/api/retention/consultations/{cid}/items"),
                 "GET", "/api/retention/consultations/{id}/items", 200)
    await _check(document, await r.get(f"/api/retention/items/{uid}"), "GET", "/api/retention/items/{item}", 200)
    await _check(document, await records.post("/api/retention/hold", {"id": cid, "reason": "Appeal lodged"}),
                 "POST", "/api/retention/hold", 201)
    await _check(document, await r.get("/api/retention/holds"), "GET", "/api/retention/holds", 200)
    await _check(document, await records.post("/api/retention/release", {"id": cid, "reason": "Appeal heard"}),
                 "POST", "/api/retention/release", 200)
    await _check(document, await records.post("/api/retention/dispose", {"due": True}), "POST",
                 "/api/retention/dispose", 200)
    await _check(document, await r.get("/api/retention/certificates"), "GET", "/api/retention/certificates", 200)
    audit = await _check(document, await r.get("/api/audit?limit=5"), "GET", "/api/audit", 200)
    assert audit["entries"]

    # Errors, in the contract's shape.
    await _check(document, await c.get("/api/consultations/00000000-0000-4000-8000-000000000000"),
                 "GET", "/api/consultations/{id}", 404)
    await _check(document, await anonymous_get(new_client, "/api/me"), "GET", "/api/me", 401)
    await _check(document, await c.post("/api/consultations", json={"cad_ref": "x"}), "POST",
                 "/api/consultations", 403)  # no X-CSRF-Token
    await _check(document, await officer.post("/api/consultations", {"cad_ref": "CAD-1", "eligibility": {}}),
                 "POST", "/api/consultations", 422)
    await _check(document, await r.get("/api/audit?cursor=x"), "GET", "/api/audit", 400)

    # Closing, last: the link then answers 410 under /j/.
    await _check(document, await officer.post(f"{base}/close"), "POST", "/api/consultations/{id}/close", 200)
    await _check(document, await opened.phone.get(f"{opened.path}/uploads"), "GET", "/j/{token}/uploads", 410)


async def anonymous_get(new_client: Any, path: str) -> Any:
    return await (await new_client()).get(path)


def test_the_schemas_refuse_wrong_answers(app_and_document: tuple[Any, dict[str, Any]]) -> None:
    """The checks above can fail: a wrong answer does not validate."""
    _, document = app_and_document
    good = {"id": "0b6c8f3e-9d1f-4c53-8f6e-2b0f6f1f7a10", "cad_ref": "CAD-1", "status": "waiting",
            "created_at": "2026-11-30T10:00:00.000Z", "arrived_at": None, "closed_at": None, "participants": []}
    path = "/api/consultations/{id}"
    assert _problems(document, "GET", path, 200, good) == []
    assert _problems(document, "GET", path, 200, {**good, "extra": 1}) == []  # open to new fields
    assert _problems(document, "GET", path, 200, {k: v for k, v in good.items() if k != "id"})
    assert _problems(document, "GET", path, 200, {**good, "status": "lost"})
    assert _problems(document, "GET", path, 200, {**good, "arrived_at": 5})
    assert _problems(document, "GET", path, 404, {"error": {"code": "not_found"}})  # no message
    assert _problems(document, "GET", path, 404, {"detail": "Not Found"})
