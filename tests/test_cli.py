"""The evr command line, run as a user would (subprocesses on a fresh data directory)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request

import pytest

EVR = [sys.executable, "-m", "evr"]


def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([*EVR, *args], input=stdin, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("command", [[], ["serve"], ["user", "add"]])
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
        for _ in range(100):
            try:
                urllib.request.urlopen(base + "/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        page = urllib.request.urlopen(base + "/console")
        assert page.status == 200 and "Content-Security-Policy" in page.headers
        request = urllib.request.Request(
            base + "/api/login", data=b'{"username": "alice", "password": "a long password"}', method="POST"
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

    from evr.cli import _RedactLinks

    record = logging.LogRecord("aiohttp.access", logging.INFO, "", 0, '%s "%s" %s',
                               ("127.0.0.1", "GET /j/AbC_d-123/ws HTTP/1.1", 101), None)
    _RedactLinks().filter(record)
    assert "AbC_d-123" not in record.getMessage() and "/j/…/ws" in record.getMessage()
