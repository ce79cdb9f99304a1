"""The HTTP API as an OpenAPI 3.1 document, served at ``GET /api/openapi.json``.

Why one machine-readable description: a force's systems, scripts and acceptance
checks drive the API exactly as written, and the fuzz tests (schemathesis,
``tests/test_fuzz_http.py``) generate hostile requests from it and check every answer
against it. ``tests/test_openapi.py`` keeps it true: every route the application
registers (pages and ``/static`` aside) is documented, every documented operation
exists, and real answers validate against their schemas.

The document is public (no session needed) and holds no secrets: it describes shapes,
never data. Answer schemas are honest but open: objects list the fields clients rely
on and allow more (``additionalProperties`` is left true), so adding a field is never
a breaking change. Every operation's ``default`` answer is the contract's error shape
``{"error": {"code", "message"}}``: any status not listed explicitly must still be a
JSON error, which the fuzzers check.
"""

from __future__ import annotations

from typing import Any, Optional

from aiohttp import web

from .auth import CSRF_HEADER, SESSION_COOKIE
from .links import BINDING_COOKIE
from .roles import ROLES

Schema = dict[str, Any]

PATH = "/api/openapi.json"
OPENAPI_VERSION = "3.1.0"
TUS_VERSION = "1.0.0"
_DOCUMENT = web.AppKey("openapi_document", dict)

# -- schema helpers ----------------------------------------------------------------


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    if set(schema) == {"type"} and isinstance(schema["type"], str):
        return {"type": [schema["type"], "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def _obj(required: tuple[str, ...] = (), **properties: Schema) -> Schema:
    """An object with these properties (others allowed), ``required`` ones always present."""
    schema: Schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    return schema


def _array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
BOOL: Schema = {"type": "boolean"}
TIME: Schema = {"type": "string", "format": "date-time"}
TIME_OR_NULL: Schema = {"type": ["string", "null"], "format": "date-time"}
STR_OR_NULL: Schema = {"type": ["string", "null"]}
SHA256: Schema = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
SHA256_OR_NULL: Schema = {"type": ["string", "null"], "pattern": "^[0-9a-f]{64}$"}
UUID: Schema = {"type": "string", "format": "uuid"}
ANY_OBJECT: Schema = {"type": "object"}


def _json(schema: Schema, example: Any = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {"application/json": media}


def _answer(description: str, schema: Optional[Schema] = None, media: Optional[dict[str, Any]] = None,
            headers: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description}
    if schema is not None:
        answer["content"] = _json(schema)
    if media is not None:
        answer["content"] = media
    if headers:
        answer["headers"] = headers
    return answer


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): {"$ref": f"#/components/responses/E{s}"} for s in statuses}


_ERROR_TEXT = {
    400: "Bad request: malformed JSON (or nested too deep), a bad header or parameter.",
    401: "Not logged in (no or an expired session).",
    403: "Forbidden: the role may not do this, the CSRF header is missing or wrong, or (under /j/) "
         "the link is bound to another browser or was not opened here.",
    404: "Not found (or not visible to this user).",
    409: "Conflict with the object's state.",
    410: "Gone: the link is closed or expired, or the upload was terminated or purged.",
    412: "tus: Tus-Resumable missing or not 1.0.0.",
    413: "Too large.",
    415: "Unsupported media type.",
    416: "Range not satisfiable.",
    422: "Unprocessable: a field is invalid (named in fields), or text is not valid Unicode.",
    423: "tus: another request is still writing to this upload.",
    429: "Too many attempts: try again later.",
    460: "tus checksum: the data does not match Upload-Checksum (discarded).",
    507: "Not enough storage for the declared length.",
}


def _param(name: str, where: str, schema: Schema, required: bool = False, description: str = "") -> Schema:
    param: Schema = {"name": name, "in": where, "schema": schema, "required": required or where == "path"}
    if description:
        param["description"] = description
    return param


def _query(name: str, schema: Schema = STR, description: str = "", required: bool = False) -> Schema:
    return _param(name, "query", schema, required, description)


def _header(name: str, schema: Schema, required: bool = False, description: str = "") -> Schema:
    return _param(name, "header", schema, required, description)


# Security requirements: staff reads, staff changes (CSRF header too), the victim's link, none.
STAFF_READ: list[dict[str, list[str]]] = [{"session": []}]
STAFF_WRITE: list[dict[str, list[str]]] = [{"session": [], "csrf": []}]
VICTIM: list[dict[str, list[str]]] = [{"link": []}]
PUBLIC: list[dict[str, list[str]]] = []
#: The EVR queue: a session (and CSRF header on changes), or an API key.
KEY_READ: list[dict[str, list[str]]] = [{"session": []}, {"apikey": []}]
KEY_WRITE: list[dict[str, list[str]]] = [{"session": [], "csrf": []}, {"apikey": []}]


def _op(summary: str, tag: str, responses: dict[str, Any], *, security: list[dict[str, list[str]]],
        params: tuple[Schema, ...] = (), body: Optional[Schema] = None, body_media: Optional[dict[str, Any]] = None,
        example: Any = None, body_required: bool = True, errors: tuple[int, ...] = (),
        description: str = "") -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, "tags": [tag], "security": security}
    if description:
        operation["description"] = description
    if params:
        operation["parameters"] = list(params)
    if body is not None or body_media is not None:
        operation["requestBody"] = {"required": body_required, "content": body_media or _json(body or {}, example)}
    if security in (STAFF_READ, STAFF_WRITE):
        errors = (401, 403, *errors)
    answers = {**responses, **_errors(*sorted(set(errors)))}
    answers["default"] = {"$ref": "#/components/responses/Error"}
    operation["responses"] = answers
    return operation


# -- components --------------------------------------------------------------------

PARTICIPANT = _obj(
    ("role", "connected"), role=STR, connected=BOOL,
    media=_obj(audio_in_packets=INT, video_in_frames=INT, audio_out_packets=INT, video_out_frames=INT),
)
CONSULTATION_STATUS: Schema = {"type": "string", "enum": ["waiting", "live", "paused", "closed"]}

#: A redaction's time range (seconds from the recording's start) and box (fractions of the frame).
SPAN: dict[str, Schema] = {"from": {"type": "number"}, "to": {"type": "number"}}
BOX: dict[str, Schema] = {"box": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4},
                          "style": {"type": "string", "enum": ["blur", "mask"]}}

