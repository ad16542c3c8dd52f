"""Metric names, EMF output, logging context and tracing wiring of the three Lambdas."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

from functions.common import observability as obs
from functions.common.context import LocalLambdaContext
from functions.extract import handler as extract
from functions.load import handler as load
from functions.transform import handler as transform

REPO_ROOT = Path(__file__).resolve().parents[2]

CONTRACT = {
    "ExtractPages": "Count",
    "ExtractCoins": "Count",
    "ApiCalls": "Count",
    "ApiRetries": "Count",
    "RateLimited429s": "Count",
    "RateLimitWaitSeconds": "Seconds",
    "GlobalAvailable": "Count",
    "ExtractInvocations": "Count",
    "RowsIn": "Count",
    "RowsOut": "Count",
    "RowsRejected": "Count",
    "RowsRejectedByReason": "Count",
    "Duplicates": "Count",
    "CoinCoveragePct": "Percent",
    "MarketCapCoveragePct": "Percent",
    "QualityChecksFailed": "Count",
    "RowsInserted": "Count",
    "RowsReplaced": "Count",
    "LoadSeconds": "Seconds",
    "ExecutionSeconds": "Seconds",
    "ExecutionSucceeded": "Count",
    "ExecutionFailed": "Count",
    "ColdStart": "Count",
}


def test_the_names_and_units_are_the_shared_contract() -> None:
    assert obs.UNITS == CONTRACT
    assert set(obs.EMITTED_METRICS) == set(CONTRACT)
    assert obs.NAMESPACE_DEFAULT == "CryptoEtl"
    assert obs.metric_dimensions("RowsOut") == ("Pipeline", "VsCurrency")
    assert obs.metric_dimensions("RowsRejectedByReason") == ("Pipeline", "VsCurrency", "Reason")
    assert obs.metric_dimensions("ColdStart") == ("function_name", "service")
    with pytest.raises(KeyError):
        obs.metric_dimensions("Nope")


def test_namespace_and_pipeline_come_from_the_environment() -> None:
    assert obs.namespace({}) == "CryptoEtl" and obs.pipeline_name({}) == "crypto-etl"
    assert obs.namespace({"POWERTOOLS_METRICS_NAMESPACE": " "}) == "CryptoEtl"
    env = {"POWERTOOLS_METRICS_NAMESPACE": "Ops", "PIPELINE_NAME": "CryptoEtl-prod"}
    assert (obs.namespace(env), obs.pipeline_name(env)) == ("Ops", "CryptoEtl-prod")


def _transform_out(**over):
    out = {
        "vs_currency": "EUR",
        "row_count": 95,
        "rejected_count": 7,
        "duplicate_count": 1,
        "coverage": {"coin_pct": 95.0, "market_cap_pct": None},
        "quality": {
            "rows_in": 103,
            "failed_checks": ["dominance_sum_le_100"],
            "rejected_by_reason": {"a": 1, "b": 2, "c": 1, "d": 1, "e": 1, "f": 1},
        },
    }
    return {**out, **over}


def test_transform_metrics_with_reasons_as_their_own_emf_objects(monkeypatch) -> None:
    monkeypatch.setenv("PIPELINE_NAME", "p1")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "TestNs")
    with obs.capture_emf() as blobs:
        obs.start_invocation(transform.metrics)
        transform.emit_metrics(_transform_out())
        transform.metrics.flush_metrics()
    values = [v for blob in blobs for v in obs.emf_values(blob)]
    main = {name: value for name, value, dims in values if "Reason" not in dims}
    assert main == {
        "RowsIn": 103,
        "RowsOut": 95,
        "RowsRejected": 7,
        "Duplicates": 1,
        "CoinCoveragePct": 95.0,
        "QualityChecksFailed": 1,
    }  # no MarketCapCoveragePct: /global gave no total
    reasons = {dims["Reason"]: v for name, v, dims in values if name == "RowsRejectedByReason"}
    assert reasons == {"b": 2, "a": 1, "c": 1, "d": 1, "e": 1}  # the top 5, ties by name
    for blob in blobs:
        assert blob["Pipeline"] == "p1" and blob["VsCurrency"] == "eur"
        (directive,) = blob["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == "TestNs"
        assert "service" not in directive["Dimensions"][0]
        units = {m["Name"]: m["Unit"] for m in directive["Metrics"]}
        assert all(CONTRACT[n] == u for n, u in units.items())


def test_an_unfinished_extract_invocation_emits_nothing() -> None:
    with obs.capture_emf() as blobs:
        obs.start_invocation(extract.metrics)
        extract.emit_metrics({"done": False, "pages": 3, "api_calls": 3, "coin_count": 750})
        extract.metrics.flush_metrics()
    assert blobs == []


def test_the_finishing_extract_invocation_emits_the_run_totals() -> None:
    out = {
        "done": True,
        "vs_currency": "usd",
        "pages": 5,
        "coin_count": 1000,
        "api_calls": 9,
        "retries": 3,
        "rate_limited": 2,
        "pacing_wait_seconds": 12.5,
        "global_key": None,
        "invocations": 2,
    }
    with obs.capture_emf() as blobs:
        obs.start_invocation(extract.metrics)
        extract.emit_metrics(out)
        extract.metrics.flush_metrics()
    assert obs.emf_totals(blobs) == {
        "ExtractPages": 5,
        "ExtractCoins": 1000,
        "ApiCalls": 9,
        "ApiRetries": 3,
        "RateLimited429s": 2,
        "RateLimitWaitSeconds": 12.5,
        "GlobalAvailable": 0,
        "ExtractInvocations": 2,
    }


def test_record_failure_emits_execution_failed_even_when_recording_fails(
    monkeypatch, lambda_context
) -> None:
    # No SNOWFLAKE_* settings: recording raises ConfigError, the metric still goes out.
    for name in list(os.environ):
        if name.startswith("SNOWFLAKE_"):
            monkeypatch.delenv(name)
    event = {
        "action": "record_failure",
        "failed_state": "Transform",
        "error": {"Error": "DataQualityError", "Cause": "gate"},
        "execution": {"name": "snap-9", "id": "arn:x", "start_time": "2026-01-01T00:00:00Z"},
        "state_input": {"snapshot_id": "snap-9", "vs_currency": "gbp"},
    }
    with obs.capture_emf() as blobs, pytest.raises(Exception):  # noqa: B017 - any config error
        load.handler(event, lambda_context)
    totals = obs.emf_totals(blobs)
    assert totals["ExecutionFailed"] == 1
    assert totals["ExecutionSeconds"] > 0  # from start_time
    assert {b.get("VsCurrency") for b in blobs if "ExecutionFailed" in b} == {"gbp"}


def test_emf_outside_lambda_without_a_capture_goes_nowhere(monkeypatch, capsys) -> None:
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)
    obs.emit_emf({"_aws": {}, "x": 1})
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "crypto-etl-extract")
    obs.emit_emf({"_aws": {}, "x": 1})
    assert json.loads(capsys.readouterr().out) == {"_aws": {}, "x": 1}
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    obs.emit_emf({"_aws": {}, "x": 1})
    assert capsys.readouterr().out == ""


def test_log_lines_carry_the_snapshot_id_as_correlation_id(monkeypatch, tmp_path) -> None:
    buf = io.StringIO()
    stream_handler = load.logger.registered_handler
    old = stream_handler.setStream(buf)
    monkeypatch.setenv("LAKE_LOCAL_DIR", str(tmp_path))
    try:
        with obs.capture_emf(), pytest.raises(Exception):  # noqa: B017 - no processed file
            load.handler({"snapshot_id": "snap-42", "bucket": "nope"}, None)  # None: a stand-in
        load.logger.info("after")  # the handler's keys stay until the next invocation
    finally:
        stream_handler.setStream(old)
    (line,) = [json.loads(x) for x in buf.getvalue().splitlines()]
    assert line["correlation_id"] == "snap-42"
    assert line["function_name"] == LocalLambdaContext().function_name


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"LAMBDA_TASK_ROOT": "/var/task"},
        {"LAMBDA_TASK_ROOT": "/var/task", "POWERTOOLS_TRACE_DISABLED": "true"},
        {"LAMBDA_TASK_ROOT": "/var/task", "POWERTOOLS_TRACE_DISABLED": "0"},
        {"LAMBDA_TASK_ROOT": "/var/task", "AWS_SAM_LOCAL": "true"},
        {"POWERTOOLS_TRACE_DISABLED": "false"},
    ],
)
def test_tracing_is_on_exactly_where_powertools_turns_it_on(monkeypatch, env) -> None:
    from aws_lambda_powertools.tracing.tracer import Tracer

    for name in ("LAMBDA_TASK_ROOT", "POWERTOOLS_TRACE_DISABLED", "AWS_SAM_LOCAL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert obs.tracing_enabled(os.environ) is not bool(Tracer._is_tracer_disabled())


def test_locally_the_handlers_never_import_the_xray_sdk() -> None:
    code = (
        "import sys, functions.extract.handler as e, functions.transform.handler as t,"
        " functions.load.handler as l;"
        "print(type(e.tracer).__name__, 'aws_xray_sdk' in sys.modules,"
        " e.fetch_markets.__module__)"
    )
    env = {k: v for k, v in os.environ.items() if k != "LAMBDA_TASK_ROOT"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert out.stdout.split() == ["NullTracer", "False", "functions.extract.paging"], out.stderr


def test_bundles_carry_the_xray_sdk_at_the_installed_version() -> None:
    from cdk_app.bundling import FUNCTION_NAMES, REQUIREMENTS

    pin = f"aws-xray-sdk=={metadata.version('aws-xray-sdk')}"
    assert all(pin in REQUIREMENTS[name] for name in FUNCTION_NAMES)


TRACED_RUN = textwrap.dedent(
    """
    import json, sys
    from local_mode.replay_server import ReplayServer
    from functions.common.context import LocalLambdaContext
    import functions.extract.handler as extract
    from aws_xray_sdk.core import patcher

    print("PATCHED", json.dumps(sorted(patcher._PATCHED_MODULES)))
    with ReplayServer.synthetic(30) as server:
        import os
        os.environ["COINGECKO_BASE_URL"] = server.base_url
        event = {"input": {"max_coins": 30, "snapshot_id": "traced-1"},
                 "execution": {"name": "x1", "id": "arn:x1", "start_time": "2026-01-01T00:00:00Z"}}
        out = extract.handler(event, LocalLambdaContext(function_name="extract"))
    print("COINS", out["coin_count"])
    """
)


def test_on_lambda_the_handlers_send_xray_subsegments_and_print_emf(tmp_path) -> None:
    """A real X-Ray SDK run: subsegments go to a UDP 'daemon' on 127.0.0.1 (this test)."""
    daemon = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    daemon.bind(("127.0.0.1", 0))
    daemon.settimeout(0.5)
    port = daemon.getsockname()[1]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("COINGECKO_", "SNOWFLAKE"))},
        "LAMBDA_TASK_ROOT": str(REPO_ROOT),
        "AWS_LAMBDA_FUNCTION_NAME": "crypto-etl-extract",
        "POWERTOOLS_TRACE_DISABLED": "false",
        "_X_AMZN_TRACE_ID": "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;"
        "Sampled=1",
        "AWS_XRAY_DAEMON_ADDRESS": f"127.0.0.1:{port}",
        "LAKE_LOCAL_DIR": str(tmp_path / "lake"),
        "LAKE_BUCKET": "crypto-etl-local",
        "COINGECKO_API_PLAN": "public",
        "POWERTOOLS_LOG_LEVEL": "WARNING",
        "TMPDIR": str(tmp_path),
    }
    try:
        run = subprocess.run(
            [sys.executable, "-c", TRACED_RUN],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        docs = []
        while True:
            try:
                packet = daemon.recv(65536).decode()
            except TimeoutError:
                break
            docs.append(json.loads(packet.split("\n", 1)[1]))
    finally:
        daemon.close()
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    assert set(json.loads(lines[0].removeprefix("PATCHED "))) >= {"requests", "botocore"}
    assert "COINS 30" in lines
    emf = [json.loads(x) for x in lines if x.startswith('{"_aws"')]
    assert obs.emf_totals(emf)["ExtractCoins"] == 30  # printed on stdout, as on Lambda

    names = [d["name"] for d in docs]
    assert {
        "## handler",
        "## functions.extract.paging.fetch_markets",
        "## functions.extract.handler._fetch_global",
    } <= set(names), names
    handler_doc = next(d for d in docs if d["name"] == "## handler")
    assert handler_doc["annotations"]["snapshot_id"] == "traced-1"
    http = [d for d in docs if d.get("namespace") == "remote" and "http" in d]
    urls = [d["http"]["request"]["url"] for d in http]
    assert any("/coins/markets" in u for u in urls) and any(u.endswith("/global") for u in urls)
