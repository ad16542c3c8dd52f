"""``crypto-etl backfill``: daily history for many coins through the backfill state machine.

The definition (``state_machine/backfill.asl.json``: Plan -> Fetch, a Distributed Map ->
LoadHistory) runs under the local runner, with the extract and load handlers in-process, the
folder lake (``<local dir>/lake``) and the fakesnow warehouse (``<local dir>/warehouse``), as
``crypto-etl run`` does. moto cannot run the Distributed Map itself; the local runner runs its
items (state_machine.local_runner: what differs). Its ItemReader and ResultWriter use the same
folder lake as the handlers, so nothing needs copying between S3 and the folder.

CoinGecko is the live API unless ``--offline`` (the replay server's deterministic synthetic
histories; an unknown coin id answers 404 as CoinGecko does) or ``--replay DIR`` (recorded
``market_chart_<coin id>.json`` bodies, plus ``markets-page-*.json`` for ``--top-n``).

Every option is checked before anything starts (exit 2); progress shows one bar per batch (a
terminal) or one line per batch (piped); the summary gives coins loaded and failed with their
reasons, rows, API calls and the duration. ``--json`` prints one object on stdout instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from functions.common.errors import CryptoEtlError, ValidationError
from local_mode.run_command import (
    DEFAULT_LOCAL_DIR,
    DEFAULT_OFFLINE_COINS,
    LOCAL_BUCKET,
    CountBar,
    Prepared,
    RunOptions,
    _coingecko_source,
    _handler_logs_as_progress,
    _Progress,
    check_local_dir,
    check_request_timeout,
    error_message,
    handler_log_level,
    int_range,
    plural,
)

# The backfill's task states (state_machine/backfill.asl.json).
BACKFILL_TASKS = ("Plan", "Fetch", "LoadHistory")
MAX_TOP_N = 100_000
MAX_DAYS = 3650  # CoinGecko's paid plans go back to 2013; the plan refuses more


@dataclass
class BackfillOptions:
    """Everything ``crypto-etl backfill`` needs; the CLI flags map one to one.

    Exactly one of ``top_n``, ``coin_ids`` and ``all_coins``; ``days`` an integer 1-3650 or
    ``"max"``. ``extra_env`` overrides the environment the handlers see (e.g.
    ``BACKFILL_MAX_CONCURRENCY``).
    """

    days: int | str
    local_dir: Path = DEFAULT_LOCAL_DIR
    top_n: int | None = None
    coin_ids: list[str] | None = None
    all_coins: bool = False
    offline: bool = False
    replay_dir: Path | None = None
    vs_currency: str | None = None
    rate_limit: str | None = None
    batch_size: int | None = None
    backfill_id: str | None = None
    verbose: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)


@dataclass
class BackfillReport:
    """The outcome of one backfill execution (durations in seconds)."""

    status: str
    backfill_id: str
    execution_arn: str
    duration_s: float
    plan: dict[str, Any]
    load: dict[str, Any]
    batches: list[dict[str, Any]]
    failed_state: str | None
    error: str | None
    error_message: str | None
    alerts: list[dict[str, Any]]
    lake_dir: Path
    warehouse_dir: Path
    state_durations: dict[str, float] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """API calls, retries and 429s: the plan's plus every batch's."""
        totals = {"api_calls": int(self.plan.get("plan_api_calls") or 0), "retries": 0}
        totals["rate_limited"] = 0
        for batch in self.batches:
            out = batch.get("output") or {}
            for name in totals:
                value = out.get(name)
                totals[name] += value if isinstance(value, int) else 0
        return totals

    def nothing_loaded(self) -> bool:
        """True when coins were planned and none loaded (every one failed): the execution
        succeeded, but the backfill did nothing; the CLI exits 1."""
        planned = self.plan.get("coin_count")
        return isinstance(planned, int) and planned > 0 and not self.load.get("coins_loaded")

    def failed_coins(self) -> list[dict[str, Any]]:
        """``[{"coin_id", "error"}]``: LoadHistory's list, else (it never ran) the batches'."""
        if isinstance(self.load.get("coins_failed"), list):
            return list(self.load["coins_failed"])
        out: list[dict[str, Any]] = []
        for batch in self.batches:
            out.extend((batch.get("output") or {}).get("failed") or [])
            if batch.get("status") not in (None, "SUCCEEDED"):
                reason = f"batch failed: {batch.get('error')}: {error_message(batch.get('cause'))}"
                out.extend({"coin_id": i.get("coin_id"), "error": reason} for i in batch["items"])
        return out


def _snapshot_markets(prepared: Prepared, coins: int) -> tuple[tuple[int, datetime | None], ...]:
    """The synthetic markets the latest lake snapshot may come from (offline): the plan takes
    its top coins from it, and that snapshot may be of another size (``run --coins``) or
    drifted (``run --as-of``, as ``make demo`` does), so the replay server gives those coins a
    history too. Empty when the lake holds no snapshot in the currency."""
    from functions.common.storage import LocalStorage
    from functions.extract.history import latest_snapshot_coins

    vs_currency = str(prepared.execution_input.get("vs_currency") or "usd")
    try:
        found = latest_snapshot_coins(LocalStorage(prepared.lake_dir), vs_currency)
    except CryptoEtlError:
        return ()
    if found is None:
        return ()
    fetched = datetime.fromisoformat(found.fetched_at)
    size = max(len(found.coin_ids), 1)
    return ((size, None), (size, fetched), (coins, fetched))


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def days_arg(text: str) -> int | str:
    """An argparse ``type`` for ``--days``: 1-3650 or ``max``."""
    if text.strip().lower() == "max":
        return "max"
    try:
        return int_range(1, MAX_DAYS)(text)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (give 1-{MAX_DAYS} or 'max')") from exc


def prepare(opts: BackfillOptions) -> tuple[Prepared, str]:
    """Check every option, path and setting; create the local folders; start nothing.

    Returns ``(prepared, execution name)``. Raises ValidationError naming the flag
    (``--top-n``/``--coin-ids``/``--all``, ``--days``, ``--vs-currency``, ``--replay``,
    ``--rate-limit``, ``--backfill-id``, ``--batch-size``, ``--local-dir``) or ConfigError.
    """
    from functions.common.keys import validate_backfill_id, validate_coin_id
    from functions.extract.config import check_vs_currency

    chosen = [
        flag
        for flag, given in (
            ("--top-n", opts.top_n is not None),
            ("--coin-ids", opts.coin_ids is not None),
            ("--all", opts.all_coins),
        )
        if given
    ]
    if len(chosen) != 1:
        raise ValidationError(
            "--top-n", f"give exactly one of --top-n, --coin-ids, --all (got {chosen or 'none'})"
        )
    if opts.top_n is not None and not 1 <= opts.top_n <= MAX_TOP_N:
        raise ValidationError("--top-n", f"{opts.top_n} is not in 1-{MAX_TOP_N}")
    coin_ids: list[str] | None = None
    if opts.coin_ids is not None:
        coin_ids = [validate_coin_id(c.strip(), "--coin-ids") for c in opts.coin_ids if c.strip()]
        if not coin_ids:
            raise ValidationError("--coin-ids", "names no coin (a comma-separated list of ids)")
        coin_ids = list(dict.fromkeys(coin_ids))  # once each, in the order given
    if opts.days != "max" and not (isinstance(opts.days, int) and 1 <= opts.days <= MAX_DAYS):
        raise ValidationError("--days", f"{opts.days!r} is not in 1-{MAX_DAYS} or 'max'")
    if opts.offline and opts.replay_dir is not None:
        raise ValidationError("--offline", "give --offline or --replay DIR, not both")
    vs_currency = (
        None if opts.vs_currency is None else check_vs_currency(opts.vs_currency, "--vs-currency")
    )
    if opts.offline and vs_currency is not None:
        from local_mode.synthetic import FX_RATES

        if vs_currency not in FX_RATES:
            raise ValidationError(
                "--vs-currency",
                f"{vs_currency!r}: the synthetic market (--offline) is quoted in"
                f" {', '.join(sorted(FX_RATES))}",
            )
    backfill_id = (
        validate_backfill_id(opts.backfill_id, "--backfill-id")
        if opts.backfill_id is not None
        else None
    )
    if opts.batch_size is not None and not 1 <= opts.batch_size <= 1000:
        raise ValidationError("--batch-size", f"{opts.batch_size} is not in 1-1000")
    source = None
    if opts.replay_dir is not None:
        from local_mode.replay_server import DirectorySource

        source = DirectorySource(opts.replay_dir, field="--replay")
    env = {**os.environ, **opts.extra_env}
    log_level = handler_log_level(env)
    if opts.rate_limit is not None:
        from functions.extract.pacing import RateLimit

        RateLimit.parse(opts.rate_limit, field="--rate-limit")
    check_request_timeout(env)
    lake_dir, warehouse_dir = check_local_dir(opts.local_dir)

    data: dict[str, Any] = {"days": opts.days}
    if coin_ids is not None:
        data["coin_ids"] = coin_ids
    elif opts.top_n is not None:
        data["top_n"] = opts.top_n
    else:
        data["all"] = True
    if vs_currency is not None:
        data["vs_currency"] = vs_currency
    if opts.batch_size is not None:
        data["batch_size"] = opts.batch_size
    name = f"backfill-{_stamp()}"
    if backfill_id is not None:
        data["backfill_id"] = backfill_id
        name = f"{backfill_id[:60]}-{_stamp()}"
    prepared = Prepared(backfill_id or name, lake_dir, warehouse_dir, source, data, log_level)
    return prepared, name


# -- progress ---------------------------------------------------------------------------------


class _BackfillProgress(_Progress):
    """``crypto-etl run``'s progress lines, for the backfill's states, plus the map's batches
    (a bar on a terminal, one line per batch when piped)."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self.batches: list[dict[str, Any]] = []
        self._map_lock = threading.Lock()
        self._batch_bar: CountBar | None = None
        self._total = 0
        self._ok = self._failed = self._calls = 0

    def line(self, text: str) -> None:
        with self._lock:
            if self._batch_bar is not None:
                self._batch_bar.console.print(text, markup=False, highlight=False)
            else:
                print(text, file=self.stream, flush=True)

    def enter(self, state: str) -> None:
        # The handlers' log lines name their logger (Extract, Load), not the backfill's state.
        if state in BACKFILL_TASKS:
            super().enter(state)

    def close_bar(self) -> None:
        with self._lock:
            super().close_bar()
            if self._batch_bar is not None:
                self._batch_bar.stop()
                self._batch_bar = None

    def on_event(self, ev: Any) -> None:
        with self._lock:
            self.transitions += ev.kind == "entered"
            if ev.state not in BACKFILL_TASKS:
                if ev.kind == "entered" and ev.state == "Notify failure":
                    self.close_bar()
                    self.line("  → publishing failure alert to the SNS topic")
                return
            if ev.kind == "entered":
                if ev.timestamp is not None:
                    self._entered_at.setdefault(ev.state, ev.timestamp)
                self.enter(ev.state)
                return
            self.close_bar()
            if ev.kind == "exited" and "error" not in ev.detail:
                took = self._took(ev.state, ev.timestamp)
                self.line(f"✓ {ev.state} {took}  {backfill_state_summary(ev.state, ev.detail)}")
            elif ev.kind == "failed":
                self._took(ev.state, ev.timestamp)
                msg = error_message(ev.detail.get("cause")) or ""
                self.line(f"✗ {ev.state}: {ev.detail.get('error')}: {msg}")

    def on_map_event(self, ev: Any) -> None:
        """A Distributed Map event from the local runner (its thread)."""
        with self._map_lock:
            if ev.kind == "started":
                self._total = ev.batches
                self.line(
                    f"    {plural(ev.items, 'coin')} in {plural(ev.batches, 'batch', 'batches')}"
                )
                return
            if ev.kind != "batch_done":
                return
            out = ev.output if isinstance(ev.output, dict) else {}
            ok, failed = len(out.get("ok") or []), len(out.get("failed") or [])
            if ev.status != "SUCCEEDED":
                failed = len(ev.batch_items)
            self._ok += ok
            self._failed += failed
            self._calls += out.get("api_calls") or 0
            self.batches.append(
                {
                    "index": ev.index,
                    "status": ev.status,
                    "items": ev.batch_items,
                    "output": out,
                    "error": ev.error,
                    "cause": ev.cause,
                }
            )
            done = len(self.batches)
            figures = f"{self._ok} ok {self._failed} failed {self._calls} calls"
            if self.interactive:
                with self._lock:
                    if self._batch_bar is None:
                        self._batch_bar = CountBar(self.stream, "batches", self._total)
                    self._batch_bar.update(done, figures)
                return
            text = f"    batch {done}/{self._total}: {ok} ok, {failed} failed"
            if ev.status != "SUCCEEDED":
                text += f" (child {ev.status}: {ev.error}: {error_message(ev.cause)})"
            self.line(f"{text}; {self._ok} ok, {self._failed} failed, {self._calls} calls so far")