SCHEMAS: dict[str, Schema] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": _obj(("code", "message"), code={"type": "string", "pattern": "^[a-z0-9_]+$"},
                                     message=STR, fields=_array(STR))},
        "description": "The contract's error shape; some errors add fields (e.g. `fields`, `offset`).",
    },
    "Login": {
        "type": "object", "required": ["username", "password"],
        "properties": {"username": STR, "password": STR},
    },
    "Me": _obj(("username", "role", "csrf_token"), username=STR, role={"type": "string", "enum": list(ROLES)},
               csrf_token=STR),
    "Ok": _obj(("ok",), ok={"const": True}),
    "NewConsultation": {
        "type": "object", "required": ["cad_ref", "eligibility"],
        "properties": {
            "cad_ref": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9/_.-]{0,63}$"},
            "victim": _obj(name=STR, phone=STR, email=STR),
            "eligibility": {
                "type": "object",
                "required": ["adult_or_carer_present", "offender_absent", "safe_location", "consent"],
                "properties": {k: BOOL for k in ("adult_or_carer_present", "offender_absent", "safe_location",
                                                   "consent")},
            },
            "notify": {"type": ["string", "null"], "enum": ["sms", "email", None]},
        },
    },
    "OutboxMessage": _obj(
        ("id", "consultation_id", "channel", "status", "created_at"),
        id=INT, consultation_id=UUID, channel={"type": "string", "enum": ["sms", "email"]}, recipient=STR,
        body=STR, created_at=TIME, status=STR, provider=STR_OR_NULL, error=STR_OR_NULL,
    ),
    "ConsultationCreated": _obj(
        ("id", "cad_ref", "status", "join_url", "expires_at"),
        id=UUID, cad_ref=STR, status=CONSULTATION_STATUS, join_url={"type": "string", "format": "uri"},
        expires_at=TIME, message=_nullable(_ref("OutboxMessage")),
    ),
    "Consultation": _obj(
        ("id", "cad_ref", "status", "created_at", "arrived_at", "closed_at", "participants"),
        id=UUID, cad_ref=STR, status=CONSULTATION_STATUS, created_at=TIME, arrived_at=TIME_OR_NULL,
        closed_at=TIME_OR_NULL, expires_at=TIME, victim=ANY_OBJECT, participants=_array(PARTICIPANT),
        location=_nullable(_obj(("lat", "lon", "accuracy_m", "at"), lat={"type": "number", "minimum": -90,
                                                                          "maximum": 90},
                                lon={"type": "number", "minimum": -180, "maximum": 180},
                                accuracy_m={"type": "number", "minimum": 0}, at=TIME)),
    ),
    "ChatMessages": _obj(("messages",), messages=_array(_obj(
        ("id", "from", "text", "at"), id=UUID, text={"type": "string", "minLength": 1, "maxLength": 2000}, at=TIME,
        **{"from": _obj(("role", "name"), role=STR, name=STR_OR_NULL)}))),
    "Closed": _obj(("status",), status={"const": "closed"}, closed_at=TIME_OR_NULL),
    "Recording": _obj(
        ("id", "participant", "started_at", "ended_at", "duration_s", "segments", "manifest_sha256", "status",
         "classification"),
        id=UUID, participant=STR, participant_user=STR_OR_NULL, started_at=TIME, ended_at=TIME_OR_NULL,
        duration_s={"type": "number"}, segments=INT, manifest_sha256=SHA256_OR_NULL, status=STR,
        classification={"type": "string", "enum": ["non_evidential", "evidential"]},
        kind={"type": "string", "enum": ["original", "redacted"]}, source_recording={"type": ["string", "null"]},
        source_manifest_sha256=SHA256_OR_NULL, redaction={"type": ["object", "null"]},
    ),
    "RedactionRequest": {
        "type": "object", "required": ["reason"],
        "description": "Seconds from the recording's start; a box is x, y, width, height as fractions of the frame.",
        "properties": {
            "reason": {"type": "string", "minLength": 1, "maxLength": 1000},
            "mute": _array(_obj(("from", "to"), **SPAN)),
            "blur": _array(_obj(("from", "to", "box"), **SPAN, **BOX)),
            "blur_faces": BOOL,
        },
    },
    "RedactionJob": _obj(
        ("id", "status", "progress", "recording_id"),
        id=UUID, status={"type": "string", "enum": ["queued", "running", "done", "failed", "cancelled"]},
        progress={"type": "number", "minimum": 0, "maximum": 1}, eta_s={"type": ["number", "null"]},
        recording_id={"type": ["string", "null"]}, source_recording_id=UUID, error=STR_OR_NULL,
        cancel_requested=BOOL, operations=ANY_OBJECT, created_at=TIME, started_at=TIME_OR_NULL,
        finished_at=TIME_OR_NULL,
    ),
    "DisclosureRequest": {
        "type": "object", "required": ["reason", "items"],
        "properties": {"reason": {"type": "string", "minLength": 1, "maxLength": 1000},
                       "items": {"type": "array", "items": UUID, "minItems": 1, "maxItems": 500}},
    },
    "Classification": {
        "type": "object", "required": ["classification", "reason"],
        "properties": {"classification": {"type": "string", "enum": ["non_evidential", "evidential"]},
                       "reason": {"type": "string", "minLength": 1, "maxLength": 1000}},
    },
    "Upload": _obj(
        ("id", "filename", "size", "sha256", "content_type", "exhibit_ref", "uploaded_by", "created_at", "status"),
        id=UUID, filename=STR, size=INT, sha256=SHA256_OR_NULL, content_type=STR_OR_NULL, exhibit_ref=STR_OR_NULL,
        uploaded_by=STR, created_at=TIME, status={"type": "string", "enum": [
            "uploading", "complete", "quarantined", "terminated", "purged"]},
        received=INT, completed_at=TIME_OR_NULL, quarantine_reason=STR_OR_NULL, preview=BOOL, metadata=ANY_OBJECT,
    ),
    "Receipt": _obj(
        ("id", "filename", "size", "sha256", "exhibit_ref", "status"),
        id=UUID, filename=STR, size=INT, received=INT, sha256=SHA256_OR_NULL, exhibit_ref=STR_OR_NULL, status=STR,
        created_at=TIME, completed_at=TIME_OR_NULL,
    ),
    "StatementContent": {
        "type": "object",
        "description": "An MG11 draft; every field optional while drafting (sending needs the essentials).",
        "properties": {
            "witness": _obj(name=STR, over_18=_nullable(BOOL), age={"type": ["integer", "null"]},
                            occupation=STR),
            "text": STR,
            "exhibits": _array({"anyOf": [STR, _obj(ref=STR, description=STR, upload_id=UUID)]}),
            "rear": ANY_OBJECT,
            "read_to_witness": _nullable(_obj(name=STR, declaration=STR)),
            "version": {"type": "integer", "description": "PUT only: the version you edited."},
        },
    },
    "StatementSummary": _obj(
        ("id", "status", "version"),
        id=UUID, consultation_id=UUID, status={"type": "string", "enum": [
            "draft", "awaiting_signature", "sealing", "signed"]},
        version=INT, created_by=STR, created_at=TIME, updated_at=TIME_OR_NULL, sent_by=STR_OR_NULL,
        sent_at=TIME_OR_NULL, signed_at=TIME_OR_NULL, sha256=SHA256_OR_NULL,
    ),
    "StatementLayout": _obj(
        ("pages", "declaration", "sheets", "document_sha256"),
        pages=INT, declaration=STR, sheets=_array(ANY_OBJECT), document_sha256=SHA256,
    ),
    "StatementVersion": _obj(("version", "content", "content_sha256"), version=INT, content=ANY_OBJECT,
                             content_sha256=SHA256, saved_by=STR, saved_at=TIME),
    "VictimStatement": _obj(
        ("id", "status", "version", "text", "pages", "declaration", "preview_url", "document_sha256"),
        id=UUID, status=STR, version=INT, text=STR, pages=INT, declaration=STR, preview_url=STR,
        sheets=_array(ANY_OBJECT), document_sha256=SHA256, sha256=SHA256_OR_NULL,
    ),
    "Sign": {
        "type": "object", "required": ["typed_name", "signature_png", "declaration_accepted"],
        "properties": {"typed_name": STR,
                       "signature_png": {"type": "string", "pattern": "^data:image/png;base64,"},
                       "declaration_accepted": {"const": True}, "document_sha256": SHA256},
    },
    "Assignment": _obj(
        ("consultation_id", "class", "set", "classes"),
        consultation_id=UUID, **{"class": STR_OR_NULL}, label=STR, set=BOOL, reason=STR_OR_NULL,
        set_by=STR_OR_NULL, set_at=TIME_OR_NULL, subject_dob_given=BOOL, classes=_array(ANY_OBJECT),
    ),
    "ScheduleRow": _obj(
        ("item_id", "kind", "consultation_id", "rule", "due_at", "action", "state", "held"),
        item_id=UUID, kind=STR, consultation_id=UUID, cad_ref=STR, rule=STR, due_at=TIME_OR_NULL, action=STR,
        state=STR, held=BOOL, sha256=SHA256_OR_NULL, size=INT, created_at=TIME, waiting_until=TIME_OR_NULL,
    ),
    "Review": _obj(("id", "item_id", "decision"), id=INT, item_id=UUID, at=TIME, reviewer=STR, role=STR,
                   decision=STR, reason=STR, criteria=_array(STR), rule=STR, next_review_at=TIME_OR_NULL),
    "Hold": _obj(("id", "scope", "target", "reason", "placed_by", "placed_at", "active"),
                 id=INT, scope=STR, target=STR, reason=STR, placed_by=STR, placed_at=TIME,
                 released_at=TIME_OR_NULL, released_by=STR_OR_NULL, release_reason=STR_OR_NULL, active=BOOL),
    "Certificate": _obj(("id", "item_id", "consultation_id", "certificate", "signature"),
                        id=UUID, item_id=UUID, consultation_id=UUID, disposed_at=TIME, certificate=ANY_OBJECT,
                        key_fingerprint=STR, signature=STR),
    "ReasonFor": {
        "type": "object", "required": ["id", "reason"],
        "properties": {"id": {"type": "string", "description": "An evidence item or a consultation."},
                       "reason": {"type": "string", "minLength": 1}},
    },
    "AuditEntry": _obj(
        ("id", "at", "actor", "role", "action", "object", "hash"),
        id=INT, at=TIME, actor=STR, role=STR, action=STR, object=STR, consultation_id=STR_OR_NULL,
        reason=STR_OR_NULL, client=STR_OR_NULL, details=ANY_OBJECT, hash=SHA256,
    ),
}

INCIDENT_STATE: Schema = {"type": "string", "enum": [
    "triage", "queued", "allocated", "rejected", "dispatched", "in_call", "awaiting_review", "finalised",
    "patrol_suspect", "patrol_enquiries", "evr_desk_enquiries", "control"]}
