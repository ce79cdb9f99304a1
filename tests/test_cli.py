"""The evr command line, run as a user would (subprocesses on a fresh data directory)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import sqlite3
import subprocess
import sys
import urllib.request
from typing import Optional

import pytest
from conftest import PASSWORD, eventually
from sqlalchemy import select

EVR = [sys.executable, "-m", "evr"]


def run(*args: str, stdin: str = "", env: Optional[dict[str, str]] = None) -> subprocess.CompletedProcess:
    return subprocess.run([*EVR, *args], input=stdin, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env} if env else None)


@pytest.mark.parametrize("command", [[], ["serve"], ["user", "add"], ["user", "list"], ["user", "disable"],
                                     ["user", "passwd"], ["apikey", "add"], ["apikey", "revoke"],
                                     ["apikey", "list"]])
def test_every_command_has_help(command):
    result = run(*command, "--help")
    assert result.returncode == 0 and "usage: evr" in result.stdout
    if command:
        assert "--data" in result.stdout or command == ["user"]


def test_user_add_reads_the_password_from_stdin(tmp_path):
    data = str(tmp_path / "data")
    ok = run("user", "add", "alice", "--role", "sergeant", "--data", data, stdin="a long password\n")
    assert ok.returncode == 0, ok.stderr
    assert "a long password" not in ok.stdout + ok.stderr
    again = run("user", "add", "alice", "--role", "officer", "--data", data, stdin="a long password\n")
    assert again.returncode == 2 and "already exists" in again.stderr
    weak = run("user", "add", "bob", "--role", "officer", "--data", data, stdin="short\n")
    assert weak.returncode == 2 and "at least 10" in weak.stderr
    role = run("user", "add", "bob", "--role", "chief", "--data", data, stdin="a long password\n")
    assert role.returncode == 2


def test_serve_comes_up_on_a_fresh_data_dir_and_logs_in(tmp_path):
    data = tmp_path / "fresh"
    assert run("user", "add", "alice", "--role", "officer", "--data", str(data), stdin="a long password\n").returncode == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([*EVR, "serve", "--data", str(data), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        def answers() -> bool:
            try:
                urllib.request.urlopen(base + "/healthz", timeout=1)
                return True
            except OSError:
                return False

        asyncio.run(eventually(answers, timeout=10, interval=0.1, what="evr serve's /healthz"))
        page = urllib.request.urlopen(base + "/console")
        assert page.status == 200 and "Content-Security-Policy" in page.headers
        request = urllib.request.Request(
            base + "/api/login", data=b'{"username": "alice", "password": "a long password"}', method="POST",
            headers={"Content-Type": "application/json"},
        )
        assert urllib.request.urlopen(request).status == 200
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=10)
    assert f"serving on http://127.0.0.1:{port}" in output
    assert "a long password" not in output
    assert (data / "evr.sqlite3").exists()


def test_the_access_log_never_shows_a_link_token():
    import logging

    from evr.logs import RedactLinks

    record = logging.LogRecord("aiohttp.access", logging.INFO, "", 0, '%s "%s" %s',
                               ("127.0.0.1", "GET /j/AbC_d-123/ws HTTP/1.1", 101), None)
    RedactLinks().filter(record)
    assert "AbC_d-123" not in record.getMessage() and "/j/…/ws" in record.getMessage()


# -- evr user list | disable | passwd ---------------------------------------------------


def test_user_list_disable_and_passwd(tmp_path):
    data = str(tmp_path / "data")
    for name, role in (("alice", "officer"), ("bob", "admin"), ("carl", "call_handler")):
        assert run("user", "add", name, "--role", role, "--data", data, stdin="a long password\n").returncode == 0
    listed = run("user", "list", "--data", data)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["NAME", "ROLE", "DISABLED", "CREATED", "LAST", "LOGIN"]
    assert [line.split()[:3] for line in lines[1:]] == [["alice", "officer", "no"], ["bob", "admin", "no"],
                                                        ["carl", "call_handler", "no"]]
    assert "argon2" not in listed.stdout and all(line.endswith("-") for line in lines[1:])  # never logged in

    disabled = run("user", "disable", "alice", "--data", data)
    assert disabled.returncode == 0 and "alice disabled" in disabled.stdout
    users = json.loads(run("user", "list", "--format", "json", "--data", data).stdout)["users"]
    assert [(u["name"], u["disabled"]) for u in users] == [("alice", True), ("bob", False), ("carl", False)]
    assert all(u["created"].endswith("Z") and u["last_login"] is None and "password" not in str(u) for u in users)

    assert run("user", "passwd", "bob", "--data", data, stdin="another long password\n").returncode == 0
    short = run("user", "passwd", "bob", "--data", data, stdin="short\n")
    assert short.returncode == 2 and "at least 10" in short.stderr
    for command in (["disable", "nobody"], ["passwd", "nobody"]):
        missing = run("user", *command, "--data", data, stdin="another long password\n")
        assert missing.returncode == 1 and "no user 'nobody'" in missing.stderr

    # Every change is in the audit log, as the operating-system user (role cli).
    with sqlite3.connect(tmp_path / "data" / "evr.sqlite3") as db:
        entries = db.execute("SELECT action, object, role FROM audit_log ORDER BY id").fetchall()
    assert entries == [("user.add", "user:alice", "cli"), ("user.add", "user:bob", "cli"),
                       ("user.add", "user:carl", "cli"), ("user.disable", "user:alice", "cli"),
                       ("user.passwd", "user:bob", "cli")]
    assert run("audit", "verify", "--data", data).returncode == 0


@pytest.mark.parametrize("name", ["victim", "System", "VICTIM"])
def test_reserved_user_names_are_refused(tmp_path, name):
    refused = run("user", "add", name, "--role", "officer", "--data", str(tmp_path), stdin="a long password\n")
    assert refused.returncode == 2 and "reserved" in refused.stderr


async def cli(settings, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    """The real command, in a process of its own, on the test server's data and database."""
    return await asyncio.to_thread(run, *args, "--data", str(settings.data_dir), stdin=stdin,
                                   env={"EVR_DATABASE_URL": settings.database_url})


