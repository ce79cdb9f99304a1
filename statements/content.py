"""A statement's content: what the officer drafts, checked and normalised.

A version's content is a plain JSON object; its SHA-256 over canonical JSON tells
whether two saves differ (only a save that changes it makes a new version).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

from fontTools.ttLib import TTFont

from evr.errors import ApiError
from evr.integrity import canonical

FONTS = Path(__file__).parent / "fonts"
REGULAR = FONTS / "DejaVuSans.ttf"
BOLD = FONTS / "DejaVuSans-Bold.ttf"

MAX_TEXT = 60_000
MAX_FIELD = 500
MAX_EXHIBITS = 100
EXHIBIT_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 /._-]{0,63}$")
WITNESS_FIELDS = ("name", "over_18", "age", "occupation")
#: The MG11 rear page: free-text fields and yes/no (or unanswered) fields.
REAR_TEXT = ("contact", "preferred_contact", "dates_to_avoid", "special_measures", "taken_by", "taken_where",
             "taken_when")
REAR_YES_NO = ("consent_medical_access", "consent_medical_disclosure", "vps_offered", "court_willing")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def content_hash(content: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(content)).hexdigest()


@lru_cache(maxsize=1)
def _glyphs() -> frozenset[int]:
    regular = set(TTFont(REGULAR, lazy=True).getBestCmap())
    return frozenset(regular & set(TTFont(BOLD, lazy=True).getBestCmap()))


class _Checker:
    """Collects every failing field so one 422 names them all."""

    def __init__(self) -> None:
        self.failed: list[str] = []
        self.unprintable: set[str] = set()

    def text(self, value: Any, field: str, limit: int = MAX_FIELD, multiline: bool = False) -> str:
        if value is None:
            return ""
        if not isinstance(value, str) or len(value) > limit:
            self.failed.append(field)
            return ""
        value = unicodedata.normalize("NFC", value.replace("\r\n", "\n").replace("\r", "\n").replace("\t", "    "))
        if not multiline:
            value = " ".join(value.split())
        value = _CONTROL.sub("", value)
        if multiline:
            value = "\n".join(line.rstrip() for line in value.split("\n")).strip("\n")
        glyphs = _glyphs()
        missing = {ch for ch in value if ord(ch) not in glyphs and ch != "\n"}
        if missing:
            self.unprintable |= missing
            self.failed.append(field)
        return value

    def yes_no(self, value: Any, field: str) -> Optional[bool]:
        if value is None or isinstance(value, bool):
            return value
        self.failed.append(field)
        return None


def parse(body: Any, exhibits_lookup: Optional[dict[str, dict[str, Any]]] = None) -> dict[str, Any]:
    """The normalised content of a draft, or 422 naming every bad field. A draft may
    be incomplete (autosave); :func:`missing` says what sending needs."""
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "Send a JSON object.")
    check = _Checker()
    witness_in = body.get("witness") or {}
    if not isinstance(witness_in, dict):
        check.failed.append("witness")
        witness_in = {}
    over_18 = check.yes_no(witness_in.get("over_18"), "witness.over_18")
    age = witness_in.get("age")
    if over_18 is None and isinstance(age, int) and not isinstance(age, bool) and 0 < age < 18:
        over_18 = False
    if over_18:
        age = None
    elif age is not None and (isinstance(age, bool) or not isinstance(age, int) or not 0 < age < 18):
        check.failed.append("witness.age")
        age = None
    witness = {
        "name": check.text(witness_in.get("name"), "witness.name", 200),
        "over_18": over_18,
        "age": age,
        "occupation": check.text(witness_in.get("occupation"), "witness.occupation", 200),
    }
    text = check.text(body.get("text"), "text", MAX_TEXT, multiline=True)
    exhibits = _exhibits(body.get("exhibits"), check, exhibits_lookup or {})
    rear_in = body.get("rear") or {}
    if not isinstance(rear_in, dict):
        check.failed.append("rear")
        rear_in = {}
    rear: dict[str, Any] = {k: check.text(rear_in.get(k), f"rear.{k}", 1000) for k in REAR_TEXT}
    rear.update({k: check.yes_no(rear_in.get(k), f"rear.{k}") for k in REAR_YES_NO})
    reader_in = body.get("read_to_witness")
    reader = None
    if reader_in is not None:
        if not isinstance(reader_in, dict):
            check.failed.append("read_to_witness")
        else:
            name = check.text(reader_in.get("name"), "read_to_witness.name", 200)
            if not name:
                check.failed.append("read_to_witness.name")
            reader = {"name": name,
                      "declaration": check.text(reader_in.get("declaration"), "read_to_witness.declaration", 2000)}
    if check.failed:
        message = "These fields are not valid: " + ", ".join(dict.fromkeys(check.failed)) + "."
        if check.unprintable:
            shown = " ".join(sorted(check.unprintable))[:80]
            message += f" These characters cannot be printed on the statement: {shown}"
        raise ApiError(422, "invalid_statement", message, fields=list(dict.fromkeys(check.failed)))
    return {"witness": witness, "text": text, "exhibits": exhibits, "rear": rear, "read_to_witness": reader}


def _exhibits(value: Any, check: _Checker, uploads: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Exhibits by reference: ``"JS/1"``, or ``{"ref", "description", "upload_id"}``;
    an upload of this consultation gives its file name and SHA-256 (and its
    reference when none is given)."""
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_EXHIBITS:
        check.failed.append("exhibits")
        return []
    out = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            item = {"ref": item}
        if not isinstance(item, dict):
            check.failed.append(f"exhibits[{i}]")
            continue
        upload_id = item.get("upload_id")
        upload = None
        if upload_id is not None:
            upload = uploads.get(upload_id) if isinstance(upload_id, str) else None
            if upload is None:
                check.failed.append(f"exhibits[{i}].upload_id")
                continue
        ref = check.text(item.get("ref") or (upload or {}).get("exhibit_ref"), f"exhibits[{i}].ref", 64)
        if not EXHIBIT_REF.match(ref):
            check.failed.append(f"exhibits[{i}].ref")
            continue
        out.append({
            "ref": ref,
            "description": check.text(item.get("description"), f"exhibits[{i}].description"),
            "upload_id": upload_id,
            "filename": (upload or {}).get("filename"),
            "sha256": (upload or {}).get("sha256"),
        })
    return out


def missing(content: dict[str, Any]) -> list[str]:
    """What a statement needs before it can be sent for signature."""
    witness = content["witness"]
    needed = []
    if not witness["name"]:
        needed.append("witness.name")
    if witness["over_18"] is None or (witness["over_18"] is False and witness["age"] is None):
        needed.append("witness.over_18" if witness["over_18"] is None else "witness.age")
    if not content["text"].strip():
        needed.append("text")
    return needed