def backfill_state_summary(state: str, o: Mapping[str, Any]) -> str:
    """One line of figures for a finished backfill state."""
    if state == "Plan":
        text = (
            f"{plural(o.get('coin_count'), 'coin')} from {o.get('source')}, {o.get('days')} days"
            f" in {o.get('vs_currency')}; batches of {o.get('batch_size')}, at most"
            f" {o.get('max_concurrency')} at once, each at"
            f" {o.get('child_rate_limit') or 'no limit'}"
        )
        for warning in o.get("plan_warnings") or []:
            text += f"\n    ! {warning}"
        return text
    if state == "Fetch":
        return "map run finished (results in the lake)"
    if state == "LoadHistory":
        return (
            f"{o.get('rows')} rows ({o.get('rows_inserted')} new, {o.get('rows_replaced')}"
            f" replaced, {o.get('rows_unchanged')} unchanged) for"
            f" {plural(o.get('coins_loaded'), 'coin')}"
        )
    return ""


# -- the run ------------------------------------------------------------------------------------


def run_backfill(opts: BackfillOptions, out: TextIO | None = None) -> BackfillReport:
    """Check everything, start the local services, run one backfill to the end, stop them.

    Raises ValidationError/ConfigError (see :func:`prepare`) before anything starts.
    """
    out = out or sys.stdout
    prepared, name = prepare(opts)

    from local_mode.warehouse import LocalWarehouse
    from state_machine.local_runner import LocalStepFunctions

    progress = _BackfillProgress(out)
    coins = max(DEFAULT_OFFLINE_COINS, opts.top_n or 0)
    run_opts = RunOptions(
        local_dir=opts.local_dir,
        offline=opts.offline,
        coins=coins if opts.offline else None,
        replay_dir=opts.replay_dir,
        rate_limit=opts.rate_limit,
        verbose=opts.verbose,
        chart_variants=_snapshot_markets(prepared, coins) if opts.offline else (),
    )
    with ExitStack() as stack:
        source_env, _server = stack.enter_context(_coingecko_source(run_opts, prepared, progress))
        stack.enter_context(_handler_logs_as_progress(progress, opts.verbose, prepared.log_level))
        progress.line(f"Starting local warehouse (fakesnow) in {prepared.warehouse_dir}")
        warehouse = stack.enter_context(LocalWarehouse(prepared.warehouse_dir))
        env = {
            "LAKE_LOCAL_DIR": str(prepared.lake_dir),
            "LAKE_BUCKET": LOCAL_BUCKET,
            "POWERTOOLS_LOG_LEVEL": "DEBUG" if prepared.log_level <= logging.DEBUG else "INFO",
            **source_env,
            **warehouse.env(),
            **opts.extra_env,
        }
        sfn = stack.enter_context(LocalStepFunctions(env=env, definition="backfill"))
        progress.catch_up = sfn.catch_up
        progress.line(f"Execution input: {json.dumps(prepared.execution_input)}")
        result = sfn.execute(
            prepared.execution_input,
            name=name,
            on_event=progress.on_event,
            on_map_event=progress.on_map_event,
            timeout_seconds=3 * 24 * 3600.0,  # the definition's TimeoutSeconds
        )
        progress.catch_up = lambda: None
        progress.close_bar()
    plan = result.state_outputs.get("Plan") or {}
    load = result.output if result.status == "SUCCEEDED" and result.output else {}
    return BackfillReport(
        status=result.status,
        backfill_id=str(plan.get("backfill_id") or prepared.snapshot_id),
        execution_arn=result.execution_arn,
        duration_s=result.duration_s,
        plan=plan,
        load=load,
        batches=sorted(progress.batches, key=lambda b: b["index"]),
        failed_state=result.failed_state,
        error=result.error,
        error_message=error_message(result.cause),
        alerts=result.alerts,
        lake_dir=prepared.lake_dir,
        warehouse_dir=prepared.warehouse_dir,
        state_durations=progress.durations,
    )


