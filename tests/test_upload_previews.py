"""Previews of hostile files (finding 1 of issue 11): decompression bombs are kept as
evidence without a preview and say why; the server never decodes them, and the worker
that reads uploads is limited (memory, time) and replaced for the next one."""

from __future__ import annotations

import asyncio
import io
import struct
import sys
import zlib
from pathlib import Path
from typing import Any

import av
import pytest
from test_uploads import jpeg_with_exif, tus_send, upload_id, victim_headers

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import uploads as bench  # noqa: E402  (bench/uploads.py: the live server and its client)

MB = 1024 * 1024


def png_bomb(width: int, height: int) -> bytes:
    """A PNG of ``width`` x ``height`` white RGB pixels, made row by row (a few
    hundred KB for 8900x8900, 237 MB once decoded)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = b"\x00" + b"\xff" * (3 * width)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def avi_bomb() -> bytes:
    """A one-frame 8192x8192 MJPEG AVI (about 1 MB)."""
    out = io.BytesIO()
    with av.open(out, "w", format="avi") as container:
        stream = container.add_stream("mjpeg", rate=1)
        stream.width, stream.height, stream.pix_fmt = 8192, 8192, "yuvj420p"
        frame = av.VideoFrame(8192, 8192, "yuvj420p")
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    return out.getvalue()


async def send(server: bench.LiveServer, data: bytes, name: str) -> dict[str, Any]:
    """One tus upload of ``data`` by the live server's officer; the upload's JSON."""
    assert server.http is not None
    tus = {"Tus-Resumable": "1.0.0", "X-CSRF-Token": server.csrf}
    async with server.http.post(server.uploads_url, headers={**tus, "Upload-Length": str(len(data))}) as r:
        assert r.status == 201, await r.text()
        location = r.headers["Location"]
    headers = {**tus, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}
    async with server.http.patch(server.base + location, data=data, headers=headers) as r:
        assert r.status == 204, await r.text()
    async with server.http.get(server.base + location) as r:
        return await r.json()


async def preview_status(server: bench.LiveServer, item: dict[str, Any]) -> int:
    assert server.http is not None
    async with server.http.get(f"{server.uploads_url}/{item['id']}/preview") as r:
        return r.status


async def test_decompression_bombs_are_kept_without_a_preview_and_the_server_stays_small(tmp_path, avi_bomb):
    png = png_bomb(8900, 8900)
    assert len(png) < 1 * MB
    server = bench.LiveServer(tmp_path / "data")
    try:
        await server.start()
        photo = await send(server, jpeg_with_exif(), "warm-up.jpg")  # first-use imports and allocations
        assert photo["preview"] and await preview_status(server, photo) == 200
        sampler = bench.RssSampler(server.proc.pid)
        baseline = sampler.rss()
        with sampler:  # four at once, as in the review
            items = await asyncio.gather(send(server, png, "a.png"), send(server, png, "b.png"),
                                         send(server, avi_bomb, "a.avi"), send(server, avi_bomb, "b.avi"))
        growth = sampler.peak - baseline
        after = await send(server, jpeg_with_exif(), "after.jpg")
        assert after["preview"] and await preview_status(server, after) == 200
    finally:
        await server.stop()
    assert growth < 100 * MB, f"the server grew by {growth / MB:.0f} MB"
    for item, (width, kind) in zip(items, [(8900, "Image"), (8900, "Image"), (8192, "Video"), (8192, "Video")]):
        # Kept as evidence, intact, with its metadata, and saying why there is no preview.
        assert item["status"] == "complete" and item["preview"] is False
        assert item["preview_skipped"] == f"{kind} too large to preview ({width}x{width} pixels)."
        assert item["sha256"] and item["exhibit_ref"]
    assert items[0]["metadata"] == {"format": "PNG", "width": 8900, "height": 8900}
    assert items[2]["metadata"]["streams"][0] == {"type": "video", "codec": "mjpeg", "width": 8192, "height": 8192}


async def test_a_worker_out_of_memory_leaves_the_upload_kept_and_the_next_preview_works(link, server, settings):
    call = await link()
    base = str(call.phone.make_url(call.path + "/uploads"))
    # 35 MP: under the pixel cap, but 139 MB decoded: more than a 200 MiB worker has left.
    settings.upload_preview_memory_mb = 200
    big = png_bomb(5900, 5900)
    uid = upload_id(await tus_send(base, victim_headers(call), big, name="scan.png"))
    item = await (await call.officer.get(f"/api/consultations/{call.id}/uploads/{uid}")).json()
    assert item["status"] == "complete" and item["preview"] is False
    assert item["preview_skipped"] == "Making the preview needed more memory than allowed (200 MiB): no preview."
    assert item["metadata"] == {"format": "PNG", "width": 5900, "height": 5900}  # sent before decoding
    assert (await call.officer.get(f"/api/consultations/{call.id}/uploads/{uid}/preview")).status == 404
    content = await call.officer.get(f"/api/consultations/{call.id}/uploads/{uid}/content")
    assert await content.read() == big
    settings.upload_preview_memory_mb = 1024
    uid = upload_id(await tus_send(base, victim_headers(call), jpeg_with_exif(), name="photo.jpg"))
    item = await (await call.officer.get(f"/api/consultations/{call.id}/uploads/{uid}")).json()
    assert item["preview"] is True and item["preview_skipped"] is None
    assert (await call.officer.get(f"/api/consultations/{call.id}/uploads/{uid}/preview")).status == 200


async def test_the_worker_does_not_decode_a_bomb_to_read_its_metadata(link, server, settings):
    """Pillow decodes a whole PNG when asked for EXIF it has not met yet: a bomb must
    be refused on its header, not found too big once decoded (a 300 MiB worker could
    not decode 8900x8900 RGB)."""
    call = await link()
    settings.upload_preview_memory_mb = 300
    uid = upload_id(await tus_send(str(call.phone.make_url(call.path + "/uploads")), victim_headers(call),
                                   png_bomb(8900, 8900), name="bomb.png"))
    item = await (await call.officer.get(f"/api/consultations/{call.id}/uploads/{uid}")).json()
    assert item["preview_skipped"] == "Image too large to preview (8900x8900 pixels)."


async def test_a_preview_that_takes_too_long_is_stopped(link, server, settings):
    call = await link()
    settings.upload_preview_timeout = 0.01
    uid = upload_id(await tus_send(str(call.phone.make_url(call.path + "/uploads")), victim_headers(call),
                                   jpeg_with_exif(), name="photo.jpg"))
    item = await (await call.officer.get(f"/api/consultations/{call.id}/uploads/{uid}")).json()
    assert item["status"] == "complete" and item["preview"] is False
    assert item["preview_skipped"] == "Reading this file for a preview took longer than 0.01 s; stopped: no preview."


def test_the_worker_gets_no_secrets_in_its_environment(monkeypatch):
    from evr.uploads import worker

    monkeypatch.setenv("EVR_MASTER_KEY", "c2VjcmV0")
    monkeypatch.setenv("EVR_S3_SECRET_KEY", "secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("PATH", "/usr/bin")
    assert worker.worker_environment().get("PATH") == "/usr/bin"
    assert not {"EVR_MASTER_KEY", "EVR_S3_SECRET_KEY", "AWS_SECRET_ACCESS_KEY"} & set(worker.worker_environment())


async def test_a_worker_that_answers_wrongly_is_stopped_and_its_answer_unused(monkeypatch):
    """What a worker sends is untrusted (a crafted file may have taken it over)."""
    from evr.config import Settings
    from evr.uploads import worker

    script = ("import sys, struct; sys.stdin.buffer.read(5); "
              "sys.stdout.buffer.write(struct.pack('>cI', b'P', 5) + b'<html'); sys.stdout.buffer.flush()")
    real = asyncio.create_subprocess_exec

    async def impostor(*args: Any, **kwargs: Any) -> Any:
        return await real(sys.executable, "-c", script, **kwargs)

    monkeypatch.setattr(worker.asyncio, "create_subprocess_exec", impostor)
    found = await worker.Inspector(Settings()).inspect(io.BytesIO(b"x"), 1, "image/png", preview=True)
    assert found.preview is None
    assert found.skipped == "The preview process answered wrongly and was stopped: no preview."


@pytest.mark.parametrize("script, reason", [
    ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "The preview process stopped (signal 9): no preview."),
    (None, "The preview process could not start: no preview."),
])
async def test_a_worker_that_dies_or_cannot_start_leaves_a_reason(monkeypatch, script, reason):
    from evr.config import Settings
    from evr.uploads import worker

    real = asyncio.create_subprocess_exec

    async def instead(*args: Any, **kwargs: Any) -> Any:
        if script is None:
            raise OSError(11, "Resource temporarily unavailable")
        return await real(sys.executable, "-c", script, **kwargs)

    monkeypatch.setattr(worker.asyncio, "create_subprocess_exec", instead)
    found = await worker.Inspector(Settings()).inspect(io.BytesIO(b"x"), 1, "image/png", preview=True)
    assert (found.preview, found.skipped) == (None, reason)
