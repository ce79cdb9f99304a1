"""Staff roles and what each may reach: the one list, in a module light enough for the
command line (``evr user add --role`` offers the roles without loading the database
or argon2; :mod:`evr.auth` re-exports everything here).

Least privilege: ``admin`` manages users and reads the audit log, nothing else (no
consultation, victim detail or evidence); ``records`` staff reach evidence only
through the retention tools, with a logged reason; ``call_handler`` is accepted so a
force can create the accounts, but has no powers yet (they come with the incidents
workflow).
"""

from __future__ import annotations

ROLES = ("officer", "sergeant", "records", "admin", "call_handler")
#: Roles that take part in calls, create consultations and handle their evidence.
CALL_ROLES = ("officer", "sergeant")
#: Roles that see every consultation, not only their own.
SUPERVISOR_ROLES = ("sergeant",)
#: Names the audit log uses for actors who are not staff accounts.
RESERVED_NAMES = ("victim", "system")
