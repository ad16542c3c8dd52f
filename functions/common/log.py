"""Structured JSON logging via AWS Lambda Powertools."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger

from functions.common.context import LocalLambdaContext


def get_logger(service: str) -> Logger:
    """One Powertools logger per function; service name and level come from the environment."""
    return Logger(
        service=os.environ.get("POWERTOOLS_SERVICE_NAME", service),
        level=os.environ.get("POWERTOOLS_LOG_LEVEL", os.environ.get("LOG_LEVEL", "INFO")),
    )


def context_or_local(handler: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """Give ``handler`` a LocalLambdaContext when called with ``context=None`` (a direct call,
    e.g. a test): Powertools' ``inject_lambda_context`` and cold-start metric read the context's
    attributes."""

    @functools.wraps(handler)
    def wrapper(event: Any, context: Any) -> Any:
        return handler(event, LocalLambdaContext() if context is None else context)

    return wrapper
