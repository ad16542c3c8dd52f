"""The fault matrix: every lake, warehouse and CoinGecko API fault against its defined outcome.

Runs each case of :data:`local_mode.warehouse_faults.MATRIX` on one
:class:`~local_mode.warehouse_faults.FaultBench` (the real state machine under moto, the real
handlers, a synthetic replay server with fault injection, a folder lake, and the fakesnow
server behind a fault-injecting proxy; 150 coins, 50 a page; the CoinGecko client at
``BENCH_SOURCE_ENV``: 2 retries, 1 s timeout). Each case ends one of two defined ways: succeeded
with correct data (retries counted), or failed at the right state with the named error, an
alert carrying it, the warehouse as before, and a re-run that loads exactly once.

Prints one line per fault (fault, outcome vs its definition, status, failed state, error,
retries, rows loaded, rows expected, warehouse unchanged, seconds), then the problems of the
cases that did not end as defined, the rows lost and duplicated across the matrix, and last
exactly ``N passed, M failed``. Exit status 0 only when M is 0.

    .venv/bin/python benchmarks/faults.py               # the whole matrix (about 2 minutes)
    .venv/bin/python benchmarks/faults.py --fast        # only the cases make test runs
    .venv/bin/python benchmarks/faults.py -k global     # the cases whose name holds "global"
    .venv/bin/python benchmarks/faults.py --markdown    # the README table of defined outcomes
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from local_mode.warehouse_faults import (
    BENCH_SOURCE_ENV,
    MATRIX,
    FaultBench,
    FaultCase,
    FaultOutcome,
    run_case,
)

COLUMNS = (
    ("fault", 46),
    ("outcome", 7),
    ("status", 9),
    ("state", 9),
    ("error", 22),
    ("retries", 7),
    ("rows", 4),
    ("expected", 8),
    ("unchanged", 9),
    ("s", 5),
)


def _row(values: Sequence[object]) -> str:
    cells = []
    for (_, width), value in zip(COLUMNS, values, strict=True):
        text = str(value)
        cells.append(text[:width].ljust(width) if width >= 9 else text.rjust(width))
    return "  ".join(cells).rstrip()


def outcome_line(outcome: FaultOutcome) -> str:
    """One line of the matrix for ``outcome`` (the columns of :data:`COLUMNS`)."""
    unchanged = {True: "yes", False: "no", None: "-"}[outcome.warehouse_unchanged]
    return _row(
        (
            outcome.case.name,
            "passed" if outcome.passed else "FAILED",
            outcome.status,
            outcome.state or "-",
            outcome.error or "-",
            outcome.retries,
            outcome.rows_loaded,
            outcome.rows_expected,
            unchanged,
            f"{outcome.seconds:.1f}",
        )
    )


def markdown_table(cases: Sequence[FaultCase]) -> str:
    """The defined outcome of every case as a Markdown table (README "Reliability")."""
    lines = [
        "| Fault | Layer | Injected | Defined outcome | In `make test` |",
        "|---|---|---|---|---|",
    ]
    for case in cases:
        injected = f"`{case.spec}`: {case.description}" if case.spec else case.description
        cells = (case.name, case.layer, injected, case.defined_outcome(), _fast(case))
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def _fast(case: FaultCase) -> str:
    return "yes" if case.fast else "bench only"


def summary(outcomes: Sequence[FaultOutcome]) -> list[str]:
    """The closing lines: rows lost and duplicated across the matrix, then ``N passed, M
    failed``. Lost: rows the definition expects minus rows loaded (when fewer); duplicated:
    rows minus distinct coin ids."""
    lost = sum(max(0, o.rows_expected - o.rows_loaded) for o in outcomes)
    duplicated = sum(o.rows_loaded - o.distinct_coins for o in outcomes)
    passed = sum(o.passed for o in outcomes)
    return [
        f"{lost} rows lost, {duplicated} rows duplicated across {len(outcomes)} cases",
        f"{passed} passed, {len(outcomes) - passed} failed",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the matrix (or print its table); 0 when every case ended as defined, else 1."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--markdown", action="store_true", help="print the README table only")
    parser.add_argument("--fast", action="store_true", help="only the cases make test runs")
    parser.add_argument("-k", dest="match", default="", help="only cases whose name holds this")
    args = parser.parse_args(argv)
    cases = [
        c for c in MATRIX if (c.fast or not args.fast) and args.match.lower() in c.name.lower()
    ]
    if args.markdown:
        print(markdown_table(cases))
        return 0
    settings = ", ".join(f"{k}={v}" for k, v in BENCH_SOURCE_ENV.items())
    print(f"fault matrix: {len(cases)} cases; 150 coins, 50 a page; {settings}")
    print(_row([name for name, _ in COLUMNS]))
    outcomes: list[FaultOutcome] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="crypto-etl-faults-") as root:
        # Handler logs would interleave with the table: the outcome is read from the results.
        quiet = {"POWERTOOLS_LOG_LEVEL": "CRITICAL"}
        with FaultBench(Path(root), coins=150, per_page=50, extra_env=quiet) as bench:
            for case in cases:
                outcome = run_case(bench, case)
                outcomes.append(outcome)
                print(outcome_line(outcome), flush=True)
    failed = [o for o in outcomes if not o.passed]
    if failed:
        print("\nproblems:")
        for outcome in failed:
            for problem in outcome.problems:
                print(f"  {outcome.case.name}: {problem}")
    print(f"\nwall time {time.perf_counter() - started:.0f} s")
    for line in summary(outcomes):
        print(line)
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
