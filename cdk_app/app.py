"""CDK entry point (``cdk.json``: ``python3 -m cdk_app.app``).

``build_app()`` is also what the infra tests use, so they synthesize exactly what ``cdk synth``
does. cdk-nag's AwsSolutionsChecks run on every synth: an unacknowledged finding fails it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks

from cdk_app.config import settings_from_context
from cdk_app.stack import CryptoEtlStack

CDK_JSON = Path(__file__).resolve().parents[1] / "cdk.json"


def cdk_json_context() -> dict[str, Any]:
    """The ``context`` block of ``cdk.json`` (what the CDK CLI passes to the app)."""
    return dict(json.loads(CDK_JSON.read_text(encoding="utf-8")).get("context", {}))


def build_app(
    context: Mapping[str, Any] | None = None,
    outdir: str | None = None,
    *,
    nag: bool = True,
) -> tuple[cdk.App, CryptoEtlStack]:
    """Create the app and its stack. ``context`` None = whatever the CDK CLI passed."""
    kwargs: dict[str, Any] = {}
    if context is not None:
        kwargs["context"] = dict(context)
    if outdir is not None:
        kwargs["outdir"] = outdir
    app = cdk.App(**kwargs)
    settings = settings_from_context(app.node.try_get_context)
    stack = CryptoEtlStack(
        app,
        settings.stack_name,
        settings=settings,
        description="crypto-etl: CoinGecko -> S3 -> Snowflake market snapshots (Step Functions)",
    )
    cdk.Tags.of(stack).add("project", "crypto-etl")
    if nag:
        cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return app, stack


def main() -> None:
    """Synthesize the app with the context the CDK CLI supplied."""
    app, _ = build_app()
    app.synth()


if __name__ == "__main__":
    main()