SCHEMAS.update({
    "NewIncident": {
        "type": "object", "required": ["cad_ref", "grade", "eligibility"],
        "properties": {
            "cad_ref": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9/_.-]{0,63}$"},
            "grade": {"type": "integer", "minimum": 1, "maximum": 5}, "category": STR,
            "reported_at": TIME, "summary": STR,
            "victim": _obj(name=STR, phone=STR, email=STR,
                           preferred_contact={"type": "string", "enum": ["sms", "email", "phone"]}, language=STR),
            "eligibility": SCHEMAS["NewConsultation"]["properties"]["eligibility"],
            "vulnerability": BOOL, "high_harm": BOOL,
        },
    },
    "Incident": _obj(
        ("id", "cad_ref", "state"),
        id=UUID, cad_ref=STR, state=INCIDENT_STATE, arm={"type": ["string", "null"],
                                                         "enum": ["treatment", "control", None]},
        grade=INT, category=STR, reported_at=TIME, summary=STR,
        created_at=TIME, created_by=STR, created_by_role=STR, allocated_to=STR_OR_NULL, dispatched_to=STR_OR_NULL,
        dispatched_at=TIME_OR_NULL, consultation_id=STR_OR_NULL, arrived_at=TIME_OR_NULL, phoned_at=TIME_OR_NULL,
        call_closed_at=TIME_OR_NULL, submitted_at=TIME_OR_NULL, review_due_at=TIME_OR_NULL,
        reviewed_at=TIME_OR_NULL, review_overdue={"type": ["boolean", "null"]},
        target_at=TIME_OR_NULL, overdue=BOOL, waiting_minutes=INT,
        victim=ANY_OBJECT, timeline=_array(_obj(("at", "kind", "actor", "role"), at=TIME, kind=STR,
                                                **{"from": STR_OR_NULL, "to": STR_OR_NULL}, actor=STR, role=STR,
                                                reason=STR_OR_NULL, details=ANY_OBJECT)),
    ),
    "Triage": {
        "type": "object", "required": ["decision"],
        "properties": {"decision": {"type": "string", "enum": ["queue", "allocate", "reject"]},
                       "officer": STR, "reason": {"type": "string", "maxLength": 1000}},
    },
    "Investigation": {
        "type": "object", "required": ["summary", "offence", "suspect", "safeguarding"],
        "properties": {
            "summary": STR, "offence": STR, "suspect": _obj(("identified",), identified=BOOL, details=STR),
            "witnesses": _array({}), "lines_of_enquiry": _array(STR),
            "safeguarding": _obj(("risk", "advice_given"), risk={"type": "string", "enum": [
                "standard", "medium", "high"]}, referrals=_array(STR), advice_given=BOOL),
        },
    },
    "IncidentReview": {
        "type": "object", "required": ["outcome"],
        "properties": {"outcome": {"type": "string", "enum": [
            "finalised", "patrol_suspect", "patrol_enquiries", "evr_desk_enquiries"]},
            "investigation_plan": STR, "reason": {"type": "string", "maxLength": 1000}},
    },
})

SECURITY_SCHEMES = {
    "session": {"type": "apiKey", "in": "cookie", "name": SESSION_COOKIE,
                "description": "Staff session cookie from POST /api/login (HttpOnly, SameSite=Strict)."},
    "csrf": {"type": "apiKey", "in": "header", "name": CSRF_HEADER,
             "description": "The csrf_token of the login answer (or GET /api/me), on every change."},
    "apikey": {"type": "http", "scheme": "bearer",
               "description": "A force system's key from `evr apikey add` (no session, no CSRF header)."},
    "link": {"type": "apiKey", "in": "cookie", "name": BINDING_COOKIE,
             "description": "The cookie binding a victim's link to the browser that claimed it."},
}

#: Example request bodies (documentation; the fuzz tests start from them too).
EXAMPLES: dict[str, Any] = {
    "login": {"username": "alice", "password": "correct horse battery staple"},
    "consultation": {"cad_ref": "CAD-2026-000123", "victim": {"name": "Sam Victim", "phone": "07700 900123"},
                     "eligibility": {"adult_or_carer_present": True, "offender_absent": True,
                                     "safe_location": True, "consent": True}},
    "classification": {"classification": "evidential", "reason": "Shows the suspect's face"},
    "redaction": {"reason": "Disclosure to the CPS", "mute": [{"from": 1.0, "to": 2.5}],
                  "blur": [{"from": 0, "to": 9.5, "box": [0.1, 0.1, 0.3, 0.3]}], "blur_faces": False},
    "statement": {"witness": {"name": "Sam Victim", "over_18": True, "occupation": "Teacher"},
                  "text": "On Monday I saw a man take my bicycle from the front garden.",
                  "exhibits": [{"ref": "SV/1", "description": "Photograph of the garden"}],
                  "rear": {"contact": "07700 900123", "taken_by": "PC 1234 Smith"}},
    "incident": {"cad_ref": "CAD-2026-000123", "grade": 3, "category": "burglary",
                 "reported_at": "2026-11-30T09:12:00Z", "summary": "Shed broken into overnight.",
                 "victim": {"name": "Sam Victim", "phone": "07700 900123", "preferred_contact": "sms",
                            "language": "en"},
                 "eligibility": {"adult_or_carer_present": True, "offender_absent": True,
                                 "safe_location": True, "consent": True},
                 "vulnerability": False, "high_harm": False},
    "investigation": {"summary": "Bicycle taken from the shed.", "offence": "Burglary",
                      "suspect": {"identified": False, "details": ""}, "witnesses": [], "lines_of_enquiry": [],
                      "safeguarding": {"risk": "standard", "referrals": [], "advice_given": True}},
    "reason_for": {"id": "0b6c8f3e-9d1f-4c53-8f6e-2b0f6f1f7a10", "reason": "Complaint received"},
    "sign": {"typed_name": "Sam Victim", "declaration_accepted": True,
             "signature_png": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
                              "+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="},
}

# -- parameters ---------------------------------------------------------------------

CID = _param("id", "path", UUID, description="The consultation.")
RID = _param("rid", "path", UUID, description="The recording.")
UID = _param("uid", "path", UUID, description="The upload.")
SID = _param("sid", "path", UUID, description="The statement.")
IID = _param("id", "path", UUID, description="The incident.")
TOKEN = _param("token", "path", {"type": "string", "minLength": 1}, description="The link's token.")
REASON = _query("reason", {"type": "string", "maxLength": 1000}, "Why (kept in the audit log).")
TUS_RESUMABLE = _header("Tus-Resumable", {"type": "string", "enum": [TUS_VERSION]}, True)
UPLOAD_LENGTH = _header("Upload-Length", {"type": "integer", "minimum": 0}, True, "The file's size in bytes.")
UPLOAD_METADATA = _header("Upload-Metadata", STR, False, "tus metadata: `filename <base64>,filetype <base64>`.")
UPLOAD_OFFSET = _header("Upload-Offset", {"type": "integer", "minimum": 0}, True)
UPLOAD_CHECKSUM = _header("Upload-Checksum", STR, False, "`sha256|sha1|md5 <base64 digest>`.")
OFFSET_HEADERS = {"Upload-Offset": {"schema": INT}}
TUS_BYTES = {"application/offset+octet-stream": {"schema": {"type": "string", "format": "binary"}}}
BEFORE = _query("before", TIME, "Only what is due before this time.")
PAGE_LIMIT = _query("limit", {"type": "integer", "minimum": 1, "maximum": 500})

# -- operations ---------------------------------------------------------------------


def _tus_options(tag: str, security: list[dict[str, list[str]]]) -> dict[str, Any]:
    return _op("tus discovery", tag, {"204": {"description": "Tus-Version, Tus-Extension, Tus-Max-Size, "
                                                             "Tus-Checksum-Algorithm headers."}},
               security=security)


def _tus_create(tag: str, security: list[dict[str, list[str]]]) -> dict[str, Any]:
    return _op("tus creation: start an upload", tag,
               {"201": _answer("Created; Location is the upload's URL.",
                               headers={"Location": {"schema": STR}, **OFFSET_HEADERS})},
               security=security, params=(TUS_RESUMABLE, UPLOAD_LENGTH, UPLOAD_METADATA),
               errors=(400, 404, 410, 412, 413, 507))


def _tus_head(tag: str, security: list[dict[str, list[str]]]) -> dict[str, Any]:
    return _op("tus: the upload's offset", tag,
               {"200": _answer("Upload-Offset and Upload-Length.", headers={**OFFSET_HEADERS,
                                                                             "Upload-Length": {"schema": INT}})},
               security=security, params=(TUS_RESUMABLE,), errors=(404, 410, 412))


