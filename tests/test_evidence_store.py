"""The files back end of the evidence store: add-only, hashed, no path tricks."""

from __future__ import annotations

import hashlib
import os

import pytest

from evr.evidence import FileStore, ItemExists, ItemMissing


async def test_add_read_list_and_never_overwrite(tmp_path):
    store = FileStore(tmp_path / "evidence")
    source = tmp_path / "clip.webm"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 5))
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    item = await store.add_file("recordings/c1/r1/seg-000001.webm", source, sha256=digest)
    assert (item.size, item.sha256) == (source.stat().st_size, digest)
    assert await store.read_bytes(item.key) == source.read_bytes()
    await store.add_bytes("recordings/c1/r1/manifest.json", b"{}")
    assert await store.keys("recordings/c1/r1/") == ["recordings/c1/r1/manifest.json", "recordings/c1/r1/seg-000001.webm"]
    with pytest.raises(ItemExists):
        await store.add_bytes("recordings/c1/r1/manifest.json", b"changed")
    assert await store.read_bytes("recordings/c1/r1/manifest.json") == b"{}"
    assert not os.access(store.path(item.key), os.W_OK) or os.geteuid() == 0
    assert oct(store.path(item.key).stat().st_mode & 0o777) == "0o440"


async def test_a_hash_mismatch_stores_nothing(tmp_path):
    store = FileStore(tmp_path / "evidence")
    with pytest.raises(ValueError):
        await store.add_bytes("uploads/c/u/original", b"abc", sha256="0" * 64)
    assert not await store.exists("uploads/c/u/original")
    assert list((tmp_path / "evidence" / "uploads/c/u").iterdir()) == []  # no temporary file left


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/etc/passwd", "a//b", ".hidden", "a/b\\c", "", "a/\x00"])
async def test_bad_keys_are_refused(tmp_path, key):
    with pytest.raises(ValueError):
        await FileStore(tmp_path).add_bytes(key, b"x")


async def test_reading_a_missing_item(tmp_path):
    with pytest.raises(ItemMissing):
        await FileStore(tmp_path).read_bytes("uploads/none")
