"""Every validator matches the whole string: ``$`` alone accepts a final newline, so a value
such as ``"PUBLIC\\n"`` slipped through and surfaced later with an unrelated message."""

from __future__ import annotations

from pathlib import Path

import pytest

from functions.common import keys
from functions.common.errors import ConfigError, ValidationError
from functions.extract.config import ExtractConfig
from functions.load import sql
from functions.load.config import validate_identifier
from local_mode.replay_server import PAGE_FILE_RE


@pytest.mark.parametrize("tail", ["\n", "\r\n", " "])
def test_snowflake_identifiers_refuse_a_trailing_newline(tail):
    assert validate_identifier("PUBLIC", "SNOWFLAKE_SCHEMA") == "PUBLIC"
    with pytest.raises(ConfigError, match="SNOWFLAKE_SCHEMA"):
        validate_identifier("PUBLIC" + tail, "SNOWFLAKE_SCHEMA")


def test_staged_file_path_refuses_a_newline(tmp_path: Path):
    good = tmp_path / "snap.csv.gz"
    assert "PUT 'file://" in sql.put_file(good, "STG").sql
    with pytest.raises(ValidationError, match="local_file"):
        sql.put_file(Path(str(good) + "\n"), "STG")


def test_an_api_key_with_an_inner_newline_is_refused():
    env = {"COINGECKO_API_PLAN": "demo"}
    assert ExtractConfig.from_env({**env, "COINGECKO_API_KEY": "CG-abc"}).api_key == "CG-abc"
    with pytest.raises(ConfigError):
        ExtractConfig.from_env({**env, "COINGECKO_API_KEY": "CG-abc\nX-Evil: 1"})
    with pytest.raises(ConfigError):
        ExtractConfig(plan="demo", api_key="CG-abc\n")


@pytest.mark.parametrize(
    ("check", "value"),
    [
        (keys.validate_snapshot_id, "snap-1\n"),
        (keys.validate_run_id, "run-1\n"),
        (lambda v: keys.validate_bucket(v), "crypto-etl-lake\n"),
    ],
)
def test_lake_validators_refuse_a_trailing_newline(check, value):
    check(value.rstrip("\n"))
    with pytest.raises(ValidationError):
        check(value)


def test_replay_page_files_are_matched_whole():
    assert PAGE_FILE_RE.fullmatch("markets-page-0001.json")
    assert not PAGE_FILE_RE.fullmatch("markets-page-0001.json\n")
