"""``crypto-etl run``: one execution of the pipeline on this machine, its progress and summary.

The state-machine definition runs under moto's Step Functions interpreter, with the three Lambda
handlers dispatched in-process, a folder as the lake (``<local dir>/lake``) and a fakesnow server
(``<local dir>/warehouse``) as Snowflake.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from functions.common.errors import ValidationError
from functions.common.keys import validate_snapshot_id

DEFAULT_LOCAL_DIR = Path(os.environ.get("CRYPTO_ETL_LOCAL_DIR", ".local"))
LOCAL_BUCKET = "crypto-etl-local"
DEFAULT_OFFLINE_COINS = 1000


@dataclass
class RunOptions:
    """Everything ``crypto-etl run`` needs; the CLI flags map one to one."""

    local_dir: Path = DEFAULT_LOCAL_DIR
    offline: bool = False
    coins: int = DEFAULT_OFFLINE_COINS
    replay_dir: Path | None = None
    snapshot_id: str | None = None
    max_coins: int | None = None
    vs_currency: str | None = None
    per_page: int | None = None
    verbose: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)


@dataclass
class RunReport:
    status: str
    snapshot_id: str
    execution_arn: str
    duration_s: float
    output: dict[str, Any] | None
    failed_state: str | None
    error: str | None
    error_message: str | None
    alerts: list[dict[str, Any]]
    lake_dir: Path
    warehouse_dir: Path
    state_outputs: dict[str, dict[str, Any]]


def _utc_stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def _error_message(cause: str | None) -> str | None:
    """Lambda's cause is a JSON object with errorMessage; fall back to the raw text."""
    if not cause:
        return None
    try:
        parsed = json.loads(cause)
    except json.JSONDecodeError:
        return cause
    if isinstance(parsed, dict) and "errorMessage" in parsed:
        return str(parsed["errorMessage"])
    return cause


def replay_pages(replay_dir: Path) -> list[Path]:
    """The recorded page files of a replay folder, refusing a folder that has none."""
    if not replay_dir.is_dir():
        raise ValidationError("--replay", f"{replay_dir} is not a directory")
    pages = sorted(replay_dir.glob("markets-page-*.json"))
    if not pages:
        raise ValidationError(
            "--replay", f"{replay_dir} has no markets-page-0001.json (… -0002.json, …) files"
        )
    return pages


