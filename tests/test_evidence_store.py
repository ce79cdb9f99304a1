"""The evidence store, on both back ends (files, and S3 on a real moto server):
add-only, hashed, encrypted at rest, tamper-evident, no path tricks."""

from __future__ import annotations

import base64
import hashlib
import io
import os
from datetime import datetime, timedelta, timezone

import pytest
from botocore.exceptions import ClientError
from s3server import make_s3_store

from evr.config import Settings
from evr.evidence import FileStore, IntegrityError, ItemExists, ItemMissing, MasterKey, load_master_key, make_store
from evr.evidence.crypto import CHUNK, SealedReader, Sealer, rechunk
from evr.evidence.s3 import S3Store
from evr.evidence.store import StillLocked

MASTER = MasterKey(bytes(range(32)))


@pytest.fixture(params=["files", "s3"])
def store(request, tmp_path):
    if request.param == "files":
        return FileStore(tmp_path / "evidence", MASTER)
    return make_s3_store(request.getfixturevalue("s3_server"), MASTER)


def raw(store, key: str) -> bytes:
    """The bytes at rest, as a thief of the disk or the bucket would get them."""
    if isinstance(store, FileStore):
        return store.path(key).read_bytes()
    return store.client.get_object(Bucket=store.bucket, Key=key)["Body"].read()


async def test_add_read_list_and_never_overwrite(store, tmp_path):
    source = tmp_path / "clip.webm"
    source.write_bytes(os.urandom(3 * CHUNK + 5))
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    item = await store.add_file("recordings/c1/r1/seg-000001.webm", source, sha256=digest)
    assert (item.size, item.sha256) == (source.stat().st_size, digest)
    assert await store.read_bytes(item.key) == source.read_bytes()
    await store.add_bytes("recordings/c1/r1/manifest.json", b"{}")
    assert await store.keys("recordings/c1/r1/") == ["recordings/c1/r1/manifest.json", "recordings/c1/r1/seg-000001.webm"]
    with pytest.raises(ItemExists):
        await store.add_bytes("recordings/c1/r1/manifest.json", b"changed")
    assert await store.read_bytes("recordings/c1/r1/manifest.json") == b"{}"
    assert await store.exists(item.key) and not await store.exists("recordings/c1/r1/other")


async def test_a_taken_key_is_accepted_again_only_for_the_same_bytes(store):
    """What a retry after a crash relies on (a staged upload, a recording segment): the
    item it stored before is accepted, another item under the same key is not."""
    data = os.urandom(CHUNK + 7)
    await store.add_bytes("uploads/c/u/original", data)
    await store.check_existing("uploads/c/u/original", hashlib.sha256(data).hexdigest())
    with pytest.raises(ItemExists):
        await store.check_existing("uploads/c/u/original", hashlib.sha256(data + b"x").hexdigest())
    with pytest.raises(ItemMissing):
        await store.check_existing("uploads/c/u/none", hashlib.sha256(data).hexdigest())


def test_a_file_store_in_the_default_layout_uses_the_services_master_key(tmp_path):
    """A FileStore under DATA/evidence with no key given uses the service's master key."""
    settings = Settings.load(data_dir=tmp_path, environ={})
    assert FileStore(tmp_path / "evidence").master == load_master_key(settings)


async def test_files_are_read_only_on_disk(tmp_path):
    store = FileStore(tmp_path / "evidence", MASTER)
    item = await store.add_bytes("uploads/c/u/original", b"x")
    assert not os.access(store.path(item.key), os.W_OK) or os.geteuid() == 0
    assert oct(store.path(item.key).stat().st_mode & 0o777) == "0o400"


async def test_what_is_at_rest_is_encrypted(store):
    plaintext = b"DOORBELL-CAMERA-FOOTAGE " * 100_000
    await store.add_bytes("uploads/c/u/original", plaintext)
    at_rest = raw(store, "uploads/c/u/original")
    assert b"DOORBELL" not in at_rest
    assert len(plaintext) < len(at_rest) < len(plaintext) + 4096  # one tag and length per MiB
    assert await store.read_bytes("uploads/c/u/original") == plaintext


async def test_a_hash_mismatch_stores_nothing(store):
    data = os.urandom(12 * CHUNK)  # over one S3 part: a multipart upload that must be aborted
    with pytest.raises(ValueError):
        await store.add_bytes("uploads/c/u/original", data, sha256="0" * 64)
    assert not await store.exists("uploads/c/u/original")
    if isinstance(store, FileStore):
        assert list(store.path("uploads/c/u").iterdir()) == []  # no temporary file left
    else:
        assert store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", []) == []


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/etc/passwd", "a//b", ".hidden", "a/b\\c", "", "a/\x00"])
async def test_bad_keys_are_refused(tmp_path, key):
    with pytest.raises(ValueError):
        await FileStore(tmp_path, MASTER).add_bytes(key, b"x")


async def test_reading_a_missing_item(store):
    with pytest.raises(ItemMissing):
        await store.read_bytes("uploads/none")