def print_summary(report: BackfillReport, out: TextIO) -> None:
    """The end-of-run summary: status, coins ok and failed (with reasons), rows, calls, time."""
    print("", file=out)
    print(f"Backfill {report.status} in {report.duration_s:.1f}s", file=out)
    print(f"  execution     {report.execution_arn}", file=out)
    print(f"  backfill id   {report.backfill_id}", file=out)
    p, o, counts = report.plan, report.load, report.counts()
    failed = report.failed_coins()
    if p:
        print(
            f"  plan          {plural(p.get('coin_count'), 'coin')} ({p.get('source')}),"
            f" {p.get('days')} days in {p.get('vs_currency')}",
            file=out,
        )
    if report.status == "SUCCEEDED":
        print(f"  coins ok      {o.get('coins_loaded')}", file=out)
        if report.nothing_loaded():
            print("  ! no coin was loaded: every coin failed (reasons below); exit 1", file=out)
    # LoadHistory caps its list (the state limit); its count and reasons cover every coin.
    failed_count = o.get("coins_failed_count")
    failed_count = failed_count if isinstance(failed_count, int) else len(failed)
    print(f"  coins failed  {failed_count}", file=out)
    reasons = o.get("failure_reasons")
    if isinstance(reasons, dict) and reasons and failed_count > len(failed):
        summary = ", ".join(f"{why} {n}" for why, n in list(reasons.items())[:5])
        print(f"  by reason     {summary}", file=out)
    for item in failed[:20]:
        print(f"                {item.get('coin_id')}: {item.get('error')}", file=out)
    if len(failed) > 20:
        print(f"                … and {len(failed) - 20} more (--json lists all)", file=out)
    if report.status == "SUCCEEDED":
        print(
            f"  rows          {o.get('rows')} ({o.get('rows_inserted')} new,"
            f" {o.get('rows_replaced')} replaced, {o.get('rows_unchanged')} unchanged)"
            f" in {o.get('table')}",
            file=out,
        )
    print(
        f"  API calls     {counts['api_calls']} ({plural(counts['retries'], 'retry', 'retries')},"
        f" {plural(counts['rate_limited'], 'HTTP 429')}); budget {p.get('rate_limit') or 'none'},"
        f" {p.get('max_concurrency')} children at {p.get('child_rate_limit') or 'no limit'}",
        file=out,
    )
    if report.status != "SUCCEEDED":
        print(f"  failed state  {report.failed_state}", file=out)
        print(f"  error         {report.error}: {report.error_message}", file=out)
        print(f"  alerts sent   {len(report.alerts)} (SNS topic crypto-etl-alerts)", file=out)
    if p.get("history_prefix"):
        print(f"  raw bodies    {report.lake_dir / str(p['history_prefix'])}", file=out)
    print(f"  warehouse     {report.warehouse_dir}", file=out)
    out.flush()