def _tus_patch(tag: str, security: list[dict[str, list[str]]]) -> dict[str, Any]:
    return _op("tus: append bytes at Upload-Offset", tag,
               {"204": _answer("Appended; Upload-Offset is the new offset.", headers=OFFSET_HEADERS)},
               security=security, params=(TUS_RESUMABLE, UPLOAD_OFFSET, UPLOAD_CHECKSUM), body_media=TUS_BYTES,
               errors=(400, 404, 409, 410, 412, 413, 415, 423, 460))


def _tus_delete(tag: str, security: list[dict[str, list[str]]]) -> dict[str, Any]:
    return _op("tus termination: cancel an unfinished upload", tag, {"204": {"description": "Terminated."}},
               security=security, params=(TUS_RESUMABLE,), errors=(403, 404, 410, 412))


def _socket(summary: str, tag: str, security: list[dict[str, list[str]]]) -> dict[str, Any]:
    return _op(summary, tag, {"101": {"description": "WebSocket: the signalling protocol of the contract."}},
               security=security, errors=(400, 403, 404, 410),
               description="A WebSocket (send the Upgrade handshake); a plain GET is refused.")


PDF = {"application/pdf": {"schema": {"type": "string", "format": "binary"}}}


def _paths() -> dict[str, dict[str, Any]]:
    c = "/api/consultations/{id}"
    rec = c + "/recordings/{rid}"
    up = c + "/uploads/{uid}"
    st = c + "/statements/{sid}"
    j = "/j/{token}"
    inc = "/api/incidents/{id}"
    incident = _answer("The incident with its timeline (a read of the victim's details: audit-logged).",
                       _ref("Incident"))
    tus_staff = ("uploads", STAFF_WRITE)
    tus_victim = ("victim", VICTIM)
    return {
        "/healthz": {"get": _op("Liveness", "operations", {"200": _answer("Running.", _ref("Ok"))},
                                security=PUBLIC)},
        PATH: {"get": _op("This document", "operations", {"200": _answer("OpenAPI 3.1.", ANY_OBJECT)},
                          security=PUBLIC)},
        # -- staff authentication
        "/api/login": {"post": _op(
            "Log in", "auth", {"200": _answer("Logged in; sets the session cookie.", _ref("Me"))},
            security=PUBLIC, body=_ref("Login"), example=EXAMPLES["login"], errors=(400, 401, 413, 415, 422, 429))},
        "/api/logout": {"post": _op("Log out (ends the session)", "auth", {"200": _answer("Logged out.", _ref("Ok"))},
                                    security=STAFF_WRITE)},
        "/api/me": {"get": _op("Who is logged in", "auth", {"200": _answer("The session's user.", _ref("Me"))},
                               security=STAFF_READ)},
        # -- consultations
        "/api/consultations": {
            "post": _op("Create a consultation and its link", "consultations",
                        {"201": _answer("Created.", _ref("ConsultationCreated"))}, security=STAFF_WRITE,
                        body=_ref("NewConsultation"), example=EXAMPLES["consultation"], errors=(400, 413, 422)),
            "get": _op("Consultations this user may see", "consultations",
                       {"200": _answer("Newest first.", _obj(("consultations",),
                                                             consultations=_array(_ref("Consultation"))))},
                       security=STAFF_READ),
        },
        c: {"get": _op("One consultation (audit-logged)", "consultations",
                       {"200": _answer("The consultation.", _ref("Consultation"))}, security=STAFF_READ,
                       params=(CID,), errors=(404,))},
        c + "/close": {"post": _op("Close the consultation and its link, forever", "consultations",
                                   {"200": _answer("Closed.", _ref("Closed"))}, security=STAFF_WRITE,
                                   params=(CID,), errors=(404,))},
        c + "/ws": {"get": {**_socket("The officer's signalling socket", "consultations", STAFF_READ),
                            "parameters": [CID]}},
        "/api/outbox": {"get": _op(
            "Link messages (outbox notifier)", "consultations",
            {"200": _answer("Newest first.", _obj(("messages",), messages=_array(_ref("OutboxMessage"))))},
            security=STAFF_READ, params=(_query("consultation", STR, "Only this consultation's."),))},
        # -- recordings
        c + "/recordings": {"get": _op(
            "A consultation's recordings", "recordings",
            {"200": _answer("In order.", _obj(("recordings",), recordings=_array(_ref("Recording"))))},
            security=STAFF_READ, params=(CID,), errors=(404,))},
        rec: {"get": _op("A recording with its manifest entries so far", "recordings",
                         {"200": _answer("The recording.", {"allOf": [_ref("Recording"), _obj(
                             ("entries",), entries=_array(ANY_OBJECT))]})},
                         security=STAFF_READ, params=(CID, RID), errors=(404,))},
        rec + "/playback": {"get": _op(
            "Play back (one WebM, Range requests work)", "recordings",
            {"200": _answer("The joined WebM.", media={"video/webm": {"schema": {"type": "string",
                                                                                 "format": "binary"}}}),
             "206": _answer("Part of it.", media={"video/webm": {"schema": {"type": "string", "format": "binary"}}})},
            security=STAFF_READ, errors=(404, 409, 416, 422),
            params=(CID, RID, REASON, _header("Range", STR, description="bytes=start-end")))},
        rec + "/export": {"get": _op(
            "Export: segments, signed manifest, key, how to verify (zip)", "recordings",
            {"200": _answer("The package.", media={"application/zip": {"schema": {"type": "string",
                                                                                  "format": "binary"}}})},
            security=STAFF_READ, errors=(404, 409, 422),
            params=(CID, RID, _query("reason", {"type": "string", "minLength": 1, "maxLength": 1000},
                                     "Why (required).", required=True)))},
        rec + "/classification": {"post": _op(
            "Mark evidential or not (officers, sergeants)", "recordings",
            {"200": _answer("The recording.", _ref("Recording"))}, security=STAFF_WRITE, params=(CID, RID),
            body=_ref("Classification"), example=EXAMPLES["classification"], errors=(400, 404, 413, 422))},
        rec + "/redactions": {
            "post": _op("Ask for a redacted copy (officers, sergeants, records): queued, 202", "recordings",
                        {"202": _answer("The job, queued.", _ref("RedactionJob"))}, security=STAFF_WRITE,
                        params=(CID, RID), body=_ref("RedactionRequest"), example=EXAMPLES["redaction"],
                        errors=(400, 404, 409, 413, 422)),
            "get": _op("The redaction jobs of a recording", "recordings", {"200": _answer(
                           "Newest first.", _obj(("redactions",), redactions=_array(_ref("RedactionJob"))))},
                       security=STAFF_READ, params=(CID, RID), errors=(404,))},
        rec + "/redactions/{xid}": {"get": _op(
            "A redaction job: status, progress, time left, the copy when done", "recordings",
            {"200": _answer("The job.", _ref("RedactionJob"))}, security=STAFF_READ, errors=(404,),
            params=(CID, RID, _param("xid", "path", UUID, description="The redaction job.")))},
        rec + "/redactions/{xid}/cancel": {"post": _op(
            "Cancel a redaction job", "recordings", {"200": _answer("The job.", _ref("RedactionJob"))},
            security=STAFF_WRITE, errors=(404, 409),
            params=(CID, RID, _param("xid", "path", UUID, description="The redaction job.")))},
        c + "/disclosure": {"post": _op(
            "A disclosure bundle for the prosecutor (zip; audit-logged with its reason)", "recordings",
            {"200": _answer("The bundle (`evr disclosure verify` checks it).",
                            media={"application/zip": {"schema": {"type": "string", "format": "binary"}}})},
            security=STAFF_WRITE, params=(CID,), body=_ref("DisclosureRequest"), errors=(400, 404, 409, 413, 422))},
        # -- chat
        c + "/chat": {"get": _op(
            "The chat transcript so far (audit-logged)", "chat",
            {"200": _answer("Oldest first.", _ref("ChatMessages"))}, security=STAFF_READ, params=(CID,),
            errors=(404,))},
        c + "/chat/transcript": {"get": _op(
            "The sealed chat transcript: transcript.json, its signature, key, how to verify (zip)", "chat",
            {"200": _answer("The package (`evr chat verify` checks it).",
                            media={"application/zip": {"schema": {"type": "string", "format": "binary"}}})},
            security=STAFF_READ, errors=(404, 422),
            params=(CID, _query("reason", {"type": "string", "minLength": 1, "maxLength": 1000},
                                "Why (required).", required=True)),
            description="404 `no_transcript` while the consultation is open, when it had no chat, or once "
                        "its transcript was disposed of.")},
        # -- uploads (tus), staff side
        c + "/uploads": {
            "options": {**_tus_options(*tus_staff), "parameters": [CID]},
            "post": {**_tus_create(*tus_staff), "parameters": [CID, TUS_RESUMABLE, UPLOAD_LENGTH, UPLOAD_METADATA]},
            "get": _op("A consultation's uploads", "uploads",
                       {"200": _answer("Oldest first.", _obj(("uploads",), uploads=_array(_ref("Upload"))))},
                       security=STAFF_READ, params=(CID,), errors=(404,)),
        },
        up: {
            "head": {**_tus_head(*tus_staff), "parameters": [CID, UID, TUS_RESUMABLE]},
            "patch": _op(
                "tus: append bytes; or JSON {exhibit_ref}: change the exhibit reference", "uploads",
                {"200": _answer("The upload (exhibit reference changed).", _ref("Upload")),
                 "204": _answer("Appended (tus).", headers=OFFSET_HEADERS)},
                security=STAFF_WRITE,
                params=(CID, UID, {**TUS_RESUMABLE, "required": False}, {**UPLOAD_OFFSET, "required": False},
                        UPLOAD_CHECKSUM),
                body_media={**TUS_BYTES, **_json(_obj(("exhibit_ref",), exhibit_ref={
                    "type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9 /._-]{0,63}$"}), {"exhibit_ref": "SV/2"})},
                errors=(400, 404, 409, 410, 412, 413, 415, 422, 423, 460),
                description="With Tus-Resumable or application/offset+octet-stream it is tus PATCH "
                            "(Upload-Offset required, Upload-Checksum); otherwise a JSON change."),
            "delete": {**_tus_delete(*tus_staff), "parameters": [CID, UID, TUS_RESUMABLE]},
            "get": _op("One upload (audit-logged view)", "uploads", {"200": _answer("The upload.", _ref("Upload"))},
                       security=STAFF_READ, params=(CID, UID), errors=(404,)),
        },
        up + "/content": {"get": _op(
            "The original, decrypted as it streams, as an attachment", "uploads",
            {"200": _answer("The file.", media={"*/*": {"schema": {"type": "string", "format": "binary"}}})},
            security=STAFF_READ, params=(CID, UID), errors=(404, 409))},
        up + "/preview": {"get": _op(
            "A small JPEG made by the server", "uploads",
            {"200": _answer("The preview.", media={"image/jpeg": {"schema": {"type": "string", "format": "binary"}}})},
            security=STAFF_READ, params=(CID, UID), errors=(404,))},
        # -- statements, staff side
        c + "/statements": {
            "post": _op("Draft a statement (officers, sergeants)", "statements",
                        {"201": _answer("Version 1.", {"allOf": [_ref("StatementSummary"),
                                                                 _obj(("content",), content=ANY_OBJECT)]})},
                        security=STAFF_WRITE, params=(CID,), body=_ref("StatementContent"),
                        example=EXAMPLES["statement"],
                        errors=(400, 404, 409, 413, 422)),
            "get": _op("A consultation's statements", "statements",
                       {"200": _answer("Oldest first.", _obj(("statements",),
                                                             statements=_array(_ref("StatementSummary"))))},
                       security=STAFF_READ, params=(CID,), errors=(404,)),
        },
        st: {
            "get": _op("One statement with its content, versions, events and layout", "statements",
                       {"200": _answer("The statement.", {"allOf": [
                           _ref("StatementSummary"), _ref("StatementLayout"),
                           _obj(("content", "versions", "events"), content=ANY_OBJECT,
                                versions=_array(ANY_OBJECT), events=_array(ANY_OBJECT),
                                change_request=STR_OR_NULL, signing_record=_nullable(ANY_OBJECT))]})},
                       security=STAFF_READ, params=(CID, SID), errors=(404,)),
            "put": _op("Save (a new version when the content differs)", "statements",
                       {"200": _answer("Saved or unchanged.", {"allOf": [
                           _ref("StatementSummary"), _obj(("saved",), saved=BOOL, signature_cancelled=BOOL)]})},
                       security=STAFF_WRITE, params=(CID, SID), body=_ref("StatementContent"),
                       example={**EXAMPLES["statement"], "version": 1},
                       errors=(400, 404, 409, 413, 422)),
        },
        st + "/versions/{version}": {"get": _op(
            "An old version", "statements", {"200": _answer("The version.", _ref("StatementVersion"))},
            security=STAFF_READ, errors=(404,),
            params=(CID, SID, _param("version", "path", {"type": "integer", "minimum": 1})))},
        st + "/send": {"post": _op(
            "Send for the witness's signature", "statements",
            {"200": _answer("Awaiting signature.", _obj(("id", "status", "version"), id=UUID, status=STR,
                                                        version=INT))},
            security=STAFF_WRITE, params=(CID, SID), body_required=False,
            body=_obj(identification={"type": "string", "maxLength": 1000}, version=INT),
            example={"identification": "Driving licence seen on camera"},
            errors=(400, 404, 409, 410, 413, 422))},
        st + "/preview": {"get": _op("The unsigned PDF of the newest version", "statements",
                                     {"200": _answer("PDF.", media=PDF)}, security=STAFF_READ,
                                     params=(CID, SID), errors=(404,))},
        st + "/pdf": {"get": _op("The sealed PDF (audit-logged)", "statements", {"200": _answer("PDF.", media=PDF)},
                                 security=STAFF_READ, params=(CID, SID, REASON), errors=(404, 409, 422))},
        st + "/disclosure.pdf": {"get": _op(
            "The disclosure copy: the MG11 without its rear page, signed (audit-logged)", "statements",
            {"200": _answer("PDF.", media=PDF)}, security=STAFF_READ, params=(CID, SID, REASON),
            errors=(404, 409, 410, 422))},
        # -- retention and the audit log
        c + "/retention": {
            "get": _op("The consultation's retention class and the choices", "retention",
                       {"200": _answer("The class.", _ref("Assignment"))}, security=STAFF_READ, params=(CID,),
                       errors=(404,)),
            "put": _op("Set the retention class (officers, sergeants)", "retention",
                       {"200": _answer("The class.", _ref("Assignment"))}, security=STAFF_WRITE, params=(CID,),
                       body={"type": "object", "required": ["class", "reason"],
                             "properties": {"class": STR, "reason": STR, "subject_dob": {"type": "string",
                                                                                         "format": "date"}}},
                       example={"class": "group3", "reason": "Theft of a pedal cycle"},
                       errors=(400, 404, 413, 422)),
        },
        "/api/retention/classes": {"get": _op(
            "The retention classes, the default and the assessment criteria", "retention",
            {"200": _answer("The classes.", _obj(("classes", "default_class", "criteria"),
                                                 classes=_array(ANY_OBJECT), default_class=STR_OR_NULL,
                                                 criteria={"type": ["object", "array"]}))},
            security=STAFF_READ)},
        "/api/retention/due": {"get": _op(
            "The due list (records)", "retention",
            {"200": _answer("Soonest first.", _obj(("items", "next_cursor"), items=_array(_ref("ScheduleRow")),
                                                   next_cursor=STR_OR_NULL))},
            security=STAFF_READ, params=(BEFORE, PAGE_LIMIT, _query("cursor", STR, "next_cursor of the last page.")),
            errors=(400,))},
        "/api/retention/schedule.csv": {"get": _op(
            "The due schedule as CSV (records; logged as an export)", "retention",
            {"200": _answer("CSV.", media={"text/csv": {"schema": STR}})}, security=STAFF_READ, params=(BEFORE,),
            errors=(400,))},
        "/api/retention/consultations/{id}/items": {"get": _op(
            "A consultation's class and items (records)", "retention",
            {"200": _answer("Items.", _obj(("consultation", "items"), consultation=_ref("Assignment"),
                                           items=_array(_ref("ScheduleRow"))))},
            security=STAFF_READ, params=(CID,), errors=(404,))},
        "/api/retention/items/{item}": {"get": _op(
            "An item: metadata, hashes, schedule, objects, reviews, holds, certificate, audit trail (records)",
            "retention", {"200": _answer("The item.", _obj(("kind", "consultation_id", "audit"), kind=STR,
                                                           consultation_id=UUID, audit=_array(_ref("AuditEntry"))))},
            security=STAFF_READ, params=(_param("item", "path", UUID),), errors=(404,))},
        "/api/retention/items/{item}/content": {"get": _op(
            "One stored object, opened with a logged reason (records)", "retention",
            {"200": _answer("The object.", media={"application/octet-stream": {"schema": {"type": "string",
                                                                                         "format": "binary"}}})},
            security=STAFF_READ, errors=(400, 404, 422),
            params=(_param("item", "path", UUID), _query("key", STR, "The object's key.", required=True),
                    _query("reason", {"type": "string", "minLength": 1}, "Why (required).", required=True)))},
        "/api/retention/review": {"post": _op(
            "Review an item or a consultation (records)", "retention",
            {"201": _answer("The reviews.", _obj(("reviews",), reviews=_array(_ref("Review"))))},
            security=STAFF_WRITE, errors=(400, 404, 409, 413, 422),
            body={"type": "object", "required": ["id", "decision", "reason"], "properties": {
                "id": STR, "decision": {"type": "string", "enum": ["retain", "dispose"]}, "reason": STR,
                "next_review": TIME, "criteria": _array(STR)}},
            example={"id": "0b6c8f3e-9d1f-4c53-8f6e-2b0f6f1f7a10", "decision": "retain",
                     "reason": "Linked to an open investigation"})},
        "/api/retention/hold": {"post": _op(
            "Place a legal hold (records)", "retention", {"201": _answer("The hold.", _obj(("hold",),
                                                                                          hold=_ref("Hold")))},
            security=STAFF_WRITE, body=_ref("ReasonFor"), example=EXAMPLES["reason_for"],
            errors=(400, 404, 409, 413, 422))},
        "/api/retention/release": {"post": _op(
            "Release a legal hold (records)", "retention",
            {"200": _answer("Released.", _obj(("released",), released=_array(_ref("Hold"))))},
            security=STAFF_WRITE, body=_ref("ReasonFor"), example=EXAMPLES["reason_for"],
            errors=(400, 404, 409, 413, 422))},
        "/api/retention/dispose": {"post": _op(
            "Dispose of items (dry unless execute; records)", "retention",
            {"200": _answer("The candidates, or what was done.", _obj(
                ("executed",), executed=BOOL, candidates=_array(_ref("ScheduleRow")), disposed=_array(STR),
                certificates=_array(STR), waiting=ANY_OBJECT, failed=ANY_OBJECT, held=INT, skipped=INT))},
            security=STAFF_WRITE, errors=(400, 404, 409, 413, 422),
            body={"type": "object", "properties": {"ids": _array(UUID), "due": BOOL, "execute": BOOL,
                                                   "limit": {"type": "integer", "minimum": 1, "maximum": 10000}}},
            example={"due": True})},
        "/api/retention/holds": {"get": _op(
            "Legal holds in force (all=1: released ones too; records)", "retention",
            {"200": _answer("Newest first.", _obj(("holds",), holds=_array(_ref("Hold"))))},
            security=STAFF_READ, params=(_query("all", {"type": "string", "enum": ["1", "true", "0"]}),),
            errors=(400,))},
        "/api/retention/certificates": {"get": _op(
            "Disposal certificates (records)", "retention",
            {"200": _answer("Newest first.", _obj(("certificates",), certificates=_array(_ref("Certificate"))))},
            security=STAFF_READ, errors=(400,),
            params=(_query("consultation", STR), _query("item", STR), BEFORE, PAGE_LIMIT))},
        "/api/retention/certificates/{cert}": {"get": _op(
            "One disposal certificate (records)", "retention", {"200": _answer("The certificate.",
                                                                              _ref("Certificate"))},
            security=STAFF_READ, params=(_param("cert", "path", UUID),), errors=(404,))},
        # -- incidents and the EVR queue (session and CSRF header, or an API key)
        "/api/incidents": {
            "post": _op("Enter an incident (call_handler, integration, sergeant)", "incidents",
                        {"201": _answer("Entered, in triage.", _ref("Incident"))}, security=KEY_WRITE,
                        body=_ref("NewIncident"), example=EXAMPLES["incident"], errors=(400, 401, 403, 409, 413, 422)),
            "get": _op("Incidents this caller may see", "incidents",
                       {"200": _answer("Newest report first, without victim details.",
                                       _obj(("incidents",), incidents=_array(_ref("Incident"))))},
                       security=KEY_READ, params=(_query("state", STR), _query("from", TIME), _query("to", TIME)),
                       errors=(400, 401, 403)),
        },
        inc: {"get": _op("One incident with its timeline", "incidents", {"200": incident}, security=KEY_READ,
                         params=(IID,), errors=(401, 403, 404))},
        inc + "/triage": {"post": _op("Triage (sergeant): queue, allocate or reject", "incidents",
                                      {"200": incident}, security=KEY_WRITE, params=(IID,), body=_ref("Triage"),
                                      example={"decision": "queue", "reason": "Suitable"},
                                      errors=(400, 401, 403, 404, 409, 413, 422))},
        inc + "/consultation": {"post": _op(
            "Start the call (the dispatched officer)", "incidents",
            {"201": _answer("The consultation, as POST /api/consultations answers.", _ref("ConsultationCreated"))},
            security=KEY_WRITE, params=(IID,), errors=(401, 403, 404, 409))},
        inc + "/phoned": {"post": _op("Phoned the victim (the dispatched officer)", "incidents", {"200": incident},
                                      security=KEY_WRITE, params=(IID,), errors=(401, 403, 404, 409))},
        inc + "/investigation": {"post": _op(
            "Submit the investigation record (the dispatched officer)", "incidents", {"200": incident},
            security=KEY_WRITE, params=(IID,), body=_ref("Investigation"), example=EXAMPLES["investigation"],
            errors=(400, 401, 403, 404, 409, 413, 422))},
        inc + "/review": {"post": _op(
            "Review (sergeant)", "incidents", {"200": incident}, security=KEY_WRITE, params=(IID,),
            body=_ref("IncidentReview"), example={"outcome": "finalised", "reason": "Complete"},
            errors=(400, 401, 403, 404, 409, 413, 422))},
        inc + "/crime_outcome": {"post": _op(
            "Home Office crime outcome (officer, sergeant, integration)", "incidents", {"200": incident},
            security=KEY_WRITE, params=(IID,),
            body=_obj(("code",), code={"type": "integer", "minimum": 1, "maximum": 22}), example={"code": 1},
            errors=(400, 401, 403, 404, 409, 413, 422))},
        inc + "/attended": {"post": _op(
            "Trial mode: a control incident's in-person attendance (sergeant, integration)", "incidents",
            {"200": incident}, security=KEY_WRITE, params=(IID,), body=_obj(("at",), at=TIME),
            example={"at": "2026-11-30T10:42:00Z"}, errors=(400, 401, 403, 404, 409, 413, 422))},
        "/api/queue": {"get": _op(
            "The queue (officer, sergeant)", "incidents",
            {"200": _answer("An officer's allocated incidents first, then the queued ones; oldest report first.",
                            _obj(("incidents",), incidents=_array(_ref("Incident"))))},
            security=KEY_READ, errors=(401, 403))},
        "/api/queue/ws": {"get": _op(
            "The live queue board (officer, sergeant)", "incidents",
            {"101": {"description": "WebSocket: {\"type\": \"queue\", \"incidents\": [...]}, as GET /api/queue "
                                    "answers this user, at once and after every change."}},
            security=STAFF_READ, errors=(400, 401, 403),
            description="A WebSocket (send the Upgrade handshake); a plain GET is refused.")},
        "/api/queue/take": {"post": _op(
            "Take the next incident (officer)", "incidents",
            {"200": _answer("Now dispatched to this officer.", _ref("Incident")),
             "204": {"description": "Nothing to take."}},
            security=KEY_WRITE, errors=(401, 403))},
        "/api/kpis": {"get": _op(
            "Performance indicators of the incidents reported in a period (sergeant, admin)", "evaluation",
            {"200": _answer("The figures, and the series by the force's days or weeks; with by_arm=1, each "
                            "arm's with 95 % intervals and the difference.",
                            {"anyOf": [_ref("Kpis"), _ref("KpisByArm")]})},
            security=STAFF_READ, params=KPI_PARAMS, errors=(400, 401, 403))},
        "/api/kpis.csv": {"get": _op(
            "The series of the performance indicators as CSV (sergeant, admin)", "evaluation",
            {"200": _answer("CSV: start, incidents, to_evr, rejected, response_p50_minutes, satisfied_pct.",
                            media={"text/csv": {"schema": STR}})},
            security=STAFF_READ, params=KPI_PARAMS, errors=(400, 401, 403))},
        "/api/kpis/response_times": {"get": _op(
            "How long attended incidents waited, in bins, against their grade's target (sergeant, admin)",
            "evaluation",
            {"200": _answer("Bins of response minutes (the last has no upper end).", _obj(
                ("from", "to", "bins"), **{"from": TIME, "to": TIME}, grade_targets_hours=ANY_OBJECT,
                bins=_array(_obj(("from_minutes", "to_minutes", "incidents", "within_target", "past_target",
                                  "no_target"), from_minutes=INT, to_minutes={"type": ["integer", "null"]},
                                 incidents=INT, within_target=INT, past_target=INT, no_target=INT))))},
            security=STAFF_READ, params=KPI_PARAMS, errors=(400, 401, 403))},
        "/api/kpis/charts/{name}.svg": {"get": _op(
            "A chart of the performance indicators as SVG (sergeant, admin)", "evaluation",
            {"200": _answer("SVG with role=img, a <title> and a <desc> (its text alternative); bars are "
                            "<rect class=\"bar\">, points <circle class=\"point\">.",
                            media={"image/svg+xml": {"schema": STR}})},
            security=STAFF_READ, params=(_param("name", "path", {"type": "string", "enum": [
                "response_times", "volumes", "median_response", "rates", "satisfaction"]}, True), *KPI_PARAMS),
            errors=(400, 401, 403, 404))},
        "/api/consultations/{id}/survey": {"post": _op(
            "A single-use survey link for the victim of a closed call (officer, sergeant)", "evaluation",
            {"201": _answer("The link, to give the victim.", _obj(("survey_url",), survey_url=STR,
                                                                   expires_at=TIME))},
            security=STAFF_WRITE, params=(_param("id", "path", UUID, True),), body_required=False,
            errors=(401, 403, 404, 409))},
        "/s/{token}": {"post": _op(
            "The victim's survey answers, once (any question may be skipped, not all)", "victim",
            {"201": _answer("Kept, apart from the call.", _obj(("answered",), answered=BOOL))},
            security=PUBLIC, params=(_param("token", "path", {"type": "string", "minLength": 1}, True),),
            body=_obj(("answers",), answers=_obj(
                (), satisfied={"type": ["integer", "null"], "minimum": 1, "maximum": 5},
                would_use_again={"type": ["boolean", "null"]},
                felt_safe={"type": ["integer", "null"], "minimum": 1, "maximum": 5},
                confidence_in_police={"type": ["integer", "null"], "minimum": 1, "maximum": 5})),
            example={"answers": {"satisfied": 4, "would_use_again": True}},
            errors=(400, 403, 404, 410, 413, 422, 429))},
        "/api/officers": {"get": _op(
            "Officers to allocate to (sergeant)", "incidents",
            {"200": _answer("Every active officer, those signed in now first, then by name.",
                            _obj(("officers",), officers=_array(_obj(("username", "signed_in"), username=STR,
                                                                     signed_in=BOOL))))},
            security=STAFF_READ, errors=(401, 403))},
        "/api/audit": {"get": _op(
            "Search the audit log (records, admin)", "audit",
            {"200": _answer("Entries.", _obj(("entries", "next_cursor"), entries=_array(_ref("AuditEntry")),
                                             next_cursor=STR_OR_NULL))},
            security=STAFF_READ, errors=(400,),
            params=(_query("object", STR, "e.g. recording:<id>"), _query("consultation", STR), _query("actor", STR),
                    _query("action", STR, "Exact, or a family ending in '.'"), _query("since", TIME),
                    _query("until", TIME), _query("cursor", {"type": "string", "pattern": "^[0-9]+$"}),
                    _query("order", {"type": "string", "enum": ["asc", "desc"]}), PAGE_LIMIT))},
        # -- the victim's link
        j + "/ws": {"get": {**_socket("The victim's or a guest's signalling socket", "victim", VICTIM),
                            "parameters": [TOKEN]}},
        j + "/survey": {"post": _op(
            "The end screen's survey link, once police closed the call (the browser that claimed the link; "
            "same-origin; within a day)", "victim",
            {"201": _answer("A single-use survey link.", _obj(("survey_url",), survey_url=STR))},
            security=VICTIM, params=(TOKEN,), body_required=False, errors=(403, 404, 409, 410))},
        j + "/uploads": {
            "options": {**_tus_options(*tus_victim), "parameters": [TOKEN]},
            "post": {**_tus_create(*tus_victim), "parameters": [TOKEN, TUS_RESUMABLE, UPLOAD_LENGTH, UPLOAD_METADATA]},
            "get": _op("The victim's receipts", "victim",
                       {"200": _answer("Oldest first.", _obj(("uploads",), uploads=_array(_ref("Receipt"))))},
                       security=VICTIM, params=(TOKEN,), errors=(403, 404, 410)),
        },
        j + "/uploads/{uid}": {
            "head": {**_tus_head(*tus_victim), "parameters": [TOKEN, UID, TUS_RESUMABLE]},
            "patch": {**_tus_patch(*tus_victim), "parameters": [TOKEN, UID, TUS_RESUMABLE, UPLOAD_OFFSET,
                                                                 UPLOAD_CHECKSUM]},
            "delete": {**_tus_delete(*tus_victim), "parameters": [TOKEN, UID, TUS_RESUMABLE]},
            "get": _op("One receipt", "victim", {"200": _answer("The receipt.", _ref("Receipt"))},
                       security=VICTIM, params=(TOKEN, UID), errors=(403, 404, 410)),
        },
        j + "/statements": {"get": _op(
            "Statements sent to this link", "victim",
            {"200": _answer("Sent or signed ones.", _obj(("statements",), statements=_array(_obj(
                ("id", "status", "version"), id=UUID, status=STR, version=INT, sha256=SHA256_OR_NULL))))},
            security=VICTIM, params=(TOKEN,), errors=(403, 404, 410))},
        j + "/statements/{sid}": {"get": _op(
            "A statement as it will be sealed (audit-logged)", "victim",
            {"200": _answer("The statement.", _ref("VictimStatement"))}, security=VICTIM, params=(TOKEN, SID),
            errors=(403, 404, 409, 410))},
        j + "/statements/{sid}/preview": {"get": _op(
            "The unsigned PDF", "victim", {"200": _answer("PDF.", media=PDF)}, security=VICTIM,
            params=(TOKEN, SID), errors=(403, 404, 409, 410))},
        j + "/statements/{sid}/sign": {"post": _op(
            "Sign (same-origin)", "victim",
            {"200": _answer("Signed and sealed.", _obj(("id", "status", "sha256"), id=UUID,
                                                       status={"const": "signed"}, sha256=SHA256, pages=INT,
                                                       signed_at=TIME))},
            security=VICTIM, params=(TOKEN, SID), body=_ref("Sign"), example=EXAMPLES["sign"],
            errors=(400, 403, 404, 409, 410, 413, 422))},
        j + "/statements/{sid}/change": {"post": _op(
            "Ask for a change (back to draft; same-origin)", "victim",
            {"200": _answer("Back to draft.", _obj(("id", "status", "version"), id=UUID, status=STR, version=INT))},
            security=VICTIM, params=(TOKEN, SID),
            body=_obj(("message",), message={"type": "string", "minLength": 1, "maxLength": 4000}),
            example={"message": "The bicycle was blue, not black."},
            errors=(400, 403, 404, 409, 410, 413, 422))},
        j + "/chat": {"get": _op(
            "The chat transcript so far", "victim", {"200": _answer("Oldest first.", _ref("ChatMessages"))},
            security=VICTIM, params=(TOKEN,), errors=(403, 404, 410))},
    }


