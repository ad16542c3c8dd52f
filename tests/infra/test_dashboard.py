"""The CloudWatch dashboard in the synthesized template draws what the functions really emit.

The dashboard body is parsed from the template (a JSON string joined with CloudFormation
references) and every metric a widget names is checked against
``functions.common.observability``: same names, same namespace, same dimension names, and the
values the functions' environment gives them (``PIPELINE_NAME``, ``POWERTOOLS_SERVICE_NAME``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cdk_app.monitoring import CUSTOM_WIDGETS
from functions.common import observability as obs
from tests.infra.conftest import Synth, flatten, synthesize

pytestmark = pytest.mark.infra

AWS_NAMESPACES = {"AWS/States", "AWS/Lambda"}


@dataclass(frozen=True)
class DrawnMetric:
    """One metric a widget draws: a plain metric, or the schema of a SEARCH expression."""

    widget: str
    namespace: str
    name: str
    dimensions: dict[str, str]  # for a SEARCH: the dimension names, with the values it filters
    search: bool = False


def _body(synth: Synth) -> dict[str, Any]:
    (dashboard,) = synth.resources("AWS::CloudWatch::Dashboard").values()
    body = dashboard["Properties"]["DashboardBody"]
    if isinstance(body, str):
        return json.loads(body)
    # References sit inside JSON strings; flatten renders them as <LogicalId> / <Id.Attr>.
    return json.loads(flatten(body))


# SEARCH('{Namespace,Dim1,Dim2} MetricName="X" Dim1="v"', 'Sum', 3600)
SEARCH = re.compile(r"SEARCH\('\{(?P<schema>[^}]*)\}(?P<terms>[^']*)'")
TERM = re.compile(r'(\w+)="([^"]*)"')


def _drawn(body: dict[str, Any]) -> list[DrawnMetric]:
    found: list[DrawnMetric] = []
    for widget in body["widgets"]:
        props = widget["properties"]
        title = props.get("title", "")
        for line in props.get("metrics", []):
            if isinstance(line[0], dict):  # an expression
                match = SEARCH.search(line[0]["expression"])
                if match:
                    namespace, *dims = match["schema"].split(",")
                    terms = dict(TERM.findall(match["terms"]))
                    name = terms.pop("MetricName")
                    assert set(terms) <= set(dims), line
                    filters = {d: terms.get(d, "*") for d in dims}
                    found.append(DrawnMetric(title, namespace, name, filters, search=True))
                continue
            plain = [part for part in line if not isinstance(part, dict)]
            assert "." not in plain, f"{title}: shorthand metric rows are not parsed here"
            namespace, name, *pairs = plain
            dims = dict(zip(pairs[::2], pairs[1::2], strict=True))
            found.append(DrawnMetric(title, namespace, name, dims))
    return found


def _environment(synth: Synth) -> dict[str, dict[str, Any]]:
    return {
        name: synth.data["Resources"][synth.logical_id(fn)]["Properties"]["Environment"][
            "Variables"
        ]
        for name, fn in synth.stack.functions.functions.items()
    }


def test_one_dashboard_named_after_the_stack(default_synth: Synth) -> None:
    (dashboard,) = default_synth.resources("AWS::CloudWatch::Dashboard").values()
    assert dashboard["Properties"]["DashboardName"] == "CryptoEtl-pipeline"
    output = flatten(default_synth.data["Outputs"]["DashboardUrl"]["Value"])
    assert output.endswith("#dashboards/dashboard/CryptoEtl-pipeline"), output


def test_every_custom_metric_drawn_is_emitted_with_that_namespace_and_those_dimensions(
    default_synth: Synth,
) -> None:
    drawn = _drawn(_body(default_synth))
    custom = [m for m in drawn if m.namespace not in AWS_NAMESPACES]
    assert custom
    for m in custom:
        where = f"{m.widget}: {m.name}"
        assert m.namespace == obs.NAMESPACE_DEFAULT, where
        assert m.name in obs.EMITTED_METRICS, where
        assert sorted(m.dimensions) == sorted(obs.metric_dimensions(m.name)), where
        if m.name != obs.COLD_START:
            assert m.dimensions[obs.DIM_PIPELINE] == "CryptoEtl", where  # the stack's name
            assert m.dimensions[obs.DIM_VS_CURRENCY] == "usd", where
    # Reason varies, so RowsRejectedByReason is the one drawn by a SEARCH.
    assert {m.name for m in custom if m.search} == {obs.ROWS_REJECTED_BY_REASON}


def test_every_emitted_metric_is_on_the_dashboard(default_synth: Synth) -> None:
    drawn = {m.name for m in _drawn(_body(default_synth)) if m.namespace == obs.NAMESPACE_DEFAULT}
    assert set(obs.EMITTED_METRICS) - drawn == set()
    # The table in monitoring.py covers every application metric but the two drawn otherwise.
    tabled = {name for lines in CUSTOM_WIDGETS.values() for name, _, _ in lines}
    assert set(obs.EMITTED_METRICS) - tabled == {obs.ROWS_REJECTED_BY_REASON, obs.COLD_START}


def test_the_functions_emit_into_the_namespace_and_dimensions_the_dashboard_reads(
    default_synth: Synth,
) -> None:
    drawn = _drawn(_body(default_synth))
    pipelines = {m.dimensions[obs.DIM_PIPELINE] for m in drawn if obs.DIM_PIPELINE in m.dimensions}
    cold = [m for m in drawn if m.name == obs.COLD_START]
    stack = default_synth.stack
    for name, env in _environment(default_synth).items():
        # What the runtime module reads from this environment is what the dashboard filters on.
        assert obs.namespace(env) == obs.NAMESPACE_DEFAULT, name
        assert {obs.pipeline_name(env)} == pipelines == {stack.stack_name}, name
        function_ref = f"<{default_synth.logical_id(stack.functions.functions[name])}>"
        (line,) = [m for m in cold if m.dimensions["function_name"] == function_ref]
        assert line.dimensions["service"] == env["POWERTOOLS_SERVICE_NAME"], name


def test_step_functions_and_lambda_metrics_name_this_stacks_resources(
    default_synth: Synth,
) -> None:
    drawn = _drawn(_body(default_synth))
    stack = default_synth.stack
    sm = f"<{default_synth.logical_id(stack.pipeline.state_machine)}>"
    states = {m.name for m in drawn if m.namespace == "AWS/States"}
    assert {
        "ExecutionsSucceeded",
        "ExecutionsFailed",
        "ExecutionsTimedOut",
        "ExecutionsAborted",
        "ExecutionTime",
    } <= states
    assert all(
        m.dimensions == {"StateMachineArn": sm} for m in drawn if m.namespace == "AWS/States"
    )
    per_function = {
        (m.name, m.dimensions["FunctionName"]) for m in drawn if m.namespace == "AWS/Lambda"
    }
    for fn in stack.functions.functions.values():
        ref = f"<{default_synth.logical_id(fn)}>"
        assert {("Errors", ref), ("Throttles", ref), ("Duration", ref)} <= per_function


def test_the_alarms_are_on_the_dashboard(default_synth: Synth) -> None:
    widgets = _body(default_synth)["widgets"]
    alarm_arns = {
        f"<{alarm_id}.Arn>" for alarm_id in default_synth.resources("AWS::CloudWatch::Alarm")
    }
    assert len(alarm_arns) == 7
    (status,) = [w for w in widgets if w["type"] == "alarm"]
    assert set(status["properties"]["alarms"]) == alarm_arns
    # The paging alarms also get a graph with their threshold.
    alerting = default_synth.stack.alerting
    graphed = {
        arn for w in widgets for arn in w["properties"].get("annotations", {}).get("alarms", [])
    }
    paging = {
        f"<{default_synth.logical_id(alerting.alarms[alarm_id])}.Arn>"
        for alarm_id in alerting.paging
    }
    assert graphed == paging and len(paging) == 3


def test_widgets_tile_the_24_column_grid_without_overlap(default_synth: Synth) -> None:
    cells: set[tuple[int, int]] = set()
    for w in _body(default_synth)["widgets"]:
        assert w["x"] + w["width"] <= 24, w["properties"].get("title")
        mine = {
            (x, y)
            for x in range(w["x"], w["x"] + w["width"])
            for y in range(w["y"], w["y"] + w["height"])
        }
        assert not cells & mine, w["properties"].get("title")
        cells |= mine


def _currencies(synth: Synth) -> set[str]:
    drawn = _drawn(_body(synth))
    return {m.dimensions[obs.DIM_VS_CURRENCY] for m in drawn if obs.DIM_VS_CURRENCY in m.dimensions}


def test_the_currency_follows_the_scheduled_input(options_synth: Synth) -> None:
    # options_synth schedules {"vs_currency": "eur"} and sets no dashboard_vs_currency.
    assert _currencies(options_synth) == {"eur"}


def test_dashboard_vs_currency_context_wins_and_is_lower_cased(tmp_path: Path) -> None:
    synth = synthesize(tmp_path, dashboard_vs_currency="GBP")
    assert _currencies(synth) == {"gbp"}


@pytest.mark.parametrize("bad", ["us d", "x" * 17])
def test_a_currency_that_is_not_a_code_is_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="dashboard_vs_currency"):
        synthesize(tmp_path, dashboard_vs_currency=bad)
