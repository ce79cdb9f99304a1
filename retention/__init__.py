"""Retention (MoPI classes, reviews, legal holds, disposal with certificates) and the
audit log's tools: ``evr audit verify``, ``evr retention ...``, ``/api/audit``,
``/api/retention/...`` and the records console at ``/records``."""
