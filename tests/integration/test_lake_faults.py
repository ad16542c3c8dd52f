"""Lake faults between states, with the real state machine (its Catch and alert) under moto,
a folder lake, the replay server and the fakesnow server: a raw page missing or corrupted
before the Transform, the processed file missing before the Load. Each fails at the right state
naming the object, alerts, leaves the warehouse as it was, and a re-run then loads once."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from local_mode.warehouse_faults import CASES, FaultBench, run_case

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultBench]:
    with FaultBench(tmp_path_factory.mktemp("lake-faults")) as b:
        yield b


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, id=c.name.replace(" ", "-")) for c in CASES if c.layer == "lake"],
)
def test_lake_fault_fails_at_its_state_and_a_rerun_loads_once(bench: FaultBench, case):
    outcome = run_case(bench, case)
    assert outcome.passed, outcome.problems
    assert outcome.status == "FAILED"
    assert outcome.state == case.state
    assert outcome.error == "ValidationError"
    assert outcome.warehouse_unchanged is True
    assert [a["failed_state"] for a in outcome.alerts] == [case.state]
    assert outcome.rerun_status == "SUCCEEDED"
    assert outcome.rows_loaded == bench.coins


def test_corrupted_page_is_named_with_both_digests(bench: FaultBench):
    case = next(c for c in CASES if c.name == "raw page corrupted")
    outcome = run_case(bench, case, snapshot_id="lake-digest")
    assert outcome.passed, outcome.problems
    assert "page-0002.json" in (outcome.message or "")
    assert "re-run the snapshot" in (outcome.message or "")
