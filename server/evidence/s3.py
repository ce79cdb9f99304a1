"""The S3 back end of the evidence store (AWS S3, MinIO, any S3-compatible server).

The bucket must have versioning and Object Lock enabled (Object Lock can only be
turned on when a bucket is created). Items are sealed containers like in the files
back end, written with a multipart upload when larger than one part (nothing is
visible until the upload completes; a failed hash check aborts it), and never
overwritten (``If-None-Match: *`` plus a check first). ``retain_until`` becomes the
object's Object Lock retention date (mode ``s3_lock_mode``, COMPLIANCE by default:
no one, not even the bucket's owner, can delete it earlier).
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterator, Optional

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from .crypto import MasterKey
from .store import Disposed, EvidenceStore, ItemExists, ItemMissing, StillLocked

if TYPE_CHECKING:
    from ..config import Settings

MiB = 1024 * 1024


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class S3Store(EvidenceStore):
    def __init__(self, master: MasterKey, client: Any, bucket: str, *, part_size: int = 16 * MiB,
                 lock_mode: str = "COMPLIANCE") -> None:
        super().__init__(master)
        if part_size < 5 * MiB:
            raise ValueError("S3 multipart parts must be at least 5 MiB")
        if lock_mode not in ("COMPLIANCE", "GOVERNANCE"):
            raise ValueError("s3_lock_mode must be COMPLIANCE or GOVERNANCE")
        self.client = client
        self.bucket = bucket
        self.part_size = part_size
        self.lock_mode = lock_mode

    @classmethod
    def from_settings(cls, settings: "Settings", master: MasterKey) -> "S3Store":
        if not settings.s3_bucket:
            raise ValueError("store = 's3' needs s3_bucket")
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=settings.s3_endpoint or None,
            region_name=settings.s3_region or None,
            aws_access_key_id=settings.s3_access_key or None,
            aws_secret_access_key=settings.s3_secret_key or None,
            config=Config(
                retries={"max_attempts": 5, "mode": "standard"},
                s3={"addressing_style": "path"} if settings.s3_endpoint else {},
            ),
        )
        return cls(master, client, settings.s3_bucket, part_size=int(settings.s3_part_mb * MiB),
                   lock_mode=settings.s3_lock_mode)

    def _lock(self, retain_until: Optional[datetime]) -> dict[str, Any]:
        if retain_until is None:
            return {}
        return {"ObjectLockMode": self.lock_mode, "ObjectLockRetainUntilDate": retain_until}

    def _put(self, key: str, sealed: Iterator[bytes], check: Callable[[], None],
             retain_until: Optional[datetime]) -> None:
        if self._exists(key):
            raise ItemExists(key)
        lock = self._lock(retain_until)
        buffer = bytearray()
        upload_id: Optional[str] = None
        parts: list[dict[str, Any]] = []

        def send_part() -> None:
            number = len(parts) + 1
            answer = self.client.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                             PartNumber=number, Body=bytes(buffer))
            parts.append({"PartNumber": number, "ETag": answer["ETag"]})
            buffer.clear()

        try:
            for chunk in sealed:
                buffer += chunk
                if len(buffer) >= self.part_size:
                    if upload_id is None:
                        upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=key, **lock)["UploadId"]
                    send_part()
            check()
            if upload_id is None:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=bytes(buffer), IfNoneMatch="*", **lock)
                return
            if buffer:
                send_part()
            done = self.client.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                                         MultipartUpload={"Parts": parts}, IfNoneMatch="*")
            upload_id = None
            if retain_until is not None:
                # Set again on the version made: not every S3 server keeps a multipart
                # upload's lock headers (AWS does; this is a no-op there).
                version = {"VersionId": done["VersionId"]} if done.get("VersionId") else {}
                self.client.put_object_retention(
                    Bucket=self.bucket, Key=key, **version,
                    Retention={"Mode": self.lock_mode, "RetainUntilDate": retain_until},
                )
        except ClientError as exc:
            if _code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                raise ItemExists(key) from None
            raise
        finally:
            if upload_id is not None:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)

    def _open(self, key: str) -> BinaryIO:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404"):
                raise ItemMissing(key) from None
            raise

    def _exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
            return True
        except ClientError as exc:
            if _code(exc) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def _keys(self, prefix: str) -> list[str]:
        found: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            found.extend(item["Key"] for item in page.get("Contents", []))
        return found

    def _dispose(self, key: str) -> None:
        """Every version and delete marker of the key (Object Lock refuses while retained)."""
        extra = {"BypassGovernanceRetention": True} if self.lock_mode == "GOVERNANCE" else {}
        for page in self.client.get_paginator("list_object_versions").paginate(Bucket=self.bucket, Prefix=key):
            for version in page.get("Versions", []) + page.get("DeleteMarkers", []):
                if version["Key"] == key:
                    self.client.delete_object(Bucket=self.bucket, Key=key, VersionId=version["VersionId"], **extra)

    async def dispose_all_versions(self, prefix: str) -> Disposed:
        return await asyncio.to_thread(self._dispose_prefix, prefix)

    def _dispose_prefix(self, prefix: str) -> Disposed:
        """Delete every version and delete marker under ``prefix``. Versions an Object
        Lock still keeps stay; ``StillLocked`` then says until when (the latest date)."""
        extra = {"BypassGovernanceRetention": True} if self.lock_mode == "GOVERNANCE" else {}
        removed = 0
        locked_until: Optional[datetime] = None
        pages = self.client.get_paginator("list_object_versions").paginate(Bucket=self.bucket, Prefix=prefix)
        for page in pages:
            for version in page.get("Versions", []) + page.get("DeleteMarkers", []):
                key, version_id = version["Key"], version["VersionId"]
                try:
                    self.client.delete_object(Bucket=self.bucket, Key=key, VersionId=version_id, **extra)
                    removed += 1
                except ClientError as exc:
                    if _code(exc) != "AccessDenied":
                        raise
                    until = self._retained_until(key, version_id)
                    if until is None:
                        raise
                    locked_until = max(until, locked_until or until)
        if locked_until is not None:
            raise StillLocked(locked_until, removed)
        return Disposed(prefix, removed)

    def _retained_until(self, key: str, version_id: str) -> Optional[datetime]:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key, VersionId=version_id)
        except ClientError:
            return None
        return head.get("ObjectLockRetainUntilDate")

    async def retain(self, key: str, until: datetime) -> None:
        await asyncio.to_thread(
            self.client.put_object_retention, Bucket=self.bucket, Key=key,
            Retention={"Mode": self.lock_mode, "RetainUntilDate": until},
        )

    async def close(self) -> None:
        self.client.close()