def summary_json(report: BackfillReport) -> dict[str, Any]:
    """The ``--json`` summary: one object (README: History backfill)."""
    p, o, counts = report.plan, report.load, report.counts()
    statuses = [b.get("status") for b in report.batches]
    return {
        "status": report.status,
        "backfill_id": report.backfill_id,
        "execution": report.execution_arn,
        "duration_seconds": round(report.duration_s, 3),
        "state_durations_seconds": report.state_durations,
        "coins": {
            "requested": p.get("coin_count"),
            "loaded": o.get("coins_loaded"),
            "failed": len(report.failed_coins()),
        },
        "coins_failed": report.failed_coins(),
        "rows": o.get("rows"),
        "rows_inserted": o.get("rows_inserted"),
        "rows_replaced": o.get("rows_replaced"),
        "rows_unchanged": o.get("rows_unchanged"),
        "api_calls": counts["api_calls"],
        "retries": counts["retries"],
        "rate_limited": counts["rate_limited"],
        "batches": {
            "total": len(statuses),
            "succeeded": statuses.count("SUCCEEDED"),
            "failed": len(statuses) - statuses.count("SUCCEEDED"),
        },
        "plan": {
            k: p.get(k)
            for k in (
                "source",
                "days",
                "vs_currency",
                "batch_size",
                "max_concurrency",
                "child_rate_limit",
                "rate_limit",
                "plan_warnings",
            )
        },
        "table": o.get("table"),
        "failed_state": report.failed_state,
        "error": report.error,
        "error_message": report.error_message,
        "alerts_sent": len(report.alerts),
        "lake": str(report.lake_dir),
        "warehouse": str(report.warehouse_dir),
    }