def _claim() -> dict[str, Any]:
    """``POST /j/{token}/claim`` (contract, "The victim's link"): documented once the
    application registers it (issue 11, finding 5, lands in another branch)."""
    return _op("Claim the link for this browser (sets the binding cookie; same-origin)", "victim",
               {"200": _answer("Claimed by this browser.", _obj(("status",), status=STR))},
               security=PUBLIC, params=(TOKEN,), errors=(403, 404, 410))


GUEST_ROLE: Schema = {"type": "string", "enum": ["carer", "interpreter", "appropriate_adult", "support_worker"]}
SCHEMAS["NewGuest"] = {
    "type": "object", "required": ["role"],
    "properties": {"role": GUEST_ROLE, "name": {"type": ["string", "null"], "maxLength": 200},
                   "language": {"type": ["string", "null"], "maxLength": 64}, "phone": STR_OR_NULL,
                   "email": STR_OR_NULL, "notify": {"type": ["string", "null"], "enum": ["sms", "email", None]}},
}
SCHEMAS["GuestInvited"] = _obj(
    ("id", "role", "join_url", "expires_at"), id=UUID, role=GUEST_ROLE, name=STR_OR_NULL, language=STR_OR_NULL,
    join_url={"type": "string", "format": "uri"}, expires_at=TIME, message=_nullable(_ref("OutboxMessage")))
