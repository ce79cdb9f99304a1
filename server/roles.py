"""Staff roles and what each may reach: the one list, in a module light enough for the
command line (``evr user add --role`` offers the roles without loading the database
or argon2; :mod:`evr.auth` re-exports everything here).

Least privilege: ``admin`` manages users and reads the audit log, nothing else (no
consultation, victim detail or evidence); ``records`` staff reach evidence only
through the retention tools, with a logged reason. The EVR queue (``evr.incidents``):
``call_handler`` (the force control room) enters incidents and sees those it entered;
``integration`` (a force's command-and-control system, by API key) enters incidents,
reads them all and sets crime outcomes; sergeants triage and review; officers take
from the queue and see only the incidents allocated or dispatched to them and the
queued ones. ``records`` and ``admin`` reach no incident.
"""

from __future__ import annotations

ROLES = ("officer", "sergeant", "records", "admin", "call_handler", "integration")
#: Roles that take part in calls, create consultations and handle their evidence.
CALL_ROLES = ("officer", "sergeant")
#: Roles that reach a consultation's evidence: those who handle the call, and records
#: staff (every consultation's, content only with a reason), who also redact and disclose it.
EVIDENCE_ROLES = (*CALL_ROLES, "records")
#: Roles that see every consultation, not only their own.
SUPERVISOR_ROLES = ("sergeant",)
#: Names the audit log uses for actors who are not staff accounts.
RESERVED_NAMES = ("victim", "system")
#: Guests staff invite into a call, each with a link of their own (``evr.guests``).
GUEST_ROLES = ("carer", "interpreter", "appropriate_adult", "support_worker")
#: Everyone who may be in a call, and so in a recording of one.
PARTICIPANT_ROLES = ("victim", *CALL_ROLES, *GUEST_ROLES)

# -- the EVR queue (evr.incidents) --
#: Roles that enter incidents.
INCIDENT_CREATE_ROLES = ("call_handler", "integration", "sergeant")
#: Roles that reach incidents at all (each sees a part: evr.incidents.service.visible).
INCIDENT_ROLES = ("officer", "sergeant", "call_handler", "integration")
#: Roles that see every incident.
INCIDENT_ALL_ROLES = ("sergeant", "integration")
#: Triage and review.
INCIDENT_SUPERVISOR_ROLES = ("sergeant",)
#: The queue: officers take from it, sergeants watch it.
QUEUE_ROLES = ("officer", "sergeant")
#: Who records a control incident's in-person attendance (trial mode).
ATTENDANCE_ROLES = ("sergeant", "integration")
#: Who records a Home Office crime outcome.
CRIME_OUTCOME_ROLES = ("officer", "sergeant", "integration")
#: Performance indicators (``evr.evaluation``): figures only, no person.
KPI_ROLES = ("sergeant", "admin")
#: Roles an API key (``evr apikey add``) may have.
API_KEY_ROLES = ("integration", "call_handler")
