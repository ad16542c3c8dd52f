"""Secrets Manager secrets for the Snowflake connection and the optional CoinGecko API key.

Both are created EMPTY: an ``AWS::SecretsManager::Secret`` with neither ``SecretString`` nor
``GenerateSecretString`` is a secret with no value yet (CloudFormation docs: "If you omit both
GenerateSecretString and SecretString, you create an empty secret"). The L2 ``Secret`` construct
would generate a random password instead, and a placeholder value in the template would be a
value from code, so the L1 ``CfnSecret`` is used. Nothing here ever holds a credential; the
operator puts the value after deploying (README, "Deploy to AWS", step 3):

Snowflake (key-pair auth preferred; ``password`` instead of ``private_key`` is accepted)::

    {"account": "xy12345.eu-west-1", "user": "CRYPTO_ETL",
     "private_key": "<the PKCS#8 PEM text, line breaks as \\n>",
     "private_key_passphrase": "optional", "role": "optional", "warehouse": "optional",
     "database": "optional", "schema": "optional"}

CoinGecko: the raw key string, or ``{"api_key": "...", "plan": "demo" | "pro"}``. Left empty
(no value), the extract function uses the public API.
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from cdk_app.nag import acknowledge

# Documentation of the JSON shapes (no values).
SNOWFLAKE_JSON_SHAPE = (
    '{"account", "user", "private_key" (PEM) | "password", "private_key_passphrase"?, '
    '"role"?, "warehouse"?, "database"?, "schema"?}'
)
COINGECKO_VALUE_SHAPE = 'the API key string, or {"api_key": "...", "plan": "demo" | "pro"}'


class Secrets(Construct):
    """The two empty secrets; names derive from the stack name so they are easy to find."""

    def __init__(self, scope: Construct, construct_id: str, *, stack_name: str) -> None:
        super().__init__(scope, construct_id)
        self.snowflake_name = f"{stack_name}/snowflake"
        self.coingecko_name = f"{stack_name}/coingecko-api-key"
        self.snowflake = secretsmanager.CfnSecret(
            self,
            "Snowflake",
            name=self.snowflake_name,
            description=(
                "crypto-etl Snowflake connection for the load function. Created empty; put JSON "
                f"{SNOWFLAKE_JSON_SHAPE}"
            )[:2048],
        )
        self.coingecko = secretsmanager.CfnSecret(
            self,
            "CoinGeckoApiKey",
            name=self.coingecko_name,
            description=(
                "crypto-etl CoinGecko API key for the extract function (optional: leave empty "
                f"for the public API). Value: {COINGECKO_VALUE_SHAPE}"
            ),
        )
        for secret in (self.snowflake, self.coingecko):
            # Deleting the stack schedules the secret for deletion (recoverable for 30 days).
            secret.apply_removal_policy(cdk.RemovalPolicy.DESTROY)
            acknowledge(
                secret,
                "AwsSolutions-SMG4",
                "Third-party credentials (a Snowflake key pair or password, a CoinGecko API key) "
                "are issued and rotated by their owners in Snowflake/CoinGecko; there is no "
                "rotation Lambda that could rotate them from AWS.",
            )

    @property
    def snowflake_arn(self) -> str:
        """ARN of the Snowflake secret (``Ref`` of a secret is its ARN)."""
        return self.snowflake.ref

    @property
    def coingecko_arn(self) -> str:
        """ARN of the CoinGecko secret."""
        return self.coingecko.ref

    @staticmethod
    def grant_read(role: iam.IRole, secret_arn: str) -> None:
        """Allow ``role`` to read exactly one secret's value."""
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"],
                resources=[secret_arn],
            )
        )
