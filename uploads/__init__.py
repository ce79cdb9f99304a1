"""Evidence uploads: tus 1.0 resumable uploads from the victim and staff, hashed and
sealed as they stream in, typed from their content, ingested into the evidence store.

``setup(app)`` registers the routes (:mod:`.api`); the service (:mod:`.service`) is
built with the others by :func:`evr.services.services`.
The names below load on first use: the preview worker (``python -m
evr.uploads.worker``) imports this package and must start without the web stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import setup
    from .service import Uploads

__all__ = ["Uploads", "setup"]


def __getattr__(name: str) -> Any:
    if name == "setup":
        from . import api

        return getattr(api, name)
    if name == "Uploads":
        from .service import Uploads

        return Uploads
    raise AttributeError(name)
