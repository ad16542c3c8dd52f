"""``crypto-etl run``: one execution of the pipeline on this machine, its progress and summary.

The state-machine definition runs under moto's Step Functions interpreter, with the three Lambda
handlers dispatched in-process, a folder as the lake (``<local dir>/lake``) and a fakesnow server
(``<local dir>/warehouse``) as Snowflake. CoinGecko is the live API unless ``--offline`` (a
synthetic market) or ``--replay DIR`` (recorded bodies) serve it from a local replay server.

Every argument, path and setting is checked before any service starts (:func:`prepare`), so a
bad one costs nothing and prints one line (exit 2). Progress goes to the output stream (to
stderr with ``--json``, whose one JSON object is then the only thing on stdout); the handlers'
JSON logs (``-v``) always go to stderr.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import shlex
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from functions.common.errors import ConfigError, ValidationError
from functions.common.keys import validate_snapshot_id

if TYPE_CHECKING:
    from local_mode.replay_server import DirectorySource
    from state_machine.local_runner import StateEvent

BUILTIN_LOCAL_DIR = Path(".local")
LOCAL_BUCKET = "crypto-etl-local"
DEFAULT_OFFLINE_COINS = 1000
MAX_COINS = 100_000
TASK_STATES = ("Extract", "Transform", "Load")
LOGGERS = ("extract", "transform", "load")


def default_local_dir(env: Mapping[str, str] = os.environ) -> Path:
    """``CRYPTO_ETL_LOCAL_DIR``, or ``.local`` when it is unset or empty (blank = unset)."""
    value = env.get("CRYPTO_ETL_LOCAL_DIR", "")
    return Path(value) if value.strip() else BUILTIN_LOCAL_DIR


DEFAULT_LOCAL_DIR = default_local_dir()


@dataclass
class RunOptions:
    """Everything ``crypto-etl run`` needs; the CLI flags map one to one.

    ``coins`` is the synthetic market's size and only applies with ``offline`` (None: 1000).
    ``extra_env`` overrides the environment the handlers see (e.g. ``COINGECKO_*``).
    """

    local_dir: Path = DEFAULT_LOCAL_DIR
    offline: bool = False
    coins: int | None = None
    replay_dir: Path | None = None
    snapshot_id: str | None = None
    max_coins: int | str | None = None  # an integer or "all"
    vs_currency: str | None = None
    per_page: int | None = None
    verbose: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)
    # --as-of (offline only): the simulated time of the fetch, for demos with history.
    as_of: datetime | None = None
    # --rate-limit N/W: the client's pacing (COINGECKO_RATE_LIMIT); offline, the local server
    # enforces the same budget in fixed windows.
    rate_limit: str | None = None
    # Lambda timeouts (seconds) per function for the local runner (benchmarks force the
    # extract's deadline loop with a short one); None: the deployed values.
    function_timeouts: dict[str, float] | None = None
    # Offline only: more (coins, as_of) synthetic markets whose coins have a history
    # (SyntheticSource.chart_variants; crypto-etl backfill sets it).
    chart_variants: tuple[tuple[int, datetime | None], ...] = ()
    # --faults SPEC (--offline/--replay only): faults the local replay server injects
    # (local_mode.faults), e.g. "markets:page=2:503x3,global:html".
    faults: str | None = None


@dataclass
class RunReport:
    """The outcome of one execution.

    ``state_durations`` holds seconds per task state (entered to exited or failed, from the
    execution history). ``replay`` is set for ``--replay`` runs: ``recorded_pages``,
    ``served_pages`` and ``unserved_pages`` (recorded pages no request was answered with: a gap
    in the recording or paging that stopped earlier), page numbers ascending.
    """

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
    local_dir: Path = DEFAULT_LOCAL_DIR
    state_durations: dict[str, float] = field(default_factory=dict)
    replay: dict[str, list[int]] | None = None
    # Seconds of each Extract invocation of the deadline loop, in order (one when it fitted).
    extract_invocation_seconds: list[float] = field(default_factory=list)
    # States entered (what Step Functions bills as state transitions, give or take the start).
    state_transitions: int = 0
    # A failed execution's "Record failure" result: {"recorded": true, "table"} or
    # {"recorded": false, "error"} (None when it succeeded or never got there).
    run_log: dict[str, Any] | None = None
    # The EMF objects (CloudWatch Embedded Metric Format, the JSON with the "_aws" key) the
    # functions emitted during the run, in order: what CloudWatch would turn into metrics.
    metrics: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Prepared:
    """What :func:`prepare` checked and created, before any service starts."""

    snapshot_id: str
    lake_dir: Path
    warehouse_dir: Path
    replay_source: DirectorySource | None
    execution_input: dict[str, Any]
    log_level: int


def _utc_stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


# Step Functions execution names: 1-80 characters
# (https://docs.aws.amazon.com/step-functions/latest/apireference/API_StartExecution.html).
MAX_EXECUTION_NAME = 80


def execution_name(snapshot_id: str, stamp: str) -> str:
    """``<snapshot id>-<UTC stamp>``, the id cut so the name fits Step Functions' 80 characters."""
    room = MAX_EXECUTION_NAME - len(stamp) - 1
    return f"{snapshot_id[:room].rstrip('-_.')}-{stamp}"


def error_message(cause: str | None) -> str | None:
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


def plural(count: object, singular: str, many: str | None = None) -> str:
    """``"1 page"``, ``"2 pages"``, ``"0 retries"`` (``many``: an irregular plural); None is ?."""
    if count is None:
        return f"? {many or singular + 's'}"
    return f"{count} {singular if count == 1 else (many or singular + 's')}"


# -- checks before anything starts ------------------------------------------------------------


