"""A real S3-compatible HTTP server for the tests: moto's server mode on a free port.

Its fixtures (``s3_server``, ``s3_settings``) are registered by ``conftest.py`` through
``pytest_plugins``: a test asks for them by name; helpers (``make_s3_store``,
``s3_client``) are imported.
"""

from __future__ import annotations

import socket
import uuid
from typing import Any, Iterator

import boto3
import pytest

from evr.evidence import MasterKey
from evr.evidence.s3 import S3Store

REGION = "eu-west-2"
CREDENTIALS = {"aws_access_key_id": "evr-test", "aws_secret_access_key": "evr-test-secret"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """The endpoint URL of a moto S3 server running for the whole test session."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def s3_client(endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=endpoint, region_name=REGION, **CREDENTIALS)


def new_bucket(endpoint: str) -> str:
    """A fresh bucket with Object Lock (and so versioning) enabled."""
    name = f"evidence-{uuid.uuid4().hex[:16]}"
    s3_client(endpoint).create_bucket(
        Bucket=name, ObjectLockEnabledForBucket=True,
        CreateBucketConfiguration={"LocationConstraint": REGION},
    )
    return name


@pytest.fixture
def s3_settings(s3_server: str) -> dict[str, Any]:
    """Settings overrides selecting the S3 store on a fresh bucket."""
    return {"store": "s3", "s3_endpoint": s3_server, "s3_bucket": new_bucket(s3_server), "s3_region": REGION,
            "s3_access_key": CREDENTIALS["aws_access_key_id"], "s3_secret_key": CREDENTIALS["aws_secret_access_key"]}


def make_s3_store(endpoint: str, master: MasterKey, part_size: int = 5 * 1024 * 1024) -> S3Store:
    return S3Store(master, s3_client(endpoint), new_bucket(endpoint), part_size=part_size)