def replay_per_page(replay_dir: Path) -> int | None:
    """Rows per page of a recording: page 1's length when there is a page 2, else None.

    A recording made with per_page=100 has 100-row pages; asking for 250 a page would make
    page 1 look short and end the paging there, silently dropping pages 2+.
    """
    pages = replay_pages(replay_dir)
    if len(pages) < 2:
        return None
    try:
        first = json.loads(pages[0].read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return len(first) if isinstance(first, list) and 0 < len(first) <= 250 else None


@contextmanager
def _coingecko_source(opts: RunOptions, out: TextIO) -> Iterator[dict[str, str]]:
    """Environment pointing the extract at a replay server (offline/replay) or the live API."""
    if opts.replay_dir is not None or opts.offline:
        from local_mode.replay_server import ReplayServer

        if opts.replay_dir is not None:
            server = ReplayServer.from_directory(opts.replay_dir)
        else:
            server = ReplayServer.synthetic(coins=opts.coins)
        with server:
            # Sealed from the user's shell: no real key goes to the replay server.
            yield {
                "COINGECKO_BASE_URL": server.base_url,
                "COINGECKO_API_PLAN": "public",
                "COINGECKO_API_KEY": "",
                "COINGECKO_API_KEY_SECRET_ARN": "",
            }
    else:
        env: dict[str, str] = {}
        if os.environ.get("COINGECKO_API_KEY_SECRET_ARN"):
            # Local mode runs under moto: a real secret ARN cannot be read here.
            print(
                "note: COINGECKO_API_KEY_SECRET_ARN is ignored locally; set COINGECKO_API_KEY",
                file=out,
            )
            env["COINGECKO_API_KEY_SECRET_ARN"] = ""
        yield env


def execution_input(opts: RunOptions, snapshot_id: str) -> dict[str, Any]:
    """The execution input the state machine receives (only what the user set, plus the id)."""
    data: dict[str, Any] = {"snapshot_id": snapshot_id}
    if opts.max_coins is not None:
        data["max_coins"] = opts.max_coins
    elif opts.offline and opts.replay_dir is None:
        data["max_coins"] = opts.coins
    if opts.vs_currency is not None:
        data["vs_currency"] = opts.vs_currency
    if opts.per_page is not None:
        data["per_page"] = opts.per_page
    elif opts.replay_dir is not None:
        per_page = replay_per_page(opts.replay_dir)
        if per_page is not None:
            data["per_page"] = per_page
    return data


def _seconds_between(start: Any, end: Any) -> str:
    if start is None or end is None:
        return ""
    return f"{(end - start).total_seconds():.1f}s"


class _Announcer:
    """Prints "▶ State …" once, whether the execution history or a handler's log says first."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._done: set[str] = set()
        self._lock = threading.Lock()

    def enter(self, state: str) -> None:
        with self._lock:
            if state in self._done:
                return
            self._done.add(state)
        print(f"▶ {state} …", file=self.out, flush=True)


class _ProgressLines(logging.Handler):
    """Prints the handlers' page progress and retry warnings as short lines."""

    def __init__(self, out: TextIO, announcer: _Announcer) -> None:
        super().__init__(logging.INFO)
        self.out = out
        self.announcer = announcer

    def emit(self, record: logging.LogRecord) -> None:
        self.announcer.enter(record.name.capitalize())
        msg = record.getMessage()
        wait = getattr(record, "wait_seconds", None)
        if wait is not None:
            line = (
                f"    ↻ {getattr(record, 'problem', msg)}; retry {getattr(record, 'attempt', '?')}"
            )
            line += f" in {wait:.1f}s"
        elif record.name == "extract" and msg.startswith("page "):
            line = f"    {msg}"
        elif record.levelno >= logging.WARNING:
            line = f"    ! {record.name}: {msg}"
        else:
            return
        print(line, file=self.out, flush=True)


@contextmanager
def _handler_logs_as_progress(out: TextIO, verbose: bool, announcer: _Announcer) -> Iterator[None]:
    """Show the handlers' progress as short lines; their JSON logs only with ``-v``."""
    import functions.extract.handler
    import functions.load.handler
    import functions.transform.handler  # noqa: F401 - creates the loggers

    loggers = [logging.getLogger(name) for name in ("extract", "transform", "load")]
    saved = [[(h, h.level) for h in lg.handlers] for lg in loggers]
    progress = _ProgressLines(out, announcer)
    for lg in loggers:
        if not verbose:
            for h in lg.handlers:
                h.setLevel(logging.CRITICAL + 1)
        lg.addHandler(progress)
    try:
        yield
    finally:
        for lg, handlers in zip(loggers, saved, strict=True):
            lg.removeHandler(progress)
            for h, level in handlers:
                h.setLevel(level)


def run_pipeline(opts: RunOptions, out: TextIO | None = None) -> RunReport:
    """Start the local services, run one execution to the end, stop the services."""
    from local_mode.warehouse import LocalWarehouse
    from state_machine.local_runner import LocalStepFunctions, StateEvent

    out = out or sys.stdout
    snapshot_id = validate_snapshot_id(
        opts.snapshot_id or f"local-{_utc_stamp()}", field="--snapshot-id"
    )
    if opts.replay_dir is not None:
        replay_pages(opts.replay_dir)  # refuse a bad folder before starting anything
    lake_dir = (opts.local_dir / "lake").resolve()
    warehouse_dir = (opts.local_dir / "warehouse").resolve()
    lake_dir.mkdir(parents=True, exist_ok=True)
    warehouse_dir.mkdir(parents=True, exist_ok=True)

    entered_at: dict[str, Any] = {}
    announcer = _Announcer(out)

    def progress(ev: StateEvent) -> None:
        if ev.state not in ("Extract", "Transform", "Load"):
            if ev.kind == "entered" and ev.state == "Notify failure":
                print("  → publishing failure alert to the SNS topic", file=out, flush=True)
            return
        if ev.kind == "entered":
            entered_at[ev.state] = ev.timestamp
            announcer.enter(ev.state)
        elif ev.kind == "exited" and "error" not in ev.detail:
            took = _seconds_between(entered_at.get(ev.state), ev.timestamp)
            print(f"✓ {ev.state} {took}  {_state_summary(ev.state, ev.detail)}", file=out)
        elif ev.kind == "failed":
            msg = _error_message(ev.detail.get("cause")) or ""
            print(f"✗ {ev.state}: {ev.detail.get('error')}: {msg}", file=out, flush=True)

    with ExitStack() as stack:
        source_env = stack.enter_context(_coingecko_source(opts, out))
        stack.enter_context(_handler_logs_as_progress(out, opts.verbose, announcer))
        print(f"Starting local warehouse (fakesnow) in {warehouse_dir}", file=out, flush=True)
        warehouse = stack.enter_context(LocalWarehouse(warehouse_dir))
        env = {
            "LAKE_LOCAL_DIR": str(lake_dir),
            "LAKE_BUCKET": LOCAL_BUCKET,
            "POWERTOOLS_LOG_LEVEL": "INFO",
            **source_env,
            **warehouse.env(),
            **opts.extra_env,
        }
        sfn = stack.enter_context(LocalStepFunctions(env=env))
        payload = execution_input(opts, snapshot_id)
        print(f"Execution input: {json.dumps(payload)}", file=out, flush=True)
        result = sfn.execute(payload, name=f"{snapshot_id}-{_utc_stamp()}", on_event=progress)

    return RunReport(
        status=result.status,
        snapshot_id=snapshot_id,
        execution_arn=result.execution_arn,
        duration_s=result.duration_s,
        output=result.output,
        failed_state=result.failed_state,
        error=result.error,
        error_message=_error_message(result.cause),
        alerts=result.alerts,
        lake_dir=lake_dir,
        warehouse_dir=warehouse_dir,
        state_outputs=result.state_outputs,
    )


def _state_summary(state: str, out: Mapping[str, Any]) -> str:
    if state == "Extract":
        return (
            f"{out.get('coin_count')} coins, {out.get('pages')} pages, "
            f"{out.get('api_calls')} API calls, {out.get('retries')} retries"
        )
    if state == "Transform":
        return (
            f"{out.get('row_count')} rows, {out.get('rejected_count')} rejected, "
            f"{out.get('duplicate_count')} duplicates"
        )
    if state == "Load":
        return (
            f"{out.get('rows_inserted')} rows inserted, {out.get('rows_replaced')} replaced "
            f"into {out.get('table')}"
        )
    return ""


def _print_data_notes(o: Mapping[str, Any], out: TextIO) -> None:
    """Paging, dominance basis and quality lines: what a user must know about the data."""
    from functions.transform.handler import describe_failed_checks

    if o.get("end_confirmed"):
        print(f"  paging        ended by {o.get('stop_reason')} (confirmed)", file=out)
    else:
        why = o.get("paging_warning") or "the end of the market was not confirmed"
        print(f"  paging        ! {o.get('stop_reason')}: {why}", file=out)
    quality = o.get("quality") or {}
    basis = quality.get("dominance_basis")
    if basis == "global":
        print("  dominance     global basis (/global totals)", file=out)
    elif basis:
        reason = quality.get("dominance_basis_reason") or o.get("global_error") or "?"
        print(f"  dominance     ! fetched basis (sums of the loaded coins): {reason}", file=out)
    by_reason = quality.get("rejected_by_reason") or {}
    if by_reason:
        reasons = ", ".join(f"{code} {n}" for code, n in by_reason.items())
        print(f"  rejected      {reasons}", file=out)
        for sample in quality.get("rejected_coins") or []:
            print(f"                {sample.get('coin_id')}: {sample.get('reason')}", file=out)
    failed = [c for c in quality.get("checks") or [] if not c.get("passed")]
    if failed:
        print(f"  quality       ! failed: {describe_failed_checks(failed)}", file=out)


def print_summary(report: RunReport, out: TextIO) -> None:
    """The end-of-run summary: status, counts, duration and where everything is."""
    print("", file=out)
    print(f"Execution {report.status} in {report.duration_s:.1f}s", file=out)
    print(f"  execution     {report.execution_arn}", file=out)
    print(f"  snapshot      {report.snapshot_id}", file=out)
    o = report.output or {}
    if report.status == "SUCCEEDED":
        print(
            f"  coins fetched {o.get('coin_count')} ({o.get('pages')} pages, "
            f"{o.get('api_calls')} API calls, {o.get('retries')} retries)",
            file=out,
        )
        print(
            f"  rows          {o.get('rows_inserted')} inserted, {o.get('rows_replaced')} "
            f"replaced, {o.get('rejected_count')} rejected, "
            f"{o.get('duplicate_count')} duplicates",
            file=out,
        )
        _print_data_notes(o, out)
        print(f"  table         {o.get('table')}", file=out)
        print(f"  raw files     {report.lake_dir / str(o.get('raw_prefix', ''))}", file=out)
        print(f"  processed     {report.lake_dir / str(o.get('processed_key', ''))}", file=out)
        if o.get("rejected_count"):
            print(f"  rejected rows {report.lake_dir / str(o['rejected_key'])}", file=out)
    else:
        print(f"  failed state  {report.failed_state}", file=out)
        print(f"  error         {report.error}: {report.error_message}", file=out)
        print(f"  alerts sent   {len(report.alerts)} (SNS topic crypto-etl-alerts)", file=out)
        if "UNKNOWN" in (report.error_message or ""):
            print("  warehouse     outcome unknown: check ETL_RUNS (a re-run is safe)", file=out)
        elif report.failed_state in ("Extract", "Transform", "Load"):
            print("  warehouse     unchanged (the load is all-or-nothing)", file=out)
    print(f"  lake          {report.lake_dir}", file=out)
    print(f"  warehouse     {report.warehouse_dir}", file=out)
    print('  query it      crypto-etl sql "SELECT COUNT(*) FROM CRYPTO_DATA"', file=out)


def int_range(low: int, high: int) -> Callable[[str], int]:
    """An argparse ``type`` accepting integers in ``[low, high]``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from exc
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not in {low}-{high}")
        return value

    return parse


def register(sub: Any) -> None:
    """Add ``run`` to the CLI's sub-parsers."""
    run = sub.add_parser("run", help="run the pipeline once, end to end")
    src = run.add_mutually_exclusive_group()
    src.add_argument(
        "--offline",
        action="store_true",
        help="serve a deterministic synthetic market from a local replay server",
    )
    src.add_argument(
        "--replay",
        type=Path,
        metavar="DIR",
        help="serve recorded bodies DIR/markets-page-0001.json … (+ optional global.json)",
    )
    run.add_argument(
        "--coins",
        type=int_range(1, 100_000),
        default=DEFAULT_OFFLINE_COINS,
        help="with --offline: coins in the synthetic market (default 1000)",
    )
    run.add_argument("--snapshot-id", help="snapshot id (default: local-<UTC timestamp>)")
    run.add_argument(
        "--max-coins",
        type=int_range(1, 100_000),
        help="stop after this many coins (default 1000; offline: --coins)",
    )
    run.add_argument("--vs-currency", help="quote currency (default usd)")
    run.add_argument(
        "--per-page",
        type=int_range(1, 250),
        help="page size, 1-250 (default 250; --replay: the recording's page size)",
    )
    run.add_argument("-v", "--verbose", action="store_true", help="show the handlers' JSON logs")
    run.set_defaults(func=run_cli)


def run_cli(args: argparse.Namespace, out: TextIO) -> int:
    """``crypto-etl run``: 0 when the execution succeeded, 1 when it failed."""
    opts = RunOptions(
        local_dir=args.local_dir,
        offline=args.offline,
        coins=args.coins,
        replay_dir=args.replay,
        snapshot_id=args.snapshot_id,
        max_coins=args.max_coins,
        vs_currency=args.vs_currency,
        per_page=args.per_page,
        verbose=args.verbose,
    )
    report = run_pipeline(opts, out)
    print_summary(report, out)
    return 0 if report.status == "SUCCEEDED" else 1
