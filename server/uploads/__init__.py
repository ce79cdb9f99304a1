"""Evidence uploads: tus 1.0 resumable uploads from the victim and staff, hashed and
sealed as they stream in, typed from their content, ingested into the evidence store.

``setup(app)`` registers the routes and the service (see :mod:`.api`, :mod:`.service`).
"""

from __future__ import annotations

from .api import UPLOADS, setup
from .service import Uploads

__all__ = ["UPLOADS", "Uploads", "setup"]
