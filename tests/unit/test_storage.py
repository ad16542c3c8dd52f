"""Both lake back-ends behave alike: S3 (moto) and a local folder."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from functions.common.errors import ConfigError, StorageError, ValidationError
from functions.common.storage import (
    LocalStorage,
    S3Storage,
    get_json,
    put_json,
    storage_from_env,
)

BUCKET = "crypto-etl-test-lake"


@pytest.fixture(params=["s3", "local"])
def storage(request, tmp_path: Path, monkeypatch):
    if request.param == "local":
        yield LocalStorage(tmp_path / "lake", BUCKET)
        return
    for k, v in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():  # fmt: skip
        monkeypatch.setenv(k, v)
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield S3Storage(BUCKET)


def test_round_trip_exists_list_and_download(storage, tmp_path: Path):
    storage.put_bytes("raw/a/page-0001.json", b"[1]", "application/json")
    put_json(storage, "raw/a/manifest.json", {"pages": 1})
    storage.put_bytes("processed/a/x.csv.gz", b"\x1f\x8b")
    assert storage.get_bytes("raw/a/page-0001.json") == b"[1]"
    assert get_json(storage, "raw/a/manifest.json") == {"pages": 1}
    assert storage.exists("raw/a/manifest.json")
    assert not storage.exists("raw/a/manifest")  # a prefix of a key is not the key
    assert storage.list_keys("raw/") == ["raw/a/manifest.json", "raw/a/page-0001.json"]
    dest = tmp_path / "x.csv.gz"
    storage.download("processed/a/x.csv.gz", dest)
    assert dest.read_bytes() == b"\x1f\x8b"


def test_a_missing_object_is_a_validation_error_naming_it(storage, tmp_path: Path):
    with pytest.raises(ValidationError, match=r"raw/nope\.json"):
        storage.get_bytes("raw/nope.json")
    with pytest.raises(ValidationError, match=r"processed/nope\.csv\.gz"):
        storage.download("processed/nope.csv.gz", tmp_path / "n")


def test_invalid_json_names_the_key(storage):
    storage.put_bytes("raw/bad.json", b"<html>")
    with pytest.raises(ValidationError, match=r"raw/bad\.json"):
        get_json(storage, "raw/bad.json")


def test_s3_failures_name_operation_object_and_code(monkeypatch):
    for k, v in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():  # fmt: skip
        monkeypatch.setenv(k, v)
    with mock_aws():
        store = S3Storage("bucket-that-does-not-exist")
        with pytest.raises(StorageError, match=r"PutObject s3://bucket-that-does-not-exist/raw/k"
                                               r" failed: NoSuchBucket"):  # fmt: skip
            store.put_bytes("raw/k", b"x")


def test_local_storage_refuses_keys_escaping_the_folder(tmp_path: Path):
    store = LocalStorage(tmp_path / "lake")
    with pytest.raises(ValidationError, match="escapes"):
        store.put_bytes("../outside.json", b"x")
    assert not (tmp_path / "outside.json").exists()


def test_storage_from_env(tmp_path: Path):
    assert isinstance(storage_from_env({"LAKE_LOCAL_DIR": str(tmp_path)}), LocalStorage)
    with pytest.raises(ConfigError, match="LAKE_BUCKET"):
        storage_from_env({})
