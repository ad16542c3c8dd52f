"""The metrics a local run emits (EMF objects captured from the real handlers under moto)."""

from __future__ import annotations

import io

from functions.common import observability as obs
from local_mode.run_command import RunOptions, metrics_line, run_pipeline, summary_json
from state_machine.local_runner import FUNCTION_TIMEOUTS


def _values(report):
    """{(metric name, frozen dimensions): value} over the run's EMF objects."""
    out = {}
    for blob in report.metrics:
        for name, value, dims in obs.emf_values(blob):
            out[(name, tuple(sorted(dims.items())))] = value
    return out


def test_a_known_offline_run_emits_the_expected_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_NAME", "CryptoEtl-test")
    report = run_pipeline(
        RunOptions(local_dir=tmp_path / "l", offline=True, coins=300, snapshot_id="metrics-1"),
        io.StringIO(),
    )
    assert report.status == "SUCCEEDED", report.error_message
    dims = (("Pipeline", "CryptoEtl-test"), ("VsCurrency", "usd"))
    values = _values(report)
    expected = {
        "ExtractPages": 2,  # 250 + 50 coins
        "ExtractCoins": 300,
        "ApiCalls": 3,  # /global and two pages
        "ApiRetries": 0,
        "RateLimited429s": 0,
        "RateLimitWaitSeconds": 0,
        "GlobalAvailable": 1,
        "ExtractInvocations": 1,
        "RowsIn": 300,
        "RowsOut": 300,
        "RowsRejected": 0,
        "Duplicates": 0,
        "QualityChecksFailed": 0,
        "RowsInserted": 300,
        "RowsReplaced": 0,
        "ExecutionSucceeded": 1,
    }
    assert {name: values[(name, dims)] for name in expected} == expected
    coverage = report.output["coverage"]
    assert values[("CoinCoveragePct", dims)] == coverage["coin_pct"]
    assert values[("MarketCapCoveragePct", dims)] == coverage["market_cap_pct"]
    assert 0 < values[("LoadSeconds", dims)] <= values[("ExecutionSeconds", dims)]
    names = {name for name, _ in values}
    assert names <= set(obs.EMITTED_METRICS)
    assert "ExecutionFailed" not in names and "RowsRejectedByReason" not in names  # none rejected
    for blob in report.metrics:
        (directive,) = blob["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == "CryptoEtl"
        for metric in directive["Metrics"]:
            assert metric["Unit"] == obs.UNITS[metric["Name"]]
            assert tuple(directive["Dimensions"][0]) == obs.metric_dimensions(metric["Name"])

    line = metrics_line(report.metrics)
    assert line is not None and line.startswith("CryptoEtl: 300 coins, 3 calls,")
    assert "300 rows out" in line and "300 inserted" in line and "1 succeeded" in line
    assert summary_json(report)["metrics"]["RowsInserted"] == 300


def test_a_rerun_replaces_rows_and_says_so(tmp_path):
    opts = RunOptions(local_dir=tmp_path / "l", offline=True, coins=120, snapshot_id="again")
    run_pipeline(opts, io.StringIO())
    second = run_pipeline(opts, io.StringIO())
    totals = obs.emf_totals(second.metrics)
    assert (totals["RowsInserted"], totals["RowsReplaced"]) == (0, 120)


def test_the_deadline_loop_emits_the_extract_totals_once(tmp_path):
    report = run_pipeline(
        RunOptions(
            local_dir=tmp_path / "l",
            offline=True,
            coins=1000,
            max_coins="all",
            per_page=100,
            snapshot_id="looped",
            rate_limit="4/1",
            function_timeouts={**FUNCTION_TIMEOUTS, "extract": 3.0},
            extra_env={
                "COINGECKO_TIMEOUT_SECONDS": "0.5",
                "EXTRACT_DEADLINE_MARGIN_SECONDS": "0.5",
            },
        ),
        io.StringIO(),
    )
    assert report.status == "SUCCEEDED", report.error_message
    o = report.output
    assert o["invocations"] >= 2
    extract_blobs = [b for b in report.metrics if "ExtractCoins" in b]
    assert len(extract_blobs) == 1  # only the invocation that finished
    totals = obs.emf_totals(report.metrics)
    assert totals["ExtractInvocations"] == o["invocations"]
    assert totals["ApiCalls"] == o["api_calls"] == 1 + 10 + 1  # /global, pages, empty page
    assert totals["RateLimitWaitSeconds"] == o["pacing_wait_seconds"] > 0


def test_a_failed_run_emits_execution_failed(tmp_path):
    report = run_pipeline(
        RunOptions(
            local_dir=tmp_path / "l",
            offline=True,
            coins=300,
            snapshot_id="fails",
            faults="markets:page=1:error-object:always",
            extra_env={"COINGECKO_MAX_RETRIES": "0"},  # fail at once
        ),
        io.StringIO(),
    )
    assert (report.status, report.failed_state) == ("FAILED", "Extract")
    totals = obs.emf_totals(report.metrics)
    assert totals["ExecutionFailed"] == 1 and totals["ExecutionSeconds"] >= 0
    assert "ExecutionSucceeded" not in totals and "ExtractCoins" not in totals
    assert "1 failed" in (metrics_line(report.metrics) or "")