SCHEMAS["Guest"] = _obj(
    ("id", "role", "status", "connected", "created_at", "closed_at"), id=UUID, role=GUEST_ROLE, name=STR_OR_NULL,
    language=STR_OR_NULL, status={"type": "string", "enum": ["invited", "joined", "closed", "expired"]},
    connected=BOOL, created_at=TIME, expires_at=TIME, closed_at=TIME_OR_NULL)


def _guest_paths() -> dict[str, dict[str, Any]]:
    """Guests (contract, "Guests, chat, screen share and location"; :mod:`evr.guests`)."""
    guests = "/api/consultations/{id}/guests"
    gid = _param("gid", "path", UUID, description="The guest.")
    return {
        guests: {
            "post": _op("Invite a guest: a link of their own, shown once and sent by SMS or email", "guests",
                        {"201": _answer("Invited.", _ref("GuestInvited"))}, security=STAFF_WRITE, params=(CID,),
                        body=_ref("NewGuest"), example={"role": "interpreter", "name": "A. Interpreter",
                                                        "language": "Polish", "phone": "07700 900456"},
                        errors=(400, 404, 409, 410, 413, 422)),
            "get": _op("The consultation's guests and their links' status (audit-logged)", "guests",
                       {"200": _answer("Oldest first.", _obj(("guests",), guests=_array(_ref("Guest"))))},
                       security=STAFF_READ, params=(CID,), errors=(404,)),
        },
        guests + "/{gid}/close": {"post": _op(
            "End a guest's link (410 from now on); the call goes on", "guests",
            {"200": _answer("Ended.", _obj(("id", "status"), id=UUID, status={"const": "closed"}))},
            security=STAFF_WRITE, params=(CID, gid), errors=(404,))},
    }