def replay_source(replay_dir: Path) -> DirectorySource:
    """The recorded bodies of a replay folder, all read now.

    Raises ValidationError naming ``--replay`` for a folder that is missing, has no
    ``markets-page-0001.json`` (``-0002.json``, …) file, or holds one that cannot be read.
    """
    from local_mode.replay_server import DirectorySource

    source = DirectorySource(replay_dir, field="--replay")
    if not source.pages:
        raise ValidationError(
            "--replay", f"{replay_dir} has no markets-page-0001.json (… -0002.json, …) files"
        )
    return source


def replay_per_page(source: DirectorySource) -> int | None:
    """Rows per page of a recording: page 1's length when a later page exists, else None.

    A recording made with per_page=100 has 100-row pages; asking for 250 a page would make
    page 1 look short and confuse the paging about where the market ends.
    """
    first = source.pages.get(1)
    if first is None or len(source.pages) < 2:
        return None
    try:
        rows = json.loads(first)
    except (ValueError, UnicodeDecodeError):
        return None
    return len(rows) if isinstance(rows, list) and 0 < len(rows) <= 250 else None


def _writable_dir(path: Path, flag: str) -> Path:
    """Create ``path`` (and parents) and prove it writable with a temporary file."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        problem = exc.strerror or type(exc).__name__
        where = exc.filename or path
        raise ValidationError(
            flag, f"{path} is not a writable directory ({where}: {problem})"
        ) from None
    return path.resolve()


def check_local_dir(local_dir: Path) -> tuple[Path, Path]:
    """``(lake dir, warehouse dir)`` under ``local_dir``, created and proven writable.

    Raises ValidationError naming ``--local-dir`` when it is not a directory, or it or its
    ``lake``/``warehouse`` folders cannot be created or written.
    """
    flag = "--local-dir"
    if local_dir.exists() and not local_dir.is_dir():
        raise ValidationError(flag, f"{local_dir} exists and is not a directory")
    return _writable_dir(local_dir / "lake", flag), _writable_dir(local_dir / "warehouse", flag)


def check_request_timeout(env: Mapping[str, str]) -> float:
    """``COINGECKO_TIMEOUT_SECONDS`` from ``env``, refused (ConfigError) when it cannot fit.

    It must not exceed the extract function's timeout (state_machine.local_runner's
    FUNCTION_TIMEOUTS, equal to the CDK app's) minus the extract's DEADLINE_MARGIN_SECONDS.
    """
    from functions.common.config import env_float
    from functions.extract.config import check_timeout_fits
    from functions.extract.handler import DEADLINE_MARGIN_SECONDS
    from state_machine.local_runner import FUNCTION_TIMEOUTS

    timeout = env_float(env, "COINGECKO_TIMEOUT_SECONDS", 30.0, minimum=0.001)
    margin = env_float(env, "EXTRACT_DEADLINE_MARGIN_SECONDS", DEADLINE_MARGIN_SECONDS, minimum=0.0)
    check_timeout_fits(
        timeout,
        FUNCTION_TIMEOUTS["extract"],
        margin,
        "the extract function's timeout",
    )
    return timeout


def check_transform_settings(env: Mapping[str, str]) -> None:
    """The Transform's settings (``COVERAGE_MIN_PCT``, ``QUALITY_GATE``,
    ``QUALITY_MIN_ROW_FRACTION``), checked before anything starts: a bad one would otherwise
    surface only after the Extract, as a failed execution and an alert. Raises ConfigError."""
    from functions.transform.coverage import min_pct_from_env
    from functions.transform.gate import gate_config_from_env

    min_pct_from_env(env)
    gate_config_from_env(env)


def handler_log_level(env: Mapping[str, str]) -> int:
    """The handlers' log level: ``POWERTOOLS_LOG_LEVEL`` (or ``LOG_LEVEL``), default INFO.

    Raises ConfigError for a name that is not a logging level.
    """
    name = "POWERTOOLS_LOG_LEVEL" if env.get("POWERTOOLS_LOG_LEVEL") else "LOG_LEVEL"
    value = (env.get(name) or "INFO").strip().upper()
    level = logging.getLevelNamesMapping().get(value)
    if level is None:
        raise ConfigError(name, f"{value!r} is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    return level


def prepare(opts: RunOptions) -> Prepared:
    """Check every option, path and setting, and create the local folders; start nothing.

    Raises ValidationError (a flag: ``--snapshot-id``, ``--vs-currency``, ``--coins``,
    ``--replay``, ``--local-dir``) or ConfigError (an environment variable), each naming it.
    """
    from functions.extract.config import check_vs_currency

    snapshot_id = validate_snapshot_id(
        opts.snapshot_id if opts.snapshot_id is not None else f"local-{_utc_stamp()}",
        field="--snapshot-id",
    )
    vs_currency = (
        None if opts.vs_currency is None else check_vs_currency(opts.vs_currency, "--vs-currency")
    )
    if opts.coins is not None:
        if not opts.offline:
            other = (
                "--replay (the recording sets the market)" if opts.replay_dir else "the live API"
            )
            raise ValidationError(
                "--coins",
                f"sets the synthetic market's size and needs --offline; it would be ignored with"
                f" {other}: use --max-coins to fetch fewer coins",
            )
        if not 1 <= opts.coins <= MAX_COINS:
            raise ValidationError("--coins", f"{opts.coins} is not in 1-{MAX_COINS}")
    if opts.as_of is not None and not opts.offline:
        raise ValidationError(
            "--as-of", "simulates the fetch time of the synthetic market and needs --offline"
        )
    if opts.offline and vs_currency is not None:
        from local_mode.synthetic import FX_RATES

        if vs_currency not in FX_RATES:  # the replay server would answer 400 mid-run
            raise ValidationError(
                "--vs-currency",
                f"{vs_currency!r}: the synthetic market (--offline) is quoted in"
                f" {', '.join(sorted(FX_RATES))}",
            )
    source = replay_source(opts.replay_dir) if opts.replay_dir is not None else None
    env = {**os.environ, **opts.extra_env}
    log_level = handler_log_level(env)  # first: the handlers' loggers read it at import
    check_transform_settings(env)
    if opts.rate_limit is not None:
        from functions.extract.pacing import RateLimit

        RateLimit.parse(opts.rate_limit, field="--rate-limit")
    check_request_timeout(env)
    if opts.faults is not None:
        from local_mode.faults import parse

        if not (opts.offline or opts.replay_dir is not None):
            raise ValidationError(
                "--faults",
                "injects faults into the local replay server: needs --offline or"
                " --replay (never the live API)",
            )
        parse(opts.faults, field="--faults")
    lake_dir, warehouse_dir = check_local_dir(opts.local_dir)

    data: dict[str, Any] = {"snapshot_id": snapshot_id}
    if opts.max_coins is not None:
        data["max_coins"] = opts.max_coins
    elif opts.offline:
        data["max_coins"] = opts.coins if opts.coins is not None else DEFAULT_OFFLINE_COINS
    if vs_currency is not None:
        data["vs_currency"] = vs_currency
    if opts.per_page is not None:
        data["per_page"] = opts.per_page
    elif source is not None and (per_page := replay_per_page(source)) is not None:
        data["per_page"] = per_page
    return Prepared(snapshot_id, lake_dir, warehouse_dir, source, data, log_level)


# -- progress ---------------------------------------------------------------------------------


def page_figures(extra: Mapping[str, Any]) -> str:
    """The running figures of an extract page log record, e.g. "1,000 coins, 5 calls,
    1 rate-limit wait (3.0s)"."""
    waits = extra.get("pacing_waits") or 0
    text = f"{extra.get('coins_so_far', 0):,} coins, {plural(extra.get('api_calls'), 'call')}"
    if waits:
        seconds = extra.get("pacing_wait_seconds") or 0
        text += f", {plural(waits, 'rate-limit wait')} ({seconds:.1f}s)"
    if extra.get("rate_limited"):
        text += f", {plural(extra['rate_limited'], 'HTTP 429')}"
    return text


