"""The shared primitives of EVR's tamper evidence, in one place.

The audit log, recording manifests, disposal certificates and statement versions are
all hashed or signed over the same canonical JSON, and both hash chains (the audit
log's and a recording's) start from the same genesis hash. Two copies of either
could drift apart and make a verifier disagree with the writer; so everything that
hashes or signs calls these.
"""

from __future__ import annotations

import json
from typing import Any

#: The ``prev`` hash of the first entry of every hash chain.
GENESIS = "0" * 64


def canonical(value: Any) -> bytes:
    """The one JSON form that is hashed and signed: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
