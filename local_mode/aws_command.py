"""``crypto-etl aws run``: a smoke run of the pipeline deployed to AWS.

It reads the stack's ``StateMachineArn`` output (CloudFormation ``DescribeStacks``), starts one
execution, follows it with ``DescribeExecution`` and ``GetExecutionHistory`` (one progress line
per state change) until it ends or ``--timeout`` passes, and prints the result. It uses boto3's
usual credentials and region (``AWS_PROFILE``, ``AWS_REGION``, ``aws configure``/``sso login``).

Exit codes: 0 the execution succeeded; 1 it failed, timed out or was aborted, or it was still
running when ``--timeout`` passed (it is not stopped); 2 bad arguments or AWS configuration (no
credentials or region, stack or output missing, access refused); 130 interrupted (the execution
goes on).
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from functions.common.errors import ConfigError, ValidationError
from functions.common.keys import validate_snapshot_id
from local_mode.run_command import (
    TASK_STATES,
    error_message,
    execution_name,
    plural,
    state_summary,
    warehouse_after_failure,
)

DEFAULT_STACK_NAME = "CryptoEtl"
STATE_MACHINE_OUTPUT = "StateMachineArn"
# The state machine's own TimeoutSeconds (state_machine/definition.asl.json): by then it has ended.
DEFAULT_TIMEOUT_SECONDS = 3600.0
DEFAULT_POLL_SECONDS = 2.0
ENDED = ("SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED")
# Output fields worth a script's attention (the rest stays in ``output``).
COUNT_FIELDS = (
    "coin_count",
    "pages",
    "api_calls",
    "retries",
    "row_count",
    "rejected_count",
    "duplicate_count",
    "rows_inserted",
    "rows_replaced",
)

_sleep: Callable[[float], None] = time.sleep  # tests replace it to simulate Ctrl-C


@dataclass
class AwsRunResult:
    """What one ``aws run`` saw; ``to_json`` is the ``--json`` document.

    ``status`` is the execution's (SUCCEEDED, FAILED, TIMED_OUT, ABORTED) or RUNNING when
    ``--timeout`` passed first; ``duration_s`` is seconds from start to the last poll;
    ``failed_state`` is the pipeline state that failed (Extract/Transform/Load, else the state
    that raised the error); ``cause`` is the error message (Lambda's ``errorMessage`` when the
    cause is Lambda's error JSON).
    """

    status: str
    stack_name: str
    state_machine_arn: str
    execution_arn: str
    execution_name: str
    snapshot_id: str
    input: dict[str, Any]
    duration_s: float
    output: dict[str, Any] | None = None
    counts: dict[str, Any] = field(default_factory=dict)
    failed_state: str | None = None
    error: str | None = None
    cause: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from exc
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return value


def _stack_name(text: str) -> str:
    # CloudFormation's rule (as cdk_app/config.py checks ``stack_name``).
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]{0,127}", text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a stack name (a letter, then up to 127 letters, digits or '-')"
        )
    return text


def _snapshot_id(text: str) -> str:
    try:
        return validate_snapshot_id(text, field="--snapshot-id")
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(exc.problem) from exc


def _input_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"must be a JSON object such as '{{\"max_coins\": 100}}', not {type(value).__name__}"
        )
    return value


def _utc_stamp() -> str:
    # A random tail keeps two runs started in the same second apart (names must be unique).
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}"


def execution_plan(
    snapshot_id: str | None, extra_input: Mapping[str, Any] | None
) -> tuple[str, dict[str, Any]]:
    """The execution name and input for one run.

    The snapshot id is ``snapshot_id``, else ``extra_input["snapshot_id"]``, else
    ``snap-<UTC timestamp>-<4 hex>``; it always goes into the input. The execution name is that
    generated id, or ``<snapshot id>-<UTC timestamp>-<4 hex>`` with the id cut so the name fits
    80 characters. Raises ``ValidationError`` when the two ids differ or one is unsafe.
    """
    data = dict(extra_input or {})
    given = data.get("snapshot_id")
    if snapshot_id is not None and given is not None and given != snapshot_id:
        raise ValidationError(
            "--input", f"snapshot_id {given!r} differs from --snapshot-id {snapshot_id!r}"
        )
    chosen = snapshot_id if snapshot_id is not None else given
    stamp = _utc_stamp()
    if chosen is None:
        sid = name = f"snap-{stamp}"
    else:
        sid = validate_snapshot_id(chosen, field="--input snapshot_id")
        name = execution_name(sid, stamp)
    data["snapshot_id"] = sid
    return name, data


def _aws_error(exc: BaseException, action: str, where: str) -> ConfigError:
    """One readable line for a boto3 failure (credentials, region, access, network)."""
    from botocore.exceptions import (
        ClientError,
        NoCredentialsError,
        NoRegionError,
        PartialCredentialsError,
        ProfileNotFound,
    )

    if isinstance(exc, NoRegionError):
        return ConfigError(
            "AWS region", "none set: export AWS_REGION (or AWS_DEFAULT_REGION) or pass --region"
        )
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return ConfigError(
            "AWS credentials",
            f"{_one_line(exc)} (run `aws configure` or `aws sso login`, or set AWS_PROFILE)",
        )
    if isinstance(exc, ProfileNotFound):
        return ConfigError("AWS_PROFILE", _one_line(exc))
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return ConfigError(
            f"AWS {action}",
            f"{where}: {err.get('Code', '?')}: {_one_line(err.get('Message', exc))}",
        )
    return ConfigError(f"AWS {action}", f"{where}: {_one_line(exc)}")


def state_machine_arn(cfn: Any, stack_name: str, region: str) -> str:
    """The ``StateMachineArn`` output of ``stack_name``; ``ConfigError`` when absent."""
    from botocore.exceptions import BotoCoreError, ClientError

    where = f"stack {stack_name} in {region}"
    try:
        stacks = cfn.describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as exc:
        err = exc.response.get("Error", {})
        if err.get("Code") == "ValidationError" and "does not exist" in err.get("Message", ""):
            raise ConfigError(
                "--stack-name",
                f"no stack {stack_name} in {region} (deploy it with `make deploy`, or pass "
                "--stack-name / --region)",
            ) from None
        raise _aws_error(exc, "DescribeStacks", where) from None
    except BotoCoreError as exc:
        raise _aws_error(exc, "DescribeStacks", where) from None
    stack = stacks[0]
    outputs = {o["OutputKey"]: o.get("OutputValue") for o in stack.get("Outputs") or []}
    arn = outputs.get(STATE_MACHINE_OUTPUT)
    if not arn:
        have = ", ".join(sorted(outputs)) or "none"
        raise ConfigError(
            "--stack-name",
            f"{where} ({stack.get('StackStatus')}) has no {STATE_MACHINE_OUTPUT} output "
            f"(outputs: {have}); is it the crypto-etl stack?",
        )
    return str(arn)


def _history(sfn: Any, arn: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for page in sfn.get_paginator("get_execution_history").paginate(executionArn=arn):
        events.extend(page["events"])
    return events


def _state_of(ev: Mapping[str, Any], by_id: Mapping[int, Mapping[str, Any]]) -> str | None:
    cur: Mapping[str, Any] | None = ev
    while cur is not None:
        details = cur.get("stateEnteredEventDetails")
        if details:
            return str(details["name"])
        cur = by_id.get(cur.get("previousEventId", -1))
    return None


class _Progress:
    """Turns new history events into one line per state change."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.seen = 0
        self.entered: dict[str, datetime] = {}

    def feed(self, history: list[dict[str, Any]]) -> None:
        by_id = {e["id"]: e for e in history}
        for ev in history[self.seen :]:
            line = self._line(ev, by_id)
            if line:
                print(line, file=self.out, flush=True)
        self.seen = len(history)

    def _line(self, ev: Mapping[str, Any], by_id: Mapping[int, Mapping[str, Any]]) -> str | None:
        etype = ev["type"]
        if etype.endswith("StateEntered"):
            name = ev["stateEnteredEventDetails"]["name"]
            if name in TASK_STATES and name in self.entered:
                return None  # the extract's deadline loop: the state goes on
            self.entered[name] = ev["timestamp"]
            if name in TASK_STATES:
                return f"▶ {name} …"
            if name == "Notify failure":
                return "  → publishing the failure alert to the SNS topic"
            return None
        if etype.endswith("StateExited"):
            details = ev["stateExitedEventDetails"]
            name = details["name"]
            try:
                o = json.loads(details.get("output") or "null")
            except json.JSONDecodeError:
                o = None
            if name not in TASK_STATES or not isinstance(o, dict) or "error" in o:
                return None
            if name == "Extract" and o.get("done") is False:
                return (
                    f"    ↺ invocation {o.get('invocations')} stopped before page"
                    f" {o.get('next_page')} (Lambda deadline) with"
                    f" {plural(o.get('pages'), 'page')}; Extract continues"
                )
            took = ""
            if name in self.entered:
                took = f" {(ev['timestamp'] - self.entered[name]).total_seconds():.1f}s"
            return f"✓ {name}{took}  {state_summary(name, o)}"
        if etype in ("TaskFailed", "LambdaFunctionFailed"):
            details = ev.get("taskFailedEventDetails") or ev.get(
                "lambdaFunctionFailedEventDetails", {}
            )
            state = _state_of(ev, by_id) or "?"
            msg = _one_line(error_message(details.get("cause")) or "")
            return f"✗ {state}: {details.get('error')}: {msg}"
        return None


def _failed_state(history: list[dict[str, Any]]) -> str | None:
    """The pipeline's ``<State> failed`` Pass output names it; else the state that failed."""
    by_id = {e["id"]: e for e in history}
    for ev in reversed(history):
        details = ev.get("stateExitedEventDetails")
        name = (details or {}).get("name", "")
        if details and (name.endswith(" failed") or name == "Extract result invalid"):
            try:
                o = json.loads(details.get("output") or "null")
            except json.JSONDecodeError:
                o = None
            if isinstance(o, dict) and o.get("failed_state"):
                return str(o["failed_state"])
    for ev in reversed(history):
        if ev["type"].endswith("Failed") and not ev["type"].startswith("Execution"):
            return _state_of(ev, by_id)
    for ev in reversed(history):
        if ev["type"].endswith("StateEntered"):
            return str(ev["stateEnteredEventDetails"]["name"])
    return None


def run_on_aws(
    *,
    stack_name: str = DEFAULT_STACK_NAME,
    region: str | None = None,
    snapshot_id: str | None = None,
    extra_input: Mapping[str, Any] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_SECONDS,
    poll_s: float = DEFAULT_POLL_SECONDS,
    progress: TextIO | None = None,
) -> AwsRunResult:
    """Start one execution of the deployed state machine and follow it to its end.

    Progress lines go to ``progress``. Returns when the execution ends or ``timeout_s`` seconds
    pass (status RUNNING then; the execution is not stopped). Raises ``ConfigError`` for missing
    credentials/region, a missing stack or output, or a call AWS refused; ``ValidationError``
    for a bad snapshot id; ``KeyboardInterrupt`` propagates with the execution left running.
    """
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    progress = progress or sys.stdout
    name, payload = execution_plan(snapshot_id, extra_input)
    config = Config(connect_timeout=10, read_timeout=30, retries={"mode": "standard"})
    try:
        session = boto3.session.Session(region_name=region)
        cfn = session.client("cloudformation", config=config)
        sfn = session.client("stepfunctions", config=config)
    except (BotoCoreError, ClientError) as exc:
        raise _aws_error(exc, "client", "boto3 session") from None
    where_region = session.region_name or "?"
    sm_arn = state_machine_arn(cfn, stack_name, where_region)
    try:
        arn = sfn.start_execution(stateMachineArn=sm_arn, name=name, input=json.dumps(payload))[
            "executionArn"
        ]
    except (BotoCoreError, ClientError) as exc:
        raise _aws_error(exc, "StartExecution", sm_arn) from None
    print(f"Started {arn}", file=progress, flush=True)
    print(f"Execution input: {json.dumps(payload)}", file=progress, flush=True)
    started = time.monotonic()
    lines = _Progress(progress)
    try:
        while True:
            desc = sfn.describe_execution(executionArn=arn)
            history = _history(sfn, arn)
            lines.feed(history)
            status = desc["status"]
            if status in ENDED or time.monotonic() - started >= timeout_s:
                break
            _sleep(poll_s)
    except (BotoCoreError, ClientError) as exc:
        raise _aws_error(
            exc, "DescribeExecution", f"execution {arn} (started; the console shows it)"
        ) from None
    output = json.loads(desc["output"]) if desc.get("output") else None
    result = AwsRunResult(
        status=status,
        stack_name=stack_name,
        state_machine_arn=sm_arn,
        execution_arn=arn,
        execution_name=name,
        snapshot_id=payload["snapshot_id"],
        input=payload,
        duration_s=round(time.monotonic() - started, 3),
        output=output,
        counts={k: output[k] for k in COUNT_FIELDS if isinstance(output, dict) and k in output},
    )
    if status in ENDED and status != "SUCCEEDED":
        result.failed_state = _failed_state(history)
        result.error = desc.get("error")
        result.cause = error_message(desc.get("cause"))
    return result


def print_result(result: AwsRunResult, timeout_s: float, out: TextIO) -> None:
    """The human summary of ``result``."""
    print("", file=out)
    if result.status in ENDED:
        print(f"Execution {result.status} in {result.duration_s:.1f}s", file=out)
    else:
        print(
            f"Execution still {result.status} after --timeout {timeout_s:g}s; it was not stopped",
            file=out,
        )
    print(f"  execution     {result.execution_arn}", file=out)
    print(f"  snapshot      {result.snapshot_id}", file=out)
    c = result.counts
    if result.status == "SUCCEEDED":
        print(
            f"  coins fetched {c.get('coin_count')} ({plural(c.get('pages'), 'page')}, "
            f"{plural(c.get('api_calls'), 'API call')}, "
            f"{plural(c.get('retries'), 'retry', 'retries')})",
            file=out,
        )
        replaced = c.get("rows_replaced")
        print(
            f"  rows          {plural(c.get('row_count'), 'row')} for the snapshot "
            f"({f'replacing {replaced}' if replaced else 'new'}), "
            f"{c.get('rejected_count')} rejected, "
            f"{plural(c.get('duplicate_count'), 'duplicate')}",
            file=out,
        )
        o = result.output or {}
        if o.get("processed_key"):
            print(f"  processed     s3://{o.get('bucket')}/{o['processed_key']}", file=out)
    elif result.status in ENDED:
        print(f"  failed state  {result.failed_state}", file=out)
        print(f"  error         {result.error}: {_one_line(result.cause or '')}", file=out)
        if (after := warehouse_after_failure(result.failed_state, result.cause)) is not None:
            print(f"  warehouse     {after}", file=out)
    else:
        print(
            "  follow it     aws stepfunctions describe-execution --execution-arn "
            f"{result.execution_arn}",
            file=out,
        )


def _cmd_aws_run(args: argparse.Namespace, out: TextIO) -> int:
    progress = sys.stderr if args.json else out
    try:
        result = run_on_aws(
            stack_name=args.stack_name,
            region=args.region,
            snapshot_id=args.snapshot_id,
            extra_input=args.input,
            timeout_s=args.timeout,
            poll_s=args.poll_interval,
            progress=progress,
        )
    except KeyboardInterrupt:
        print(
            "interrupted: stopped waiting; an execution already started (the 'Started' line) "
            "goes on in AWS",
            file=sys.stderr,
        )
        return 130
    if args.json:
        print(json.dumps(result.to_json(), default=str), file=out, flush=True)
    else:
        print_result(result, args.timeout, out)
    return 0 if result.status == "SUCCEEDED" else 1


def register(sub: Any) -> None:
    """Add ``aws`` (with ``aws run``) to the CLI's sub-parsers."""
    aws = sub.add_parser(
        "aws",
        help="the pipeline deployed to AWS (uses your AWS credentials)",
        description="Commands against the pipeline deployed with `make deploy` (real AWS).",
    )
    aws_sub = aws.add_subparsers(dest="aws_command", required=True)
    run = aws_sub.add_parser(
        "run",
        help="start an execution of the deployed state machine and wait for its result",
        description=(
            "Reads the stack's StateMachineArn output, starts one execution (it calls the live "
            "CoinGecko API and loads your Snowflake account), prints a line per state and the "
            "result. Exit codes: 0 succeeded; 1 failed, timed out, aborted, or still running "
            "at --timeout (not stopped); 2 bad arguments or AWS configuration; 130 interrupted "
            "(the execution goes on)."
        ),
    )
    run.add_argument(
        "--stack-name",
        type=_stack_name,
        default=DEFAULT_STACK_NAME,
        help=f"the deployed stack (default {DEFAULT_STACK_NAME})",
    )
    run.add_argument("--region", help="AWS region (default: AWS_REGION / your AWS config)")
    run.add_argument(
        "--snapshot-id",
        type=_snapshot_id,
        help="snapshot id (the same id again replaces that snapshot; "
        "default snap-<UTC time>-<4 hex>)",
    )
    run.add_argument(
        "--input",
        type=_input_object,
        metavar="JSON",
        help='execution input, e.g. \'{"max_coins": 100, "vs_currency": "eur"}\'',
    )
    run.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=DEFAULT_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help=f"stop waiting after this long (default {DEFAULT_TIMEOUT_SECONDS:g}, the state "
        "machine's own limit); the execution is not stopped",
    )
    run.add_argument(
        "--poll-interval",
        type=_positive_seconds,
        default=DEFAULT_POLL_SECONDS,
        metavar="SECONDS",
        help=f"seconds between status checks (default {DEFAULT_POLL_SECONDS:g})",
    )
    run.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (status, snapshot, counts, error) on stdout; "
        "progress goes to stderr",
    )
    run.set_defaults(func=_cmd_aws_run)