async def test_altered_truncated_or_moved_items_do_not_open(tmp_path):
    store = FileStore(tmp_path / "evidence", MASTER)
    data = os.urandom(2 * CHUNK + 100)
    await store.add_bytes("uploads/c/a/original", data)
    await store.add_bytes("uploads/c/b/original", b"other")
    sealed = store.path("uploads/c/a/original").read_bytes()

    def tamper(content: bytes) -> FileStore:
        other = FileStore(tmp_path / f"copy-{hashlib.sha1(content).hexdigest()}", MASTER)
        other.path("uploads/c/a/original").parent.mkdir(parents=True)
        other.path("uploads/c/a/original").write_bytes(content)
        return other

    flipped = bytearray(sealed)
    flipped[len(sealed) // 2] ^= 1
    for altered in (bytes(flipped), sealed[: CHUNK + 200], sealed + b"more", sealed[:-1]):
        with pytest.raises(IntegrityError):
            await tamper(altered).read_bytes("uploads/c/a/original")
    # Swapped with another item's container: its data key is bound to its own key.
    swapped = tamper(store.path("uploads/c/b/original").read_bytes())
    with pytest.raises(IntegrityError):
        await swapped.read_bytes("uploads/c/a/original")
    # Another master key opens nothing.
    with pytest.raises(IntegrityError):
        await FileStore(tmp_path / "evidence", MasterKey(os.urandom(32))).read_bytes("uploads/c/a/original")


async def test_a_sealed_upload_is_stored_as_is_after_verification(store, tmp_path):
    data = os.urandom(3 * CHUNK + 7)
    key = "uploads/c/u/original"
    sealer = Sealer(MASTER, key)
    path = tmp_path / "staged"
    with open(path, "wb") as f:
        f.write(sealer.header)
        for chunk, final in rechunk([data], 700_000):  # record sizes need not be CHUNK
            f.write(sealer.seal(chunk, final))
    with pytest.raises(ValueError):
        await store.add_sealed(key, path, sha256="0" * 64)
    assert not await store.exists(key)
    item = await store.add_sealed(key, path, sha256=hashlib.sha256(data).hexdigest())
    assert item.size == len(data)
    assert await store.read_bytes(key) == data
    with SealedReader(MASTER, key, path) as reader:  # random access for previews
        reader.seek(CHUNK - 3)
        assert reader.read(10) == data[CHUNK - 3 : CHUNK + 7]
        reader.seek(-5, io.SEEK_END)
        assert reader.read() == data[-5:]


async def test_s3_object_lock_and_disposal_of_every_version(s3_server):
    store = make_s3_store(s3_server, MASTER)
    until = datetime.now(timezone.utc) + timedelta(days=1)
    await store.add_bytes("uploads/c/locked/original", os.urandom(11 * CHUNK), retain_until=until)
    head = store.client.head_object(Bucket=store.bucket, Key="uploads/c/locked/original")
    assert head["ObjectLockMode"] == "COMPLIANCE" and head["ObjectLockRetainUntilDate"] >= until - timedelta(seconds=1)
    with pytest.raises(ClientError):
        await store.dispose("uploads/c/locked/original")
    assert await store.exists("uploads/c/locked/original")

    await store.add_bytes("uploads/c/free/original", b"x")
    await store.dispose("uploads/c/free/original")
    versions = store.client.list_object_versions(Bucket=store.bucket, Prefix="uploads/c/free/")
    assert not versions.get("Versions") and not versions.get("DeleteMarkers")

    # Disposal of a whole item: every version goes, even one only a delete marker hides;
    # what a lock keeps stays, and the store says until when.
    await store.add_bytes("recordings/c/r/seg-000001.webm", b"a")
    await store.add_bytes("recordings/c/r/manifest.json", b"{}")
    store.client.delete_object(Bucket=store.bucket, Key="recordings/c/r/manifest.json")  # a delete marker
    assert await store.keys("recordings/c/r/") == ["recordings/c/r/seg-000001.webm"]
    disposed = await store.dispose_all_versions("recordings/c/r/")
    assert disposed.removed == 3  # two object versions and the delete marker
    versions = store.client.list_object_versions(Bucket=store.bucket, Prefix="recordings/c/r/")
    assert not versions.get("Versions") and not versions.get("DeleteMarkers")
    assert (await store.dispose_all_versions("recordings/c/r/")).removed == 0

    await store.add_bytes("uploads/c/locked/preview.jpg", b"p")
    with pytest.raises(StillLocked) as kept:
        await store.dispose_all_versions("uploads/c/locked/")
    assert kept.value.removed == 1 and abs(kept.value.until - until) < timedelta(seconds=1)
    assert await store.keys("uploads/c/locked/") == ["uploads/c/locked/original"]


def test_make_store_follows_settings(tmp_path, s3_settings):
    files = make_store(Settings.load(data_dir=tmp_path, environ={}))
    assert isinstance(files, FileStore) and files.root == tmp_path / "evidence"
    s3 = make_store(Settings.load(data_dir=tmp_path, environ={}, **s3_settings))
    assert isinstance(s3, S3Store) and s3.bucket == s3_settings["s3_bucket"]
    with pytest.raises(ValueError):
        make_store(Settings.load(data_dir=tmp_path, environ={}, store="tape"))


def test_the_master_key_is_made_once_private_or_configured(tmp_path):
    settings = Settings.load(data_dir=tmp_path, environ={})
    first = load_master_key(settings)
    path = tmp_path / "keys" / "master-aes256.key"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert load_master_key(settings) == first
    given = base64.b64encode(os.urandom(32)).decode()
    assert load_master_key(Settings.load(data_dir=tmp_path, environ={"EVR_MASTER_KEY": given})).key == base64.b64decode(given)
    assert load_master_key(Settings.load(data_dir=tmp_path, environ={}, master_key=str(path))) == first
    for bad in ("not base64!", base64.b64encode(b"short").decode()):
        with pytest.raises(ValueError):
            load_master_key(Settings.load(data_dir=tmp_path, environ={}, master_key=bad))
