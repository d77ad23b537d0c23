"""The image store on S3-compatible object storage (``RADTRACK_STORE=s3``, docs/deploy.md).

The same keys as the filesystem store, under the bucket and prefix of the django-storages
backend ``STORAGES["images"]`` (`storages.backends.s3.S3Storage`, boto3): originals at
``objects/ab/cd/<sha256>.dcm`` (content-addressed), a run's volumes, masks and transforms
at the path its row names (``volumes/<series UID>/run-<pk>/...``). Every object carries
its SHA-256 in its metadata (``x-amz-meta-sha256``), set from the bytes uploaded and
checked after the upload; what is read back is hashed and checked against it (and, for
an original, against its name) before it is used.

Writes are staged on the local disk first (``objects/.incoming`` under
``RADTRACK_DATA_DIR``, fsynced, as the filesystem store does), then uploaded: S3 answers
a PUT only once the object is durable, so the index row that names an original is
committed after its object is stored, as on a filesystem. Reads need a file on the local
disk (pydicom, SimpleITK and nibabel read paths): originals are fetched into
``cache/`` under the data folder and kept there; a run's files are fetched to their own
path under the data folder, where the worker that made them wrote them.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from boto3.exceptions import Boto3Error
from botocore.exceptions import BotoCoreError, ClientError
from django.core.files.storage import storages

#: The django-storages backend (settings ``STORAGES``) that names the bucket.
STORAGE_ALIAS = "images"
CACHE = "cache"
_CHUNK = 1 << 20


class StoreError(OSError):
    """An object that cannot be stored or read back as it should be, or that S3 could
    not be asked about (an outage, a refusal): every caller of the store handles
    `OSError`, which boto3's and botocore's own errors are not."""


#: What boto3 and botocore raise (`S3UploadFailedError`, `ClientError`,
#: `EndpointConnectionError`, ...): turned into `StoreError` by `_s3_errors`.
_S3_ERRORS = (Boto3Error, BotoCoreError, ClientError)


@contextmanager
def _s3_errors(action: str, key: str) -> Iterator[None]:
    """Turn an error of boto3 or botocore into a `StoreError` that names the action, the
    object's key and the reason (the error's type and S3's error code; never the
    message, which can quote request details)."""
    try:
        yield
    except _S3_ERRORS as exc:
        raise StoreError(f"S3 {action} failed ({_reason(exc)}) for {key}") from exc


def _reason(exc: Exception) -> str:
    # S3UploadFailedError wraps the ClientError that says what S3 answered.
    answer = exc if isinstance(exc, ClientError) else exc.__context__
    if isinstance(answer, ClientError):
        code = answer.response.get("Error", {}).get("Code") or "?"
        return f"{type(exc).__name__} {code}"
    return type(exc).__name__


class S3Store:
    """Originals and a run's files in an S3 bucket (module docstring)."""

    def __init__(self, data_dir: Path) -> None:
        self.storage = storages[STORAGE_ALIAS]
        self.client = self.storage.connection.meta.client
        self.bucket = self.storage.bucket_name
        self.prefix = (self.storage.location or "").strip("/")
        self.data_dir = data_dir

    # -- keys ------------------------------------------------------------------------
    def key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def relative(self, key: str) -> str:
        return key[len(self.prefix) + 1 :] if self.prefix else key

    # -- writing ---------------------------------------------------------------------
    def upload(self, local: Path, relative: str, sha256: str) -> None:
        """Upload ``local`` under ``relative`` with its SHA-256; checked after the PUT."""
        size = local.stat().st_size
        key = self.key(relative)
        with _s3_errors("upload", key):
            self.client.upload_file(
                str(local), self.bucket, key, ExtraArgs={"Metadata": {"sha256": sha256}}
            )
        head = self.head(relative)
        if head is None or head["ContentLength"] != size or _sha_of(head) != sha256:
            raise StoreError(f"{relative}: the stored object does not match what was uploaded")

    def delete(self, relative: str) -> None:
        key = self.key(relative)
        with _s3_errors("delete", key):
            self.client.delete_object(Bucket=self.bucket, Key=key)

    # -- reading ---------------------------------------------------------------------
    def head(self, relative: str) -> dict[str, Any] | None:
        key = self.key(relative)
        with _s3_errors("head", key):
            try:
                return self.client.head_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if _missing(exc):
                    return None
                raise

    def size(self, relative: str) -> int | None:
        head = self.head(relative)
        return None if head is None else head["ContentLength"]

    def chunks(self, relative: str) -> Iterator[bytes]:
        """The object's bytes, streamed; `FileNotFoundError` when there is none."""
        key = self.key(relative)
        with _s3_errors("read", key):
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            except ClientError as exc:
                if _missing(exc):
                    raise FileNotFoundError(f"{relative}: no such object in the store") from exc
                raise
            try:
                yield from body.iter_chunks(_CHUNK)
            finally:
                body.close()

    def sha256(self, relative: str) -> str | None:
        """The SHA-256 of the object's content as read back now (None when missing)."""
        digest = hashlib.sha256()
        try:
            for chunk in self.chunks(relative):
                digest.update(chunk)
        except FileNotFoundError:
            return None
        return digest.hexdigest()

    def read(self, relative: str) -> bytes:
        return b"".join(self.chunks(relative))

    def fetch(self, relative: str, target: Path, expected_sha256: str | None) -> Path:
        """The object as a local file at ``target``, fetched when not there yet; its
        content checked against ``expected_sha256`` (else its stored SHA-256)."""
        if target.is_file():
            return target
        if expected_sha256 is None:
            head = self.head(relative)
            if head is None:
                raise FileNotFoundError(f"{relative}: no such object in the store")
            expected_sha256 = _sha_of(head)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".fetch-", suffix=".part")
        digest = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in self.chunks(relative):
                    digest.update(chunk)
                    out.write(chunk)
            if expected_sha256 and digest.hexdigest() != expected_sha256:
                raise StoreError(
                    f"{relative}: the object read back does not match its SHA-256 "
                    f"({digest.hexdigest()} read, {expected_sha256} expected)"
                )
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return target

    def scan(self, folder: str) -> Iterator[tuple[str, float]]:
        """(relative path, modification time) of every object under ``folder``, in key
        order (the order of the relative paths as text)."""
        prefix = self.key(folder.rstrip("/") + "/")
        with _s3_errors("list", prefix):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                for entry in page.get("Contents", ()):
                    yield self.relative(entry["Key"]), entry["LastModified"].timestamp()


def _missing(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


def _sha_of(head: dict[str, Any]) -> str:
    return (head.get("Metadata") or {}).get("sha256", "")
