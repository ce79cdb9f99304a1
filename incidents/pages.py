"""The EVR queue's console pages, so the workflow runs in a browser and not only over
the API: the officers' live queue board (``/queue``), the sergeant's desk (``/desk``:
triage, allocation, reviews due) and the call handler's page (``/incidents/new``:
the eligibility script, then the incident).

Each is a staff page with the one sign-in form (:func:`evr.pages.staff_page`); what it
shows comes from the routes of :mod:`.api` and the live board's socket
(:mod:`.board`), so the pages hold no rules of their own beyond what they say.
"""

from __future__ import annotations

from aiohttp import web

from evr import pages


def setup(app: web.Application) -> None:
    app.add_routes([
        web.get("/queue", queue_page),
        web.get("/desk", desk_page),
        web.get("/incidents/new", new_incident_page),
    ])


async def queue_page(_request: web.Request) -> web.Response:
    """The live queue board: take next, what is allocated to me, my incidents."""
    return pages.staff_page("queue.html")


async def desk_page(_request: web.Request) -> web.Response:
    """The sergeant's desk: triage, allocation, the queue, reviews due."""
    return pages.staff_page("desk.html")


async def new_incident_page(_request: web.Request) -> web.Response:
    """The call handler's page: the eligibility script read out, then the incident."""
    return pages.staff_page("incident-new.html")