class CountBar:
    """A ``rich`` progress bar (a terminal only): ``label`` done of a total (None: unknown),
    short figures and an ETA; fits 80 columns. The extract's pages here, the backfill's
    batches in ``backfill_command``."""

    def __init__(self, stream: TextIO, label: str, total: int | None = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.console = Console(file=stream, highlight=False)
        self._progress = Progress(
            TextColumn(f"    {label}"),
            BarColumn(bar_width=16),
            MofNCompleteColumn(),
            TextColumn("{task.fields[figures]}"),
            TextColumn("ETA"),
            TimeRemainingColumn(compact=True),
            console=self.console,
            transient=True,
        )
        self._task = self._progress.add_task(label, total=total, figures="")
        self._progress.start()

    def update(self, done: int, figures: str, total: int | None = None) -> None:
        """Show ``done`` (of ``total`` when given) and ``figures``."""
        if total is None:
            self._progress.update(self._task, completed=done, figures=figures)
        else:
            self._progress.update(self._task, completed=done, total=total, figures=figures)

    def stop(self) -> None:
        self._progress.stop()


def page_bar_figures(extra: Mapping[str, Any]) -> str:
    """The page bar's short figures, e.g. "750 coins 4 calls 1 wait 2s 1x429"."""
    waits = extra.get("pacing_waits") or 0
    text = f"{extra.get('coins_so_far', 0):,} coins {extra.get('api_calls', 0)} calls"
    text += f" {waits} wait{'s' if waits != 1 else ''}"
    text += f" {extra.get('pacing_wait_seconds') or 0:.0f}s"
    if extra.get("rate_limited"):
        text += f" {extra['rate_limited']}x429"
    return text


class _Progress:
    """Progress lines in execution order, each flushed at once (also when piped).

    Lines come from the execution history (followed by the runner) and from the handlers' logs
    (in moto's execution thread); ``catch_up`` reports the history first, so a handler's line
    never comes before the previous state's "✓". On a terminal the extract's pages show as a
    progress bar (``rich``) instead of one line per page.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.catch_up: Callable[[], None] = lambda: None
        self.durations: dict[str, float] = {}
        self._entered_at: dict[str, datetime] = {}
        self._announced: set[str] = set()
        self._lock = threading.RLock()
        self._bar: CountBar | None = None
        self.current_state: str | None = None  # the state entered last
        self.extract_invocations: list[float] = []
        self.transitions = 0
        self._invocation_start: datetime | None = None
        isatty = getattr(stream, "isatty", None)
        self.interactive = bool(callable(isatty) and isatty())

    def line(self, text: str) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.console.print(text, markup=False, highlight=False)
            else:
                print(text, file=self.stream, flush=True)

    def page(self, text: str, extra: Mapping[str, Any]) -> None:
        """One extract page: the bar on a terminal, else a line with the figures."""
        with self._lock:
            if not self.interactive:
                page, rows, kept = extra.get("page"), extra.get("rows"), extra.get("kept")
                head = f"page {page}: {rows} coins ({kept} kept)" if page is not None else text
                self.line(f"    {head}; {page_figures(extra)} so far")
                return
            if self._bar is None:
                self._bar = CountBar(self.stream, "pages")
            expected = extra.get("expected_pages")
            done = extra.get("pages_so_far") or 0
            total = max(expected, done) if isinstance(expected, int) else None
            self._bar.update(done, page_bar_figures(extra), total)

    def close_bar(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.stop()
                self._bar = None

    def enter(self, state: str) -> None:
        with self._lock:
            if state not in self._announced:
                self._announced.add(state)
                self.line(f"▶ {state} …")

    def _took(self, state: str, when: datetime | None) -> str:
        start = self._entered_at.get(state)
        if start is None or when is None:
            return ""
        seconds = (when - start).total_seconds()
        self.durations[state] = round(seconds, 3)
        return f"{seconds:.1f}s"

    def on_event(self, ev: StateEvent) -> None:
        with self._lock:
            self.transitions += ev.kind == "entered"
            if ev.kind == "entered":
                self.current_state = ev.state
            if ev.state == "Extract" and ev.timestamp is not None:
                if ev.kind == "entered":
                    self._invocation_start = ev.timestamp
                elif self._invocation_start is not None:
                    took = (ev.timestamp - self._invocation_start).total_seconds()
                    self.extract_invocations.append(round(took, 3))
                    self._invocation_start = None
            if ev.state not in TASK_STATES:
                if ev.kind == "entered" and ev.state == "Record failure":
                    self.close_bar()
                    self.line("  → recording the failure in ETL_RUNS")
                elif ev.kind == "exited" and ev.state == "Failure not recorded":
                    error = (ev.detail.get("run_log") or {}).get("error") or {}
                    why = error_message(error.get("Cause")) or ""
                    self.line(f"  ! not recorded in ETL_RUNS: {error.get('Error')}: {why}")
                elif ev.kind == "entered" and ev.state == "Notify failure":
                    self.close_bar()
                    self.line("  → publishing failure alert to the SNS topic")
                return
            if ev.kind == "exited" and ev.state == "Extract" and ev.detail.get("done") is False:
                self.line(
                    f"    ↺ invocation {ev.detail.get('invocations')} stopped before page"
                    f" {ev.detail.get('next_page')} (Lambda deadline) with"
                    f" {plural(ev.detail.get('pages'), 'page')}; Extract continues"
                )
                return
            if ev.kind != "entered":
                self.close_bar()
            if ev.kind == "entered":
                if ev.timestamp is not None:
                    self._entered_at.setdefault(ev.state, ev.timestamp)
                self.enter(ev.state)
            elif ev.kind == "exited" and "error" not in ev.detail:
                took = self._took(ev.state, ev.timestamp)
                self.line(f"✓ {ev.state} {took}  {state_summary(ev.state, ev.detail)}")
            elif ev.kind == "failed":
                self._took(ev.state, ev.timestamp)
                msg = error_message(ev.detail.get("cause")) or ""
                self.line(f"✗ {ev.state}: {ev.detail.get('error')}: {msg}")


class _ProgressLines(logging.Handler):
    """Prints the handlers' page progress and retry warnings as short lines."""

    def __init__(self, progress: _Progress) -> None:
        super().__init__(logging.INFO)
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        wait = getattr(record, "wait_seconds", None)
        if wait is not None:
            attempt = getattr(record, "attempt", None)
            line = f"    ↻ {getattr(record, 'problem', msg)}; retry {attempt or '?'}"
            line += f" in {wait:.1f}s"
        elif record.name == "extract" and msg.startswith("page "):
            self.progress.catch_up()
            with self.progress._lock:
                self.progress.enter("Extract")
                self.progress.page(msg, record.__dict__)
            return
        elif record.levelno >= logging.WARNING:
            line = f"    ! {record.name}: {msg}"
        else:
            line = None
        # Earlier states' lines first: the history may not have been polled yet. (Not under
        # the progress lock: catch_up takes the runner's lock first, then that one.)
        self.progress.catch_up()
        with self.progress._lock:
            # Record failure runs the load function: its lines belong to that step, not Load.
            if self.progress.current_state in (None, *TASK_STATES):
                self.progress.enter(record.name.capitalize())
            if line is not None:
                self.progress.line(line)


def _set_stream(handler: logging.StreamHandler, stream: TextIO) -> None:
    """``handler.setStream(stream)`` without flushing the old stream first when it is already
    closed (``setStream`` flushes it: a stream captured earlier, e.g. by a test, may be gone)."""
    old = handler.stream
    if getattr(old, "closed", False):
        handler.stream = stream
    else:
        handler.setStream(stream)


def _print_emf(blob: Mapping[str, Any]) -> None:
    """``-v``: one EMF object as the function wrote it (one line of compact JSON), on stderr
    beside the JSON logs."""
    print(json.dumps(blob, separators=(",", ":")), file=sys.stderr, flush=True)


@contextmanager
def _handler_logs_as_progress(progress: _Progress, verbose: bool, level: int) -> Iterator[None]:
    """Show the handlers' progress as short lines; their JSON logs only with ``-v``, on stderr.

    ``level`` is the user's log level for those JSON logs (the loggers themselves stay at INFO
    or lower, so the progress lines keep coming).
    """
    import functions.extract.handler
    import functions.load.handler
    import functions.transform.handler  # noqa: F401 - creates the loggers

    loggers = [logging.getLogger(name) for name in LOGGERS]
    saved = [[(h, h.level, getattr(h, "stream", None)) for h in lg.handlers] for lg in loggers]
    lines = _ProgressLines(progress)
    for lg in loggers:
        for h in lg.handlers:
            h.setLevel(level if verbose else logging.CRITICAL + 1)
            if isinstance(h, logging.StreamHandler):
                _set_stream(h, sys.stderr)  # Powertools writes to the stdout of import time
        lg.addHandler(lines)
    try:
        yield
    finally:
        for lg, handlers in zip(loggers, saved, strict=True):
            lg.removeHandler(lines)
            for h, level_was, stream in handlers:
                h.setLevel(level_was)
                if isinstance(h, logging.StreamHandler) and stream is not None:
                    _set_stream(h, stream)


@contextmanager
def _coingecko_source(
    opts: RunOptions, prepared: Prepared, progress: _Progress
) -> Iterator[tuple[dict[str, str], Any]]:
    """``(environment, replay server or None)``: a local replay server, or the live API."""
    if prepared.replay_source is not None or opts.offline:
        from local_mode.replay_server import ReplayServer, SyntheticSource

        source = prepared.replay_source or SyntheticSource(
            opts.coins if opts.coins is not None else DEFAULT_OFFLINE_COINS,
            as_of=opts.as_of,
            chart_variants=opts.chart_variants,
        )
        with ReplayServer(source) as server:
            what = "recorded bodies" if prepared.replay_source else "synthetic market"
            progress.line(f"CoinGecko: local replay server ({what}) at {server.base_url}")
            env = {
                "COINGECKO_BASE_URL": server.base_url,
                "COINGECKO_API_PLAN": "public",
                "COINGECKO_API_KEY": "",
                "COINGECKO_API_KEY_SECRET_ARN": "",
            }
            if opts.rate_limit is not None:
                from functions.extract.pacing import RateLimit

                limit = RateLimit.parse(opts.rate_limit, field="--rate-limit")
                if limit is not None:
                    server.rate_limit(limit.calls, limit.window_seconds, mode="fixed")
                    progress.line(
                        f"Rate limit: the local server allows {limit.calls} calls per"
                        f" {limit.window_seconds:g}s (fixed windows); the client paces itself"
                    )
                env["COINGECKO_RATE_LIMIT"] = opts.rate_limit
            if opts.faults is not None:
                injected = server.inject(opts.faults)  # checked by prepare()
                progress.line(f"Faults: {', '.join(f.spec for f in injected)}")
            # Sealed from the user's shell: no real key goes to the replay server.
            yield env, server
    else:
        from functions.extract.config import PRO_BASE_URL, PUBLIC_BASE_URL

        env: dict[str, str] = {}
        if opts.rate_limit is not None:
            env["COINGECKO_RATE_LIMIT"] = opts.rate_limit
        merged = {**os.environ, **opts.extra_env}
        if merged.get("COINGECKO_API_KEY_SECRET_ARN"):
            # Local mode runs under moto: a real secret ARN cannot be read here.
            progress.line(
                "note: COINGECKO_API_KEY_SECRET_ARN is ignored locally; set COINGECKO_API_KEY"
            )
            env["COINGECKO_API_KEY_SECRET_ARN"] = ""
        plan = merged.get("COINGECKO_API_PLAN", "").strip().lower()
        url = merged.get("COINGECKO_BASE_URL", "").strip() or (
            PRO_BASE_URL if plan == "pro" else PUBLIC_BASE_URL
        )
        progress.line(f"CoinGecko: live API at {url} (--offline or --replay DIR to stay local)")
        yield env, None


# -- the run ------------------------------------------------------------------------------------


def _simulated_clock_handlers(as_of: datetime) -> dict[str, Any]:
    """The real handlers, with the Extract told it runs at ``as_of`` (``--as-of``, offline only):
    the execution's start time and the fetch clock, so FETCHED_AT, FETCH_DATE and the lake
    partition are those of the simulated day. Local stand-in only; nothing on AWS does this."""
    from unittest import mock

    import functions.extract.handler as extract_module
    from state_machine.local_runner import default_handlers

    handlers = default_handlers()
    real_extract, real_run = handlers["extract"], extract_module.run

    def extract(event: dict[str, Any], context: Any) -> dict[str, Any]:
        event = {**event, "execution": {**event["execution"], "start_time": as_of.isoformat()}}
        # handler() calls run() by its module-level name: give that call the simulated clock.
        timed_run = functools.partial(real_run, now=lambda: as_of)
        with mock.patch.object(extract_module, "run", timed_run):
            return real_extract(event, context)

    handlers["extract"] = extract
    return handlers


def run_pipeline(opts: RunOptions, out: TextIO | None = None) -> RunReport:
    """Check everything, start the local services, run one execution to the end, stop them.

    ``out`` receives the progress lines (default stdout). Raises ValidationError/ConfigError
    (see :func:`prepare`) before anything starts; KeyboardInterrupt stops what was started.
    """
    out = out or sys.stdout
    prepared = prepare(opts)

    from functions.common.observability import capture_emf
    from local_mode.warehouse import LocalWarehouse
    from state_machine.local_runner import LocalStepFunctions

    progress = _Progress(out)
    replay: dict[str, list[int]] | None = None
    with ExitStack() as stack:
        source_env, server = stack.enter_context(_coingecko_source(opts, prepared, progress))
        stack.enter_context(_handler_logs_as_progress(progress, opts.verbose, prepared.log_level))
        emf = stack.enter_context(capture_emf(_print_emf if opts.verbose else None))
        progress.line(f"Starting local warehouse (fakesnow) in {prepared.warehouse_dir}")
        warehouse = stack.enter_context(LocalWarehouse(prepared.warehouse_dir))
        env = {
            "LAKE_LOCAL_DIR": str(prepared.lake_dir),
            "LAKE_BUCKET": LOCAL_BUCKET,
            # DEBUG when asked for; otherwise INFO, which the progress lines need.
            "POWERTOOLS_LOG_LEVEL": "DEBUG" if prepared.log_level <= logging.DEBUG else "INFO",
            **source_env,
            **warehouse.env(),
            **opts.extra_env,
        }
        handlers = _simulated_clock_handlers(opts.as_of) if opts.as_of else None
        sfn = stack.enter_context(
            LocalStepFunctions(handlers=handlers, env=env, timeouts=opts.function_timeouts)
        )
        progress.catch_up = sfn.catch_up
        payload = prepared.execution_input
        progress.line(f"Execution input: {json.dumps(payload)}")
        result = sfn.execute(
            payload,
            name=execution_name(prepared.snapshot_id, _utc_stamp()),
            on_event=progress.on_event,
        )
        progress.catch_up = lambda: None
        progress.close_bar()
        if prepared.replay_source is not None and server is not None:
            replay = {
                "recorded_pages": prepared.replay_source.recorded_pages,
                "served_pages": server.served_pages(),
                "unserved_pages": server.unserved_pages(),
            }

    return RunReport(
        status=result.status,
        snapshot_id=prepared.snapshot_id,
        execution_arn=result.execution_arn,
        duration_s=result.duration_s,
        output=result.output,
        failed_state=result.failed_state,
        error=result.error,
        error_message=error_message(result.cause),
        alerts=result.alerts,
        lake_dir=prepared.lake_dir,
        warehouse_dir=prepared.warehouse_dir,
        state_outputs=result.state_outputs,
        local_dir=opts.local_dir,
        state_durations=dict(progress.durations),
        replay=replay,
        extract_invocation_seconds=list(progress.extract_invocations),
        state_transitions=progress.transitions,
        run_log=result.run_log,
        metrics=list(emf),
    )


# -- output ---------------------------------------------------------------------------------------


def _table_after(o: Mapping[str, Any]) -> str:
    """What the table holds for the snapshot after the load, e.g. "300 rows for the snapshot
    (replacing 600)"; ``row_count`` is the Transform's, ``rows_replaced`` the Load's."""
    text = f"{plural(o.get('row_count'), 'row')} for the snapshot"
    replaced = o.get("rows_replaced")
    if replaced:
        new = o.get("rows_inserted")
        text += f" (replacing {replaced}; {plural(new, 'coin')} new to it)"
    elif replaced == 0:
        text += " (new)"
    return text


def warehouse_after_failure(failed_state: str | None, message: str | None) -> str | None:
    """What a failed execution left in the warehouse, from the Load's own words: unchanged
    (the load is all-or-nothing), committed (only the lake's index failed after COMMIT), or
    unknown (COMMIT's reply was lost and could not be checked); None outside the task states."""
    text = message or ""
    if "UNKNOWN" in text:
        return "outcome unknown: check ETL_RUNS (a re-run is safe)"
    if "COMMITTED" in text:
        return "committed (only the lake's snapshot index lags: re-run the snapshot)"
    if failed_state in TASK_STATES:
        return "unchanged (the load is all-or-nothing)"
    return None


def state_summary(state: str, out: Mapping[str, Any]) -> str:
    """The counts after ``✓ State`` in progress lines (the state's output ``out``)."""
    if state == "Extract":
        return (
            f"{plural(out.get('coin_count'), 'coin')}, {plural(out.get('pages'), 'page')}, "
            f"{plural(out.get('api_calls'), 'API call')}, "
            f"{plural(out.get('retries'), 'retry', 'retries')}{_extract_extras(out)}"
        )
    if state == "Transform":
        return (
            f"{plural(out.get('row_count'), 'row')}, {out.get('rejected_count')} rejected, "
            f"{plural(out.get('duplicate_count'), 'duplicate')}"
        )
    if state == "Load":
        return f"{_table_after(out)} in {out.get('table')}"
    return ""


def _extract_extras(o: Mapping[str, Any]) -> str:
    """ ", 3 invocations, 7 rate-limit waits (52.0s), 1 HTTP 429" — the parts not zero."""
    parts = []
    if (o.get("invocations") or 1) > 1:
        parts.append(f"{o['invocations']} invocations")
    if o.get("pacing_waits"):
        seconds = o.get("pacing_wait_seconds") or 0
        parts.append(f"{plural(o['pacing_waits'], 'rate-limit wait')} ({seconds:.1f}s)")
    if o.get("rate_limited"):
        parts.append(plural(o["rate_limited"], "HTTP 429"))
    return "".join(f", {p}" for p in parts)


def _pct(value: object) -> str:
    return f"{value:.1f}%" if isinstance(value, int | float) else "n/a"


def coverage_line(coverage: Mapping[str, Any]) -> str | None:
    """The summary's coverage line: coins vs /global's active cryptocurrencies and market cap
    vs /global's total (None when the Transform reported no coverage)."""
    if not coverage:
        return None
    active = coverage.get("active_cryptocurrencies")
    if active is None:
        return f"{coverage.get('coins_fetched')} coins; /global unavailable, coverage unknown"
    text = (
        f"{_pct(coverage.get('coin_pct'))} of /global's {active:,} active coins"
        f" ({coverage.get('coins_fetched'):,}), {_pct(coverage.get('market_cap_pct'))}"
        " of its total market cap"
    )
    if coverage.get("warning"):
        text = f"! {text}: {coverage['warning']}"
    return text


def _replay_line(replay: Mapping[str, list[int]]) -> str:
    recorded, unserved = replay["recorded_pages"], replay["unserved_pages"]
    if not unserved:
        return f"{plural(len(recorded), 'recorded page')}, all served"
    pages = ", ".join(str(p) for p in unserved)
    return (
        f"! {len(unserved)} of {plural(len(recorded), 'recorded page')} not served"
        f" (page{'s' if len(unserved) != 1 else ''} {pages}): paging never reached"
        f" {'them' if len(unserved) != 1 else 'it'} (a gap in the recording, --max-coins or"
        " --per-page); those coins are not in this snapshot"
    )


def _print_data_notes(o: Mapping[str, Any], out: TextIO) -> None:
    """Paging, dominance basis and quality lines: what a user must know about the data."""
    from functions.transform.handler import describe_failed_checks

    if o.get("stop_reason") == "max_coins":
        print(f"  paging        stopped at max_coins ({o.get('max_coins')} coins asked)", file=out)
    elif o.get("end_confirmed"):
        print("  paging        to the end of the market (confirmed by an empty page)", file=out)
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
    if o.get("duplicate_count"):
        print(
            f"  duplicates    {plural(o['duplicate_count'], 'coin')} on two pages (ranks shifted"
            " while paging): as many others may have crossed a page boundary unseen; coverage"
            " below says how much of the market is here",
            file=out,
        )
    coverage = coverage_line(o.get("coverage") or {})
    if coverage is not None:
        print(f"  coverage      {coverage}", file=out)


# The summary's metric figures, in this order (every metric is in the EMF lines of -v).
KEY_METRICS: tuple[tuple[str, str], ...] = (
    ("ExtractCoins", "{:g} coins"),
    ("ApiCalls", "{:g} calls"),
    ("RateLimited429s", "{:g} 429s"),
    ("RateLimitWaitSeconds", "{:.1f}s rate-limit wait"),
    ("RowsOut", "{:g} rows out"),
    ("RowsRejected", "{:g} rejected"),
    ("RowsInserted", "{:g} inserted"),
    ("LoadSeconds", "{:.1f}s load"),
    ("ExecutionSeconds", "{:.1f}s execution"),
    ("ExecutionSucceeded", "{:g} succeeded"),
    ("ExecutionFailed", "{:g} failed"),
)


def metrics_line(blobs: list[dict[str, Any]]) -> str | None:
    """The summary's ``metrics`` line from the run's EMF objects, e.g. "CryptoEtl: 300 coins,
    3 calls, ..., 1 succeeded (5 EMF objects; -v prints them)"; None when none were emitted."""
    from functions.common.observability import emf_totals

    if not blobs:
        return None
    totals = emf_totals(blobs)
    parts = [fmt.format(totals[name]) for name, fmt in KEY_METRICS if name in totals]
    namespaces = sorted(
        {d.get("Namespace") for b in blobs for d in b["_aws"].get("CloudWatchMetrics") or []}
    )
    return (
        f"{', '.join(str(n) for n in namespaces)}: {', '.join(parts)}"
        f" ({plural(len(blobs), 'EMF object')}; -v prints them)"
    )


def query_hint(local_dir: Path) -> str:
    """The command that queries this run's warehouse (keeping a non-default ``--local-dir``)."""
    flag = "" if local_dir == BUILTIN_LOCAL_DIR else f"--local-dir {shlex.quote(str(local_dir))} "
    return f'crypto-etl {flag}sql "SELECT COUNT(*) FROM CRYPTO_DATA"'


def print_summary(report: RunReport, out: TextIO) -> None:
    """The end-of-run summary: status, counts, duration and where everything is."""
    print("", file=out)
    print(f"Execution {report.status} in {report.duration_s:.1f}s", file=out)
    print(f"  execution     {report.execution_arn}", file=out)
    print(f"  snapshot      {report.snapshot_id}", file=out)
    o = report.output or {}
    if report.status == "SUCCEEDED":
        print(
            f"  coins fetched {o.get('coin_count')} ({plural(o.get('pages'), 'page')}, "
            f"{plural(o.get('api_calls'), 'API call')}, "
            f"{plural(o.get('retries'), 'retry', 'retries')}{_extract_extras(o)})",
            file=out,
        )
        print(
            f"  rows          {_table_after(o)}; {o.get('rejected_count')} rejected, "
            f"{plural(o.get('duplicate_count'), 'duplicate')}",
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
        if (
            after := warehouse_after_failure(report.failed_state, report.error_message)
        ) is not None:
            print(f"  warehouse     {after}", file=out)
        if report.run_log is not None:
            recorded = report.run_log.get("recorded")
            text = "a FAILED row in ETL_RUNS" if recorded else "! not recorded in ETL_RUNS"
            print(f"  run log       {text}", file=out)
    if report.replay is not None:
        print(f"  replay        {_replay_line(report.replay)}", file=out)
    if (figures := metrics_line(report.metrics)) is not None:
        print(f"  metrics       {figures}", file=out)
    print(f"  lake          {report.lake_dir}", file=out)
    print(f"  warehouse     {report.warehouse_dir}", file=out)
    print(f"  query it      {query_hint(report.local_dir)}", file=out)
    out.flush()


def summary_json(report: RunReport) -> dict[str, Any]:
    """The ``--json`` summary (one object; see the README's ``crypto-etl run --json``).

    Counts are None when the execution failed before the state that produces them; durations
    are seconds; paths are absolute. ``metrics`` sums each emitted metric over the run.
    """
    from functions.common.observability import emf_totals

    o = dict(report.output or {})
    if not report.output:  # failed: what the states that finished reported (each adds to the last)
        for state in TASK_STATES:
            o.update(report.state_outputs.get(state) or {})
    quality = o.get("quality") or {}
    return {
        "status": report.status,
        "snapshot_id": report.snapshot_id,
        "execution": report.execution_arn,
        "duration_seconds": round(report.duration_s, 3),
        "state_durations_seconds": report.state_durations,
        "extract_invocation_seconds": report.extract_invocation_seconds,
        "counts": {
            "coins_fetched": o.get("coin_count"),
            "pages": o.get("pages"),
            "api_calls": o.get("api_calls"),
            "retries": o.get("retries"),
            "rate_limited": o.get("rate_limited"),
            "rate_limit_waits": o.get("pacing_waits"),
            "rate_limit_wait_seconds": o.get("pacing_wait_seconds"),
            "extract_invocations": o.get("invocations"),
            "rows": o.get("row_count"),
            "rows_inserted": o.get("rows_inserted"),
            "rows_replaced": o.get("rows_replaced"),
            "rejected": o.get("rejected_count"),
            "duplicates": o.get("duplicate_count"),
        },
        "failed_state": report.failed_state,
        "error": report.error,
        "error_message": report.error_message,
        "alerts_sent": len(report.alerts),
        "failure_recorded": (report.run_log or {}).get("recorded"),
        "paging": {
            "stop_reason": o.get("stop_reason"),
            "end_confirmed": o.get("end_confirmed"),
            "warning": o.get("paging_warning"),
        },
        "dominance": {
            "basis": quality.get("dominance_basis"),
            "reason": quality.get("dominance_basis_reason") or o.get("global_error"),
        },
        "quality": {
            "rejected_by_reason": quality.get("rejected_by_reason") or {},
            "failed_checks": quality.get("failed_checks") or [],
        },
        "coverage": o.get("coverage"),
        "metrics": emf_totals(report.metrics),
        "rate_limit": o.get("rate_limit"),
        "replay": report.replay,
        "table": o.get("table"),
        "lake": str(report.lake_dir),
        "warehouse": str(report.warehouse_dir),
        "raw_prefix": o.get("raw_prefix"),
        "processed_key": o.get("processed_key"),
        "rejected_key": o.get("rejected_key"),
    }


# -- the command ----------------------------------------------------------------------------------


def _utc_datetime(text: str) -> datetime:
    """An argparse ``type``: an ISO-8601 time (UTC when it names no zone)."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO-8601 time") from exc
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def max_coins_arg(text: str) -> int | str:
    """An argparse ``type`` for ``--max-coins``: an integer in 1-MAX_COINS, or ``all``."""
    if text.strip().lower() == "all":
        return "all"
    try:
        return int_range(1, MAX_COINS)(text)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (give 1-{MAX_COINS} or 'all')") from exc


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


RUN_DESCRIPTION = """\
Run the pipeline once, end to end, on this machine: the real state machine under moto, the
lake in <local dir>/lake, a fakesnow warehouse in <local dir>/warehouse.

CoinGecko: without --offline or --replay, run calls the LIVE CoinGecko API
(https://api.coingecko.com/api/v3, or COINGECKO_BASE_URL; COINGECKO_API_KEY for a key).
--offline serves a synthetic market and --replay DIR recorded bodies from a local server.

Environment: COINGECKO_* (see the README), POWERTOOLS_LOG_LEVEL (-v logs; DEBUG honoured),
CRYPTO_ETL_LOCAL_DIR (the default of crypto-etl --local-dir DIR run; empty = unset).
"""

RUN_EXIT_CODES = """\
exit codes:
  0    the execution succeeded
  1    the execution failed (the failing state, its error and the alert are printed)
  2    bad arguments, paths or configuration: one line on stderr, nothing was started
  130  interrupted (Ctrl-C); the local services were stopped
"""


def register(sub: Any) -> None:
    """Add ``run`` to the CLI's sub-parsers."""
    run = sub.add_parser(
        "run",
        help="run the pipeline once, end to end (live CoinGecko API unless --offline/--replay)",
        description=RUN_DESCRIPTION,
        epilog=RUN_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
        type=int_range(1, MAX_COINS),
        default=None,
        help=f"with --offline only: the synthetic market's size (default {DEFAULT_OFFLINE_COINS})",
    )
    run.add_argument("--snapshot-id", help="snapshot id (default: local-<UTC timestamp>)")
    run.add_argument(
        "--as-of",
        type=_utc_datetime,
        metavar="ISO-TIME",
        help="with --offline: simulate the fetch at this UTC time; the synthetic market drifts"
        " with it (for demos and tests with history)",
    )
    run.add_argument(
        "--max-coins",
        type=max_coins_arg,
        help="stop after this many coins, or 'all': the whole market (default 1000;"
        " offline: --coins)",
    )
    run.add_argument(
        "--rate-limit",
        metavar="N/W",
        help="pace CoinGecko calls to N per W seconds, or 'off' (default: the plan's budget"
        " on CoinGecko's hosts; see COINGECKO_RATE_LIMIT). With --offline/--replay the local"
        " server also enforces it, in fixed windows",
    )
    run.add_argument(
        "--faults",
        metavar="SPEC",
        help="with --offline/--replay: faults the local server injects, e.g."
        " markets:page=2:503x3,global:429:retry-after=date (see the README's Fault injection)",
    )
    run.add_argument("--vs-currency", help="quote currency, 1-16 of a-z 0-9 _ - (default usd)")
    run.add_argument(
        "--per-page",
        type=int_range(1, 250),
        help="page size, 1-250 (default 250; --replay: the recording's page size)",
    )
    run.add_argument(
        "--json",
        action="store_true",
        help="print one JSON summary object on stdout (progress goes to stderr)",
    )
    run.add_argument(
        "-v", "--verbose", action="store_true", help="show the handlers' JSON logs (on stderr)"
    )
    run.set_defaults(func=run_cli)


def run_cli(args: argparse.Namespace, out: TextIO) -> int:
    """``crypto-etl run``: 0 when the execution succeeded, 1 when it failed.

    Bad options raise ValidationError/ConfigError before anything starts (the CLI: exit 2).
    """
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
        as_of=args.as_of,
        rate_limit=args.rate_limit,
        faults=args.faults,
    )
    as_json = bool(getattr(args, "json", False))
    report = run_pipeline(opts, sys.stderr if as_json else out)
    if as_json:
        print(json.dumps(summary_json(report), indent=2), file=out, flush=True)
    else:
        print_summary(report, out)
    return 0 if report.status == "SUCCEEDED" else 1