async def test_disable_and_passwd_end_the_users_sessions_at_once(staff, new_client, settings):
    alice = await staff("alice", "officer")
    alice_again = await staff("alice2", "officer")  # someone else's session is left alone
    assert (await cli(settings, "user", "disable", "alice")).returncode == 0
    assert (await alice.get("/api/me")).status == 401
    assert (await alice_again.get("/api/me")).status == 200
    client = await new_client()
    login = {"username": "alice", "password": PASSWORD}
    assert (await client.post("/api/login", json=login)).status == 401

    bob = await staff("bob", "sergeant")
    changed = await cli(settings, "user", "passwd", "bob", stdin="a brand new password\n")
    assert changed.returncode == 0 and "1 session(s) ended" in changed.stdout
    assert (await bob.get("/api/me")).status == 401
    assert (await client.post("/api/login", json={"username": "bob", "password": PASSWORD})).status == 401
    assert (await client.post("/api/login", json={"username": "bob", "password": "a brand new password"})).status == 200
    listed = json.loads((await cli(settings, "user", "list", "--format", "json")).stdout)["users"]
    last = {u["name"]: u["last_login"] for u in listed}
    assert last["bob"] and last["bob"].endswith("Z") and last["alice"]  # both logged in through the API


async def test_a_change_whose_audit_entry_fails_is_not_made(staff, server, settings, audit_fails, monkeypatch):
    from evr.cli import main
    from evr.db import User
    from evr.http import DB

    alice = await staff("alice", "officer")
    monkeypatch.setenv("EVR_DATABASE_URL", settings.database_url)
    monkeypatch.setattr(sys, "stdin", io.StringIO("a brand new password\n"))
    audit_fails()
    data = ["--data", str(settings.data_dir)]
    for command in (["user", "disable", "alice"], ["user", "passwd", "alice"]):
        with pytest.raises(Exception, match="audit write failed"):
            await asyncio.to_thread(main, [*command, *data])
    assert (await alice.get("/api/me")).status == 200  # the session was not ended either
    async with server.app[DB]() as db:
        user = await db.scalar(select(User).where(User.username == "alice"))
    assert not user.disabled
    from evr.auth import verify_password
    assert verify_password(user.password_hash, PASSWORD)