def build(app: Optional[web.Application] = None) -> dict[str, Any]:
    """The whole document (``app``: the application it describes; operations still
    being added by other work are documented only once it has them)."""
    paths = {**_paths(), **_guest_paths()}
    if app is not None and ("POST", "/j/{token}/claim") in routes(app):
        paths["/j/{token}/claim"] = {"post": _claim()}
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "EVR: video response for police forces",
            "version": "1",
            "description": "The HTTP API of EVR. JSON everywhere; times are RFC 3339 UTC; errors are "
                           '`{"error": {"code", "message"}}`. Staff send the session cookie and, on every '
                           "change, the X-CSRF-Token header; a victim's requests under /j/{token}/ carry the "
                           "link's binding cookie. WebSocket signalling is described in the contract.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "paths": paths,
        "webhooks": WEBHOOKS,
        "components": {
            "schemas": SCHEMAS,
            "responses": {
                "Error": {"description": "Any other failure, in the contract's error shape.",
                          "content": _json(_ref("Error"))},
                **{f"E{status}": {"description": text, "content": _json(_ref("Error"))}
                   for status, text in _ERROR_TEXT.items()},
            },
            "securitySchemes": SECURITY_SCHEMES,
        },
    }


_DAY_OR_TIME = {"type": "string", "maxLength": 40,
                "description": "A local date (YYYY-MM-DD, the force's time zone) or an RFC 3339 time"}
