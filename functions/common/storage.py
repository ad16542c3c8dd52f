"""The data lake behind one small interface: S3 on AWS, a folder in local mode."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from functions.common.errors import ConfigError, StorageError, ValidationError


class Storage(Protocol):
    """What the handlers need from the lake."""

    bucket: str

    def put_bytes(self, key: str, data: bytes, content_type: str = ...) -> None: ...

    def get_bytes(self, key: str) -> bytes: ...

    def download(self, key: str, dest: Path) -> None: ...

    def exists(self, key: str) -> bool: ...

    def list_keys(self, prefix: str) -> list[str]: ...


def put_json(storage: Storage, key: str, obj: Any) -> None:
    storage.put_bytes(key, json.dumps(obj, indent=2).encode(), "application/json")


def get_json(storage: Storage, key: str) -> Any:
    body = storage.get_bytes(key)
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        raise ValidationError(key, f"is not valid JSON ({exc.msg} at char {exc.pos})") from exc


class LocalStorage:
    """A folder standing in for a bucket: ``<root>/<key>``; writes are atomic (tmp + rename)."""

    def __init__(self, root: str | Path, bucket: str = "crypto-etl-local") -> None:
        self.root = Path(root).resolve()
        self.bucket = bucket

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise ValidationError("key", f"{key!r} escapes the lake folder")
        return path

    def put_bytes(self, key: str, data: bytes, content_type: str = "") -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        if not path.is_file():
            raise ValidationError("key", f"{key!r} does not exist in the lake ({self.root})")
        return path.read_bytes()

    def download(self, key: str, dest: Path) -> None:
        path = self._path(key)
        if not path.is_file():
            raise ValidationError("key", f"{key!r} does not exist in the lake ({self.root})")
        shutil.copyfile(path, dest)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list_keys(self, prefix: str) -> list[str]:
        base = self.root
        if not base.exists():
            return []
        keys = [p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file()]
        return sorted(k for k in keys if k.startswith(prefix) and "/.tmp-" not in k)


class S3Storage:
    """An S3 bucket (boto3 is imported lazily so pure modules never pull it in).

    Every S3 failure is re-raised as :class:`StorageError` naming the operation, the
    ``s3://bucket/key`` and S3's error code; a missing object is a :class:`ValidationError`
    naming the key (the event pointed at something that is not there).
    """

    def __init__(self, bucket: str, client: Any = None) -> None:
        if client is None:
            import boto3

            client = boto3.client("s3")
        self.bucket = bucket
        self._s3 = client

    @contextmanager
    def _errors(self, operation: str, key: str) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        url = f"s3://{self.bucket}/{key}"
        try:
            yield
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", "error"))
            if code in ("NoSuchKey", "404", "NotFound"):
                raise ValidationError("key", f"{url} does not exist") from exc
            raise StorageError(f"{operation} {url} failed: {code}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"{operation} {url} failed: {exc}") from exc

    def put_bytes(self, key: str, data: bytes, content_type: str = "") -> None:
        extra = {"ContentType": content_type} if content_type else {}
        with self._errors("PutObject", key):
            self._s3.put_object(Bucket=self.bucket, Key=key, Body=data, **extra)

    def get_bytes(self, key: str) -> bytes:
        with self._errors("GetObject", key):
            return self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def download(self, key: str, dest: Path) -> None:
        with self._errors("GetObject", key):
            self._s3.download_file(self.bucket, key, str(dest))

    def exists(self, key: str) -> bool:
        # ListObjectsV2 on the key as prefix: needs only s3:ListBucket (scoped by prefix in
        # IAM), and answers "absent" where HeadObject would answer 403 without ListBucket.
        with self._errors("ListObjectsV2", key):
            resp = self._s3.list_objects_v2(Bucket=self.bucket, Prefix=key, MaxKeys=1)
        return any(o["Key"] == key for o in resp.get("Contents", []))

    def list_keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        with self._errors("ListObjectsV2", prefix):
            paginator = self._s3.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                keys.extend(o["Key"] for o in page.get("Contents", []))
        return sorted(keys)


def storage_from_env(env: dict[str, str] | None = None) -> Storage:
    """``LAKE_LOCAL_DIR`` set → a folder (local mode); otherwise S3 bucket ``LAKE_BUCKET``."""
    env = dict(os.environ) if env is None else env
    bucket = env.get("LAKE_BUCKET", "").strip()
    local_dir = env.get("LAKE_LOCAL_DIR", "").strip()
    if local_dir:
        return LocalStorage(local_dir, bucket or "crypto-etl-local")
    if not bucket:
        raise ConfigError("LAKE_BUCKET", "is not set (or set LAKE_LOCAL_DIR for local mode)")
    return S3Storage(bucket)
