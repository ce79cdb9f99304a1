"""MG11 witness statements: drafted in the call, e-signed on the victim's phone,
sealed as a PAdES-signed PDF (see README, "Statements")."""
