"""The CloudWatch dashboard: did the last runs succeed, how complete were they, how long did they
take, how close are we to CoinGecko's rate limit; the functions' health and the alarms.

Three kinds of metric (names from the CloudWatch user guide pages "Monitoring Step Functions
metrics using CloudWatch" and "Using CloudWatch metrics with Lambda"):

* ``AWS/States`` by ``StateMachineArn``: ExecutionsSucceeded/Failed/TimedOut/Aborted (count) and
  ExecutionTime (milliseconds), every execution whatever its currency;
* ``AWS/Lambda`` by ``FunctionName``: Errors, Throttles (count) and Duration (milliseconds) of
  each function;
* the pipeline's own, in ``functions.common.observability``'s namespace (``CryptoEtl``): the
  Embedded Metric Format objects the functions print, with the dimensions ``Pipeline`` (the
  stack's name, the functions' ``PIPELINE_NAME``) and ``VsCurrency`` (context
  ``dashboard_vs_currency``, default the scheduled input's ``vs_currency``, else ``usd``).
  ``RowsRejectedByReason`` adds ``Reason`` (drawn with a SEARCH expression, one line per
  reason); Powertools' ``ColdStart`` has ``function_name`` and ``service`` instead.

Each run emits its figures once (the Extract's on its last invocation, the Transform's and the
Load's once per execution), so a graph point is the SUM over ``PERIOD`` = one hour: one run's
figures as long as a currency runs at most once an hour. Gauges (coverage %, /global available)
show the minimum, durations the maximum. The dashboard opens on the last ``DEFAULT_RANGE``.
"""

from __future__ import annotations

from collections.abc import Mapping

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from functions.common import observability as obs

PERIOD = cdk.Duration.hours(1)
DEFAULT_RANGE = cdk.Duration.days(7)
WIDTH = 24  # CloudWatch dashboards are 24 units wide
HEIGHT = 6

# The custom metrics, their statistic over PERIOD, and the widget that draws them (title ->
# [(metric, statistic, label)]). Every name comes from observability, so a renamed metric
# cannot leave a dashboard line that never gets data (tests/infra/test_dashboard.py).
CUSTOM_WIDGETS: dict[str, list[tuple[str, str, str]]] = {
    # Beside the Step Functions executions (first row).
    "Execution outcome": [
        (obs.EXECUTION_SUCCEEDED, "Sum", "succeeded"),
        (obs.EXECUTION_FAILED, "Sum", "failed"),
    ],
    "Execution duration (seconds)": [
        (obs.EXECUTION_SECONDS, "Maximum", "extract start to load end"),
    ],
    # The runs' figures (two rows of four).
    "Coins per snapshot": [
        (obs.EXTRACT_COINS, "Sum", "coins fetched"),
        (obs.ROWS_IN, "Sum", "rows into transform"),
        (obs.ROWS_OUT, "Sum", "rows out of transform"),
        (obs.ROWS_INSERTED, "Sum", "rows inserted (load)"),
        (obs.ROWS_REPLACED, "Sum", "rows replaced (load)"),
    ],
    "Coverage vs CoinGecko /global (%)": [
        (obs.COIN_COVERAGE_PCT, "Minimum", "coins covered %"),
        (obs.MARKET_CAP_COVERAGE_PCT, "Minimum", "market cap covered %"),
    ],
    "Rejected rows and quality": [
        (obs.ROWS_REJECTED, "Sum", "rows rejected"),
        (obs.DUPLICATES, "Sum", "duplicates dropped"),
        (obs.QUALITY_CHECKS_FAILED, "Sum", "quality checks failed"),
    ],
    "CoinGecko calls, retries and 429s": [
        (obs.API_CALLS, "Sum", "API calls"),
        (obs.API_RETRIES, "Sum", "retries"),
        (obs.RATE_LIMITED_429S, "Sum", "429s received"),
        (obs.EXTRACT_PAGES, "Sum", "pages"),
        (obs.EXTRACT_INVOCATIONS, "Sum", "extract invocations"),
    ],
    "Rate-limit wait (seconds)": [
        (obs.RATE_LIMIT_WAIT_SECONDS, "Sum", "seconds waited for the rate limit"),
    ],
    "/global available (1 = yes)": [
        (obs.GLOBAL_AVAILABLE, "Minimum", "/global available"),
    ],
    "Load seconds": [
        (obs.LOAD_SECONDS, "Maximum", "load seconds"),
    ],
}
# Drawn by expressions, not in CUSTOM_WIDGETS: one line per Reason / per function.
BY_REASON_TITLE = "Rejected rows by reason (top reasons)"
COLD_START_TITLE = "Cold starts"