# -- the command ----------------------------------------------------------------------------------

DESCRIPTION = """\
Backfill daily prices, market caps and volumes for many coins into CRYPTO_PRICE_HISTORY: the
backfill state machine (Plan -> Fetch, a Distributed Map -> LoadHistory) on this machine.
Re-running a range changes nothing; a longer range extends it.

CoinGecko: the LIVE API unless --offline (synthetic histories) or --replay DIR (recorded
market_chart_<coin id>.json bodies) serve it from a local server. Public and demo keys get at
most the last 365 days of history (the plan refuses more, per coin).
"""

EXIT_CODES = """\
exit codes:
  0    the backfill succeeded (coins that failed are listed with their reasons)
  1    the execution failed (the failing state, its error and the alert are printed), or
       no coin was loaded (every coin failed)
  2    bad arguments, paths or configuration: one line on stderr, nothing was started
  130  interrupted (Ctrl-C); the local services were stopped
"""


def register(sub: Any) -> None:
    """Add ``backfill`` to the CLI's sub-parsers."""
    cmd = sub.add_parser(
        "backfill",
        help="backfill daily history for many coins (live CoinGecko API unless --offline/--replay)",
        description=DESCRIPTION,
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = cmd.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--top-n",
        type=int_range(1, MAX_TOP_N),
        metavar="N",
        help="the N largest coins by market cap (latest local snapshot, else /coins/markets)",
    )
    which.add_argument(
        "--coin-ids", metavar="A,B", help="these CoinGecko coin ids, comma-separated"
    )
    which.add_argument("--all", action="store_true", help="every coin of the market")
    cmd.add_argument(
        "--days", type=days_arg, required=True, help=f"days of history, 1-{MAX_DAYS} or 'max'"
    )
    src = cmd.add_mutually_exclusive_group()
    src.add_argument("--offline", action="store_true", help="serve synthetic histories locally")
    src.add_argument(
        "--replay",
        type=Path,
        metavar="DIR",
        help="serve recorded DIR/market_chart_<coin id>.json (+ markets-page-*.json for --top-n)",
    )
    cmd.add_argument("--vs-currency", help="quote currency (default usd)")
    cmd.add_argument(
        "--rate-limit",
        metavar="N/W",
        help="the calls-per-window budget the whole map shares (COINGECKO_RATE_LIMIT); with"
        " --offline/--replay the local server enforces it too",
    )
    cmd.add_argument("--batch-size", type=int_range(1, 1000), help="coins per child (default 10)")
    cmd.add_argument("--backfill-id", help="default: the execution name")
    cmd.add_argument("--json", action="store_true", help="one JSON summary on stdout")
    cmd.add_argument("-v", "--verbose", action="store_true", help="the handlers' JSON logs")
    cmd.set_defaults(func=backfill_cli)


def backfill_cli(args: argparse.Namespace, out: TextIO) -> int:
    """``crypto-etl backfill``: 0 when the execution succeeded, 1 when it failed.

    Bad options raise ValidationError/ConfigError before anything starts (the CLI: exit 2).
    """
    opts = BackfillOptions(
        days=args.days,
        local_dir=args.local_dir,
        top_n=args.top_n,
        coin_ids=args.coin_ids.split(",") if args.coin_ids is not None else None,
        all_coins=args.all,
        offline=args.offline,
        replay_dir=args.replay,
        vs_currency=args.vs_currency,
        rate_limit=args.rate_limit,
        batch_size=args.batch_size,
        backfill_id=args.backfill_id,
        verbose=args.verbose,
    )
    as_json = bool(args.json)
    report = run_backfill(opts, sys.stderr if as_json else out)
    if as_json:
        print(json.dumps(summary_json(report), indent=2), file=out, flush=True)
    else:
        print_summary(report, out)
    return 0 if report.status == "SUCCEEDED" and not report.nothing_loaded() else 1