KPI_PARAMS = (
    _query("from", _DAY_OR_TIME, "Start (inclusive); default: 30 days before to"),
    _query("to", _DAY_OR_TIME, "End: a date includes its whole day; a time is exclusive; default: today"),
    _query("group_by", {"type": "string", "enum": ["day", "week"]}, "The series' step (weeks from Monday)"),
    _query("grade", {"type": "string", "pattern": "^[1-5]$"}, "Only incidents of this grade"),
    _query("category", {"type": "string", "maxLength": 64}, "Only incidents of this category"),
    _query("by_arm", {"type": "string", "enum": ["0", "1"]},
           "1: in a trial, the figures of each arm with 95 % intervals and the difference (another shape)"),
)
_NUM = {"type": ["number", "null"]}
_DISTRIBUTION = _obj(("n", "p50", "p90"), n=INT, p50=_NUM, p90=_NUM, mean=_NUM, within_target_pct=_NUM)
SCHEMAS["Kpis"] = _obj(
    ("from", "to", "incidents", "officers_active", "response_minutes", "to_investigation_end_minutes", "reviews",
     "crime_outcomes", "satisfaction", "series"),
    **{"from": TIME, "to": TIME}, timezone=STR, group_by=STR,
    incidents=_obj(("created", "to_evr", "rejected"), created=INT, to_evr=INT, rejected=INT),
    officers_active=INT, response_minutes=_DISTRIBUTION, to_investigation_end_minutes=_DISTRIBUTION,
    reviews=_obj(("n", "within_24h_pct"), n=INT, within_24h_pct=_NUM),
    crime_outcomes=_obj(("n", "positive_pct", "outcome_14_pct", "outcome_16_pct"), n=INT, positive_pct=_NUM,
                        outcome_14_pct=_NUM, outcome_16_pct=_NUM),
    satisfaction=_obj(("responses", "satisfied_pct", "would_use_again_pct"), responses=INT, satisfied_pct=_NUM,
                      would_use_again_pct=_NUM),
    series=_array(_obj(("start", "incidents", "to_evr", "rejected", "response_p50_minutes", "satisfied_pct"),
                       start={"type": "string", "format": "date"}, incidents=INT, to_evr=INT, rejected=INT,
                       response_p50_minutes=_NUM, satisfied_pct=_NUM)),
)

SCHEMAS["KpisByArm"] = _obj(
    ("from", "to", "by_arm", "difference"), **{"from": TIME, "to": TIME}, timezone=STR, group_by=STR,
    by_arm=_obj(("treatment", "control"), treatment=ANY_OBJECT, control=ANY_OBJECT), difference=ANY_OBJECT)

#: What EVR sends the command-and-control system (``webhook_url``; :mod:`evr.incidents.webhooks`).
WEBHOOKS = {
    "incidentEvent": {"post": {
        "summary": "An incident's step, for the command-and-control system",
        "description": "Sent to webhook_url for incident.dispatched, incident.arrived, incident.submitted, "
                       "incident.reviewed and incident.closed; in order per incident, each retried with backoff "
                       "until a 2xx answer. The body is canonical JSON (keys sorted, no spaces, UTF-8) and "
                       "X-EVR-Signature is sha256= and the hex HMAC-SHA256 of those bytes with webhook_secret. "
                       "X-EVR-Delivery is the same on every attempt of one event.",
        "tags": ["incidents"],
        "parameters": [
            {"name": "X-EVR-Signature", "in": "header", "required": True,
             "schema": {"type": "string", "pattern": "^sha256=[0-9a-f]{64}$"}},
            {"name": "X-EVR-Event", "in": "header", "required": True, "schema": STR},
            {"name": "X-EVR-Delivery", "in": "header", "required": True,
             "schema": {"type": "string", "pattern": "^[0-9]+$"}},
        ],
        "requestBody": {"required": True, "content": _json(_obj(
            ("event", "incident", "at"),
            event={"type": "string", "enum": ["incident.dispatched", "incident.arrived", "incident.submitted",
                                              "incident.reviewed", "incident.closed"]},
            incident=_ref("Incident"), at=TIME))},
        "responses": {"2XX": {"description": "Taken; any other answer is tried again later."}},
    }},
}

#: Routes that are pages or files, not the API: left out of the document.
PAGES = {("GET", "/"), ("GET", "/console"), ("GET", "/records"), ("GET", "/queue"), ("GET", "/desk"),
         ("GET", "/dashboard"),
         ("GET", "/incidents/new"), ("GET", "/favicon.ico"), ("GET", "/j/{token}"), ("HEAD", "/j/{token}"),
         ("GET", "/s/{token}")}
#: Routes between the nodes of a cluster (:mod:`evr.cluster`), signed with its secret: not the API.
INTERNAL = {("GET", "/internal/rooms/{id}/ws")}


def routes(app: web.Application) -> set[tuple[str, str]]:
    """(method, path template) of every API route the application registers: what
    the document must describe. Pages, static files and the HEAD that aiohttp adds
    beside a GET (same handler) are left out; an explicit HEAD (tus) is kept."""
    gets = {(_path_of(r), r.handler) for r in app.router.routes() if r.method == "GET"}
    found = set()
    for route in app.router.routes():
        path = _path_of(route)
        if path is None or route.method == "*":  # static files have a prefix, no path
            continue
        if (route.method, path) in PAGES | INTERNAL or (route.method == "HEAD" and (path, route.handler) in gets):
            continue
        found.add((route.method, path))
    return found


def _path_of(route: web.AbstractRoute) -> Optional[str]:
    info = route.resource.get_info() if route.resource is not None else {}
    return info.get("formatter") or info.get("path")


async def document(request: web.Request) -> web.Response:
    """``GET /api/openapi.json``: public, built once per application."""
    built = request.app[_DOCUMENT]
    if not built:
        built.update(build(request.app))
    return web.json_response(built)


def setup(app: web.Application) -> None:
    app[_DOCUMENT] = {}  # filled at the first request, once every route is registered
    app.router.add_get(PATH, document, allow_head=False)
