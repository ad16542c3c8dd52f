"""Read a Secrets Manager secret's string (boto3 imported lazily, only when a secret is used)."""

from __future__ import annotations

from typing import Any

from functions.common.errors import ConfigError


def fetch_secret_string(arn: str, setting: str) -> str:
    """The secret's string, or "" when the secret exists but has no value yet.

    The CDK stack creates its secrets empty; until an operator fills one, GetSecretValue fails
    with ResourceNotFoundException although the secret exists (DescribeSecret tells the two
    apart). Any other failure is a ConfigError naming ``setting`` (the variable holding the ARN).
    """
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.client("secretsmanager")
    try:
        resp = client.get_secret_value(SecretId=arn)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "error")
        if code == "ResourceNotFoundException" and _secret_exists(client, arn):
            return ""
        raise ConfigError(setting, f"cannot read secret {arn}: {code}") from exc
    except BotoCoreError as exc:
        raise ConfigError(setting, f"cannot read secret {arn}: {exc}") from exc
    return resp.get("SecretString") or ""


def _secret_exists(client: Any, arn: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        client.describe_secret(SecretId=arn)
    except ClientError:
        return False
    return True
