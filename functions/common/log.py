"""Structured JSON logging via AWS Lambda Powertools."""

from __future__ import annotations

import os

from aws_lambda_powertools import Logger


def get_logger(service: str) -> Logger:
    """One Powertools logger per function; service name and level come from the environment."""
    return Logger(
        service=os.environ.get("POWERTOOLS_SERVICE_NAME", service),
        level=os.environ.get("POWERTOOLS_LOG_LEVEL", os.environ.get("LOG_LEVEL", "INFO")),
    )
