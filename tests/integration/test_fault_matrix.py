"""The fault matrix's fast CoinGecko API cases (local_mode.warehouse_faults.API_CASES marked
``fast``) on real components: the replay server injects the fault into real HTTP, the real
state machine runs under moto with the real handlers, the lake is a folder and the warehouse
the fakesnow server. Each case ends as defined: succeeded with the served data (retries
counted, the right dominance basis), or failed at its state with the named error, an alert,
the warehouse as before, one FAILED run-log row, and a re-run that loads once.

The lake and warehouse cases of the matrix run in test_lake_faults.py and
test_warehouse_faults.py; every case, the slower ones included, runs in benchmarks/faults.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from local_mode.faults import CATALOGUE, parse
from local_mode.warehouse_faults import (
    API_CASES,
    BENCH_MAX_RETRIES,
    MATRIX,
    FaultBench,
    FaultCase,
    run_case,
)

pytestmark = pytest.mark.integration

FAST_API = [c for c in API_CASES if c.fast]


def _param(case: FaultCase) -> object:
    return pytest.param(case, id=case.name.replace(" ", "-").replace(",", ""))


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultBench]:
    with FaultBench(tmp_path_factory.mktemp("fault-matrix")) as b:
        yield b


@pytest.mark.parametrize("case", [_param(c) for c in FAST_API])
def test_api_fault_ends_as_defined(bench: FaultBench, case: FaultCase):
    outcome = run_case(bench, case)
    assert outcome.passed, "\n".join(outcome.problems)
    assert outcome.rows_loaded == outcome.distinct_coins == case.rows_expected(bench.coins)
    if case.status == "FAILED":
        assert outcome.warehouse_unchanged is True
        assert [a["failed_state"] for a in outcome.alerts] == [case.state]
        assert outcome.rerun_status == "SUCCEEDED"
    elif case.retried:
        assert outcome.retries >= 1


def test_the_data_check_sees_a_column_the_fault_emptied(bench: FaultBench):
    """Not vacuous: the missing-field case judged as if every value had to arrive fails,
    naming MAX_SUPPLY."""
    case = next(c for c in API_CASES if c.spec == "markets:missing=max_supply")
    outcome = run_case(bench, dataclasses.replace(case, nulls=()), snapshot_id="matrix-null")
    assert not outcome.passed
    assert any("MAX_SUPPLY" in p and "differ" in p for p in outcome.problems), outcome.problems


def _covered() -> set[tuple[str, str]]:
    return {(f.kind, f.endpoint) for c in API_CASES if c.spec for f in parse(c.spec)}


def test_every_catalogue_fault_is_in_the_matrix_on_each_endpoint_it_applies_to():
    expected = {
        (name, endpoint)
        for name, info in CATALOGUE.items()
        for endpoint, outcome in (("markets", info.outcome), ("global", info.global_outcome))
        if outcome is not None
    }
    assert expected - _covered() == set()


def test_the_matrix_has_bursts_on_both_sides_of_the_budget_and_each_retry_after():
    specs = {c.spec for c in API_CASES}
    for endpoint in ("markets:page=2", "global"):
        for code in ("429", "500", "502", "503", "504"):
            assert any(
                s and s.startswith(f"{endpoint}:{code}x{BENCH_MAX_RETRIES + 1}") for s in specs
            ), (endpoint, code)
        for code in ("500", "502", "503", "504"):
            assert f"{endpoint}:{code}x{BENCH_MAX_RETRIES}" in specs
        for retry_after in ("1", "date", "0"):
            assert f"{endpoint}:429:retry-after={retry_after}" in specs
        assert f"{endpoint}:429" in specs  # no Retry-After
    names = [c.name for c in MATRIX]
    assert len(names) == len(set(names))  # one line each in benchmarks/faults.py
