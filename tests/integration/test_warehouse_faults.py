"""Warehouse faults through a fault-injecting proxy in front of the real fakesnow server: the
Snowflake connector, the real state machine under moto and the real handlers. Each fault ends
as defined (local_mode.warehouse_faults.CASES), and a re-run of the snapshot then loads once."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from snowflake.connector.errors import DatabaseError, ProgrammingError

from functions.load.config import SnowflakeConfig
from functions.load.connection import connect
from local_mode.warehouse_faults import (
    CASES,
    FaultBench,
    FaultCase,
    fail_statement,
    refuse_login,
    run_case,
)

pytestmark = pytest.mark.integration


def _param(case: FaultCase) -> object:
    return pytest.param(case, id=case.name.replace(" ", "-"))


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultBench]:
    with FaultBench(tmp_path_factory.mktemp("warehouse-faults")) as b:
        yield b


@pytest.mark.parametrize("case", [_param(c) for c in CASES if c.layer == "warehouse"])
def test_warehouse_fault_ends_as_defined_and_a_rerun_loads_once(bench: FaultBench, case):
    outcome = run_case(bench, case)
    assert outcome.passed, outcome.problems
    assert outcome.rows_loaded == outcome.rows_expected == bench.coins
    if case.status == "SUCCEEDED":
        # The connector re-sent what was lost (or the load re-checked on a new session).
        assert outcome.retries >= 1
    elif case.unchanged:
        assert outcome.warehouse_unchanged is True
        assert outcome.rerun_status == "SUCCEEDED"


def test_commit_reply_lost_is_verified_on_a_new_session(bench: FaultBench):
    """The COMMIT ran but every reply was lost: the load logs in again and finds its row."""
    case = next(c for c in CASES if c.name == "connection dropped at COMMIT (reply lost)")
    logins_before = sum(1 for r in bench.proxy.requests if r.endpoint == "login")
    outcome = run_case(bench, case)
    assert outcome.passed, outcome.problems
    logins = [r for r in bench.proxy.requests if r.endpoint == "login"][logins_before:]
    assert len(logins) >= 2  # the load's session and the check's
    commits = bench.proxy.statements("^COMMIT$")
    assert any(r.action == "drop_after" for r in commits)


def test_connector_raises_the_injected_errors(bench: FaultBench):
    """What the Load sees: the connector's own exceptions for the proxy's answers."""
    assert bench.proxy is not None
    cfg = SnowflakeConfig.from_env(bench.env)
    conn = connect(cfg)
    try:
        bench.proxy.add(fail_statement("^SELECT 42$", code="000630", message="injected"))
        with conn.cursor() as cur, pytest.raises(ProgrammingError) as err:
            cur.execute("SELECT 42")
        assert err.value.errno == 630
        assert "injected" in str(err.value)
    finally:
        bench.proxy.clear()
        conn.close()
    bench.proxy.add(refuse_login())
    try:
        with pytest.raises(Exception) as refused:
            connect(cfg)
    finally:
        bench.proxy.clear()
    cause = refused.value.__cause__
    assert isinstance(cause, DatabaseError) and cause.errno == 390100
    assert "Incorrect username or password" in str(refused.value)


def test_bench_reads_the_warehouse_directly(bench: FaultBench):
    """The state the cases compare is read past the proxy: a fault never hides it."""
    assert bench.proxy is not None
    bench._close_connection()  # the next read logs in again
    bench.proxy.add(refuse_login())
    try:
        state = bench.state()
    finally:
        bench.proxy.clear()
    assert len({row[0] for row in state.crypto_data}) >= 1
