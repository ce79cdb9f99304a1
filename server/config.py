"""Settings: defaults, then a TOML config file, then ``EVR_*`` environment variables.

Every setting has an embedded default good for one force on one machine. A config
file (``--config FILE`` or ``DATA/evr.toml``) and environment variables named
``EVR_<SETTING>`` (upper case) override it, in that order.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

DEFAULT_DATA_DIR = Path("./evr-data")


@dataclass
class Settings:
    data_dir: Path = DEFAULT_DATA_DIR
    host: str = "127.0.0.1"
    port: int = 8080
    #: SQLAlchemy URL; SQLite under ``data_dir`` when empty.
    database_url: str = ""
    #: Base URL victims reach the service on, e.g. ``https://evr.force.police.uk``.
    #: When empty, join links are built from the request's own host and scheme.
    public_url: str = ""
    #: A never-opened link dies after this many hours.
    link_ttl_hours: float = 48.0
    #: The browser binding cookie lives this long (days).
    binding_cookie_days: float = 30.0
    session_ttl_hours: float = 12.0
    #: Failed logins for one user name before it is locked for ``login_lockout_minutes``.
    login_max_failures: int = 5
    login_lockout_minutes: float = 15.0
    #: Failed logins from one client address, across user names, within
    #: ``login_lockout_minutes`` before that address gets 429.
    login_address_max_failures: int = 20
    #: Unknown link tokens one client address may present in a minute before its
    #: link requests get 429.
    link_unknown_per_minute: int = 30
    #: Delay added per failed login (seconds, doubled each failure, capped at 4 s).
    login_failure_delay: float = 0.25
    #: ``outbox`` (staff read it through the API) or ``notify`` (HTTP gateway).
    notifier: str = "outbox"
    notify_url: str = ""
    notify_api_key: str = ""
    notify_sms_template: str = ""
    notify_email_template: str = ""
    #: Several nodes (see README "Run several nodes"): the Redis they share, when set.
    redis_url: str = ""
    #: This node's address as the other nodes reach it (e.g. ``http://10.0.0.11:8080``).
    node_url: str = ""
    #: A secret every node of the cluster shares (16 characters or more): it signs the
    #: signalling sockets one node carries to another.
    cluster_secret: str = ""
    #: Names the cluster's keys in Redis (several EVR clusters can share one Redis).
    cluster_name: str = "evr"
    #: Media worker processes ``evr serve`` runs, each call pinned to one (0: one per
    #: core; ``evr serve --workers 0`` keeps the media in the serving process).
    workers: int = 0
    #: STUN/TURN servers handed to the server's peer connections, comma separated.
    ice_servers: str = ""
    turn_username: str = ""
    turn_password: str = ""
    #: Signalling limits: bytes per text frame, and messages per second per socket.
    ws_max_message: int = 64 * 1024
    ws_max_rate: float = 20.0
    ws_burst: int = 60
    #: Force ``Secure`` cookies even when the request did not arrive over HTTPS
    #: (behind a TLS-terminating proxy).
    secure_cookies: bool = False
    #: Reverse proxies (addresses or networks, comma separated) whose
    #: ``X-Forwarded-For`` names the real client: login and link throttles and the
    #: audit log then see the victim's or officer's address, not the proxy's.
    #: Empty: the header is ignored (anyone could write it).
    trusted_proxies: str = ""
    #: PEM file of the service's Ed25519 signing key (manifests, audit checkpoints);
    #: generated under ``DATA/keys/`` at first start when empty.
    signing_key: str = ""
    #: Sign an audit checkpoint every this many entries (also at each sweep and exit).
    audit_checkpoint_every: int = 1000
    #: The ``[retention]`` table: retention classes, default class, sweep interval
    #: (see ``evr.retention.policy``).
    retention: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: Record every consultation (one recording per participant).
    recording: bool = True
    #: Longest recording segment, seconds (each is fsynced and hashed as it closes).
    recording_segment_seconds: float = 10.0
    #: Media packets a recording may have waiting for the disk before it drops
    #: (and records a gap): memory stays bounded when the disk stalls.
    recording_queue_packets: int = 1500
    #: Redaction jobs (blurred and muted copies of recordings) ``evr serve`` runs itself,
    #: one after another up to this many at once; 0 leaves them to ``evr worker``.
    #: Each runs in a process of its own (no keys), at low priority, with this much
    #: address space (MiB), and a job whose worker stops reporting for
    #: ``redaction_stale_seconds`` is queued again (at most ``redaction_attempts`` starts).
    redaction_workers: int = 1
    redaction_memory_mb: int = 2048
    redaction_stale_seconds: float = 60.0
    redaction_attempts: int = 3
    #: The force's time zone: its days (performance indicators grouped by day) and
    #: the dates printed on statements.
    timezone: str = "Europe/London"
    #: Days after the call closed that a victim who has not answered the survey is sent
    #: its link once, by the call link's channel (needs ``public_url``); 0: never.
    survey_delay_days: float = 10.0
    #: Trial mode (``evr.evaluation.trial``): a ``[trial]`` table: ``enabled``,
    #: ``assign`` ("last_digit" or "block"), ``seed``, ``block_size``.
    trial: dict[str, Any] = dataclasses.field(default_factory=dict)
    # -- the EVR queue --
    #: Target hours from report to arrival, per incident grade (as text: TOML keys).
    grade_targets_hours: dict[str, Any] = dataclasses.field(default_factory=lambda: {"2": 1, "3": 48})
    #: The command-and-control system's webhook (``evr.incidents.webhooks``): where
    #: incident events are POSTed (http or https; empty: none sent) and the secret of
    #: their HMAC-SHA256 signature (required with a URL; at least 16 characters).
    webhook_url: str = ""
    webhook_secret: str = ""
    # -- evidence store and uploads --
    #: Master key of encryption at rest (AES-256-GCM): base64 of 32 random bytes, or
    #: the path of a file holding that; generated under ``DATA/keys/`` when empty.
    master_key: str = ""
    #: Evidence store back end: ``files`` (under ``DATA/evidence``) or ``s3``.
    store: str = "files"
    #: S3 (AWS S3 or MinIO; the bucket needs versioning and Object Lock): endpoint URL
    #: (empty for AWS), bucket, region, keys (empty: boto3's usual credential chain).
    s3_endpoint: str = ""
    s3_bucket: str = ""
    s3_region: str = ""
    s3_access_key: str = ""
    s3_secret_key: str = ""
    #: Object Lock mode of retention dates: COMPLIANCE (no one can shorten it) or GOVERNANCE.
    s3_lock_mode: str = "COMPLIANCE"
    #: Multipart upload part size, MiB (at least 5).
    s3_part_mb: float = 16.0
    #: Largest upload accepted (bytes); refused with 413 before any byte is sent.
    upload_max_bytes: int = 20 * 1024**3
    #: An unfinished upload with no bytes for this many days is purged (and logged).
    upload_partial_days: float = 7.0
    #: Content types accepted as evidence, comma separated (``image/*`` allowed);
    #: empty for the built-in list. Anything else is kept in quarantine.
    upload_allowed_types: str = ""
    #: Quotas, refused (413) at creation before any byte: uploads the victim may start
    #: through their link and the bytes they may declare (unfinished uploads count by
    #: their declared length), and the same for a whole consultation (victim and staff).
    upload_link_max_files: int = 50
    upload_link_max_bytes: int = 5 * 1024**3
    upload_consultation_max_files: int = 200
    upload_consultation_max_bytes: int = 50 * 1024**3
    #: Previews and embedded metadata are read by a separate worker process per upload
    #: (hostile files): at most this many at once, each with this much address space
    #: (MiB) and this long (seconds) before it is stopped.
    upload_preview_workers: int = 2
    upload_preview_memory_mb: int = 1024
    upload_preview_timeout: float = 30.0
    #: Largest image or video frame decoded for a preview (width x height, after a
    #: JPEG's reduced decoding); a larger one is kept without a preview (bombs).
    upload_preview_max_pixels: int = 36_000_000
    # -- statements (MG11) --
    #: The force's name, printed on statements and in a generated certificate.
    force_name: str = ""
    #: The force's statement signing certificate (PEM: the certificate, then any
    #: intermediates) and its private key (PEM; ``statement_key_password`` when
    #: encrypted). When both are empty a self-signed CA and signing certificate are
    #: generated under ``DATA/keys/`` at first start.
    statement_cert: str = ""
    statement_key: str = ""
    statement_key_password: str = ""
    #: PEM file(s), comma separated, of the root(s) a statement's signature must chain
    #: to; the generated CA (``DATA/keys/statement-ca.pem``) when empty.
    statement_trust_roots: str = ""
    #: Time zone of the dates printed on statements (empty: the force's ``timezone``).
    statement_timezone: str = ""

    def __post_init__(self) -> None:
        from evr.retention.policy import Policy

        Policy.from_config(self.retention)  # a bad [retention] table fails here, named
        from evr.evaluation.trial import TrialDesign

        if isinstance(self.trial, str):  # EVR_TRIAL='{"enabled": true, "assign": "last_digit"}'
            import json

            try:
                self.trial = json.loads(self.trial)
            except ValueError:
                raise ValueError("trial must be a JSON object (enabled, assign, seed, block_size)") from None
        TrialDesign.from_config(self.trial)  # likewise [trial]
        if isinstance(self.grade_targets_hours, str):  # EVR_GRADE_TARGETS_HOURS='{"2": 1, "3": 48}'
            import json

            try:
                self.grade_targets_hours = json.loads(self.grade_targets_hours)
            except ValueError:
                raise ValueError("grade_targets_hours must be a JSON object of grade: hours") from None
        if not isinstance(self.grade_targets_hours, dict) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                for v in self.grade_targets_hours.values()):
            raise ValueError("grade_targets_hours must map grades to positive hours")
        self.grade_targets_hours = {str(k): float(v) for k, v in self.grade_targets_hours.items()}
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        for name in ("timezone", "statement_timezone"):
            try:
                if getattr(self, name):
                    ZoneInfo(getattr(self, name))
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"{name}: {getattr(self, name)!r} is not a time zone (e.g. Europe/London)") from None
        if self.webhook_url:
            from urllib.parse import urlsplit

            url = urlsplit(self.webhook_url)
            if url.scheme not in ("http", "https") or not url.hostname or url.username or url.password:
                raise ValueError("webhook_url must be an http or https URL without a user name or password")
            if len(self.webhook_secret) < 16:
                raise ValueError("webhook_secret of at least 16 characters is required with webhook_url")
        if self.workers < 0:
            raise ValueError("workers must be 0 (one per core) or more")
        if self.redis_url:
            from urllib.parse import urlsplit

            if urlsplit(self.redis_url).scheme not in ("redis", "rediss", "unix"):
                raise ValueError("redis_url must be a redis://, rediss:// or unix:// URL")
            node = urlsplit(self.node_url)
            if node.scheme not in ("http", "https") or not node.hostname:
                raise ValueError("node_url (this node's address as the other nodes reach it, e.g. "
                                 "http://10.0.0.11:8080) is required with redis_url")
            if len(self.cluster_secret) < 16:
                raise ValueError("cluster_secret of at least 16 characters, the same on every node, is required "
                                 "with redis_url")
        for network in filter(None, (n.strip() for n in self.trusted_proxies.split(","))):
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"trusted_proxies: {network!r} is not an address or network") from None

    def prepare_data_dir(self) -> Path:
        """Make the data directory the service's alone, before anything is written.

        The process's umask becomes 077, so every file and folder EVR writes (the
        SQLite database, keys, the evidence store, the live recording spool, staging)
        is readable by its own user only; the data directory itself is created 0700,
        or tightened to 0700 when it was made wider by hand or by an older version
        (which makes everything under it unreachable to other users, whatever the
        modes of the files already there)."""
        os.umask(0o077)
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        mode = self.data_dir.stat().st_mode & 0o777
        if mode & 0o077:
            os.chmod(self.data_dir, 0o700)
            logging.getLogger(__name__).warning(
                "data directory %s was readable by other users (mode %o); now 0700", self.data_dir, mode)
        return self.data_dir

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'evr.sqlite3').resolve()}"

    @classmethod
    def load(
        cls,
        data_dir: Path | str | None = None,
        config_file: Path | str | None = None,
        environ: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> "Settings":
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        data = Path(data_dir or environ.get("EVR_DATA_DIR") or DEFAULT_DATA_DIR)
        path = Path(config_file) if config_file else data / "evr.toml"
        if config_file or path.exists():
            with open(path, "rb") as f:
                values.update(tomllib.load(f))
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for name in fields:
            env = environ.get(f"EVR_{name.upper()}")
            if env is not None:
                values[name] = env
        values.update({k: v for k, v in overrides.items() if v is not None})
        values["data_dir"] = data
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ValueError(f"unknown setting(s) in {path}: {', '.join(unknown)}")
        return cls(**{k: _coerce(fields[k].type, v) for k, v in values.items()})


def _coerce(kind: Any, value: Any) -> Any:
    kind = str(kind)
    if not isinstance(value, str):
        return Path(value) if kind == "Path" else value
    if kind == "bool":
        return value.strip().lower() in ("1", "true", "yes", "on")
    if kind == "int":
        return int(value)
    if kind == "float":
        return float(value)
    if kind == "Path":
        return Path(value)
    return value