LAMBDA_METRICS: tuple[tuple[str, str], ...] = (
    ("Errors", "Sum"),
    ("Throttles", "Sum"),
    ("Duration", "Maximum"),
)


class Monitoring(Construct):
    """One ``AWS::CloudWatch::Dashboard`` named ``<pipeline name>-pipeline``."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        state_machine: sfn.IStateMachine,
        functions: Mapping[str, lambda_.IFunction],
        service_names: Mapping[str, str],
        alarms: Mapping[str, cloudwatch.IAlarm],
        paging: frozenset[str] | set[str] = frozenset(),
        pipeline_name: str,
        vs_currency: str,
        namespace: str = obs.NAMESPACE_DEFAULT,
    ) -> None:
        """``functions`` and ``service_names`` by function name (``service_names``: each one's
        ``POWERTOOLS_SERVICE_NAME``, ColdStart's ``service`` dimension); ``alarms`` by id,
        ``paging`` the ids whose action is the alert topic (drawn as graphs too)."""
        super().__init__(scope, construct_id)
        self.namespace = namespace
        self.pipeline_name = pipeline_name
        self.vs_currency = vs_currency
        self.dimensions = {obs.DIM_PIPELINE: pipeline_name, obs.DIM_VS_CURRENCY: vs_currency}
        self.dashboard_name = f"{pipeline_name}-pipeline"
        self._state_machine = state_machine

        graphs = {
            title: self._custom_graph(title, lines) for title, lines in CUSTOM_WIDGETS.items()
        }
        duration = graphs.pop("Execution duration (seconds)")
        outcome = graphs.pop("Execution outcome")
        runs = list(graphs.values())
        runs.insert(3, self._by_reason())
        quarter = WIDTH // 4
        rows: list[list[cloudwatch.IWidget]] = [
            [self._header(state_machine, functions)],
            [
                cloudwatch.AlarmStatusWidget(
                    title="Alarms (paging: " + ", ".join(sorted(paging)) + ")",
                    alarms=list(alarms.values()),
                    width=WIDTH,
                    height=3,
                )
            ],
            [self._executions(state_machine), outcome, duration],
            runs[:4],
            runs[4:],
            [
                self._lambda_graph(metric, statistic, functions)
                for metric, statistic in LAMBDA_METRICS
            ],
            [self._cold_starts(functions, service_names)]
            + [
                cloudwatch.AlarmWidget(
                    alarm=alarms[alarm_id],
                    title=f"Alarm {alarm_id} (pages)",
                    width=quarter,
                    height=HEIGHT,
                )
                for alarm_id in sorted(paging)
            ],
        ]
        self.dashboard = cloudwatch.Dashboard(
            self,
            "Dashboard",
            dashboard_name=self.dashboard_name,
            default_interval=DEFAULT_RANGE,
            widgets=rows,
        )

    def metric(self, name: str, statistic: str, label: str) -> cloudwatch.Metric:
        """One of the functions' metrics with this dashboard's Pipeline and VsCurrency."""
        if obs.metric_dimensions(name) != obs.DIMENSIONS:
            raise ValueError(f"{name} is not emitted with exactly {obs.DIMENSIONS}")
        return cloudwatch.Metric(
            namespace=self.namespace,
            metric_name=name,
            dimensions_map=self.dimensions,
            statistic=statistic,
            period=PERIOD,
            label=label,
        )

    def _custom_graph(self, title: str, lines: list[tuple[str, str, str]]) -> cloudwatch.IWidget:
        metrics: list[cloudwatch.IMetric] = [
            self.metric(name, statistic, label) for name, statistic, label in lines
        ]
        width = WIDTH // 4
        if title.startswith("Execution"):
            width = WIDTH // 3
        if title == "Execution duration (seconds)":
            # Step Functions' own figure (milliseconds, every currency) in the same unit.
            metrics.append(
                cloudwatch.MathExpression(
                    expression="sfn / 1000",
                    using_metrics={"sfn": self._state_machine.metric_time(statistic="Maximum")},
                    label="Step Functions ExecutionTime (every currency)",
                    period=PERIOD,
                )
            )
        return cloudwatch.GraphWidget(
            title=f"{title} [{self.vs_currency}]",
            left=metrics,
            width=width,
            height=HEIGHT,
        )

    def _search(self, name: str, dimensions: tuple[str, ...], terms: str) -> str:
        """A CloudWatch SEARCH over ``name`` with exactly ``dimensions`` ("Using search
        expressions in graphs": ``{namespace,dim,...}`` is the schema, then the terms)."""
        schema = ",".join([self.namespace, *sorted(dimensions)])
        return f'{{{schema}}} MetricName="{name}" {terms}'.strip()

    def _by_reason(self) -> cloudwatch.IWidget:
        name = obs.ROWS_REJECTED_BY_REASON
        terms = " ".join(f'{k}="{v}"' for k, v in self.dimensions.items())
        search = self._search(name, obs.metric_dimensions(name), terms)
        return cloudwatch.GraphWidget(
            title=f"{BY_REASON_TITLE} [{self.vs_currency}]",
            left=[
                cloudwatch.MathExpression(
                    expression=f"SEARCH('{search}', 'Sum', {PERIOD.to_seconds()})",
                    label="",  # each line is labelled with its Reason
                    period=PERIOD,
                )
            ],
            width=WIDTH // 4,
            height=HEIGHT,
        )

    def _executions(self, state_machine: sfn.IStateMachine) -> cloudwatch.IWidget:
        return cloudwatch.GraphWidget(
            title="Executions (Step Functions, every currency)",
            left=[
                state_machine.metric(name, statistic="Sum", period=PERIOD, label=label)
                for name, label in (
                    ("ExecutionsSucceeded", "succeeded"),
                    ("ExecutionsFailed", "failed"),
                    ("ExecutionsTimedOut", "timed out"),
                    ("ExecutionsAborted", "aborted"),
                )
            ],
            width=WIDTH // 3,
            height=HEIGHT,
        )

    def _lambda_graph(
        self, metric: str, statistic: str, functions: Mapping[str, lambda_.IFunction]
    ) -> cloudwatch.IWidget:
        unit = " (milliseconds)" if metric == "Duration" else ""
        return cloudwatch.GraphWidget(
            title=f"Lambda {metric}{unit}, {statistic.lower()} per function",
            left=[
                fn.metric(metric, statistic=statistic, period=PERIOD, label=name)
                for name, fn in functions.items()
            ],
            width=WIDTH // 3,
            height=HEIGHT,
        )

    def _cold_starts(
        self, functions: Mapping[str, lambda_.IFunction], service_names: Mapping[str, str]
    ) -> cloudwatch.IWidget:
        return cloudwatch.GraphWidget(
            title=COLD_START_TITLE,
            left=[
                cloudwatch.Metric(
                    namespace=self.namespace,
                    metric_name=obs.COLD_START,
                    dimensions_map={
                        "function_name": fn.function_name,
                        "service": service_names[name],
                    },
                    statistic="Sum",
                    period=PERIOD,
                    label=name,
                )
                for name, fn in functions.items()
            ],
            width=WIDTH // 4,
            height=HEIGHT,
        )

    def _header(
        self, state_machine: sfn.IStateMachine, functions: Mapping[str, lambda_.IFunction]
    ) -> cloudwatch.IWidget:
        region = cdk.Aws.REGION
        console = f"https://{region}.console.aws.amazon.com"
        logs = " · ".join(
            f"[{name} logs]({console}/lambda/home?region={region}#/functions/"
            f"{fn.function_name}?tab=monitoring)"
            for name, fn in functions.items()
        )
        markdown = (
            f"# crypto-etl pipeline `{self.pipeline_name}`\n"
            f"Custom metrics: namespace `{self.namespace}`, "
            f"`Pipeline={self.pipeline_name}`, `VsCurrency={self.vs_currency}` "
            "(context `dashboard_vs_currency`); points are sums per hour. "
            f"[State machine]({console}/states/home?region={region}#/statemachines/view/"
            f"{state_machine.state_machine_arn}) · "
            f"[X-Ray traces]({console}/cloudwatch/home?region={region}#xray:traces/query) · "
            f"{logs}"
        )
        return cloudwatch.TextWidget(markdown=markdown, width=WIDTH, height=3)
