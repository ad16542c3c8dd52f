"""The data lake: a private, encrypted, versioned S3 bucket.

Layout (``functions.common.keys``): each execution attempt of a snapshot S writes under its own
run prefix R, and one index object per snapshot records its fixed partition date D and the run
currently loaded::

    raw/dt=D/snapshot=S/run=R/markets/page-0001.json, …/global.json, …/manifest.json
    processed/dt=D/snapshot=S/run=R/crypto_data.csv.gz
    rejected/dt=D/snapshot=S/run=R/rejected.csv.gz
    snapshots/S.json
    raw/history/backfill=B/items.json, …/coins/<coin id>.json, …/results/<map run>/…
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from constructs import Construct

from cdk_app.config import INFREQUENT_ACCESS_AFTER_DAYS, Settings

# Kept in sync with functions.common.keys (RAW, PROCESSED, REJECTED, SNAPSHOTS); tests check.
RAW = "raw/"
PROCESSED = "processed/"
REJECTED = "rejected/"
SNAPSHOTS = "snapshots/"
# The history backfill's files (functions.common.keys' history keys): items.json, the raw
# market_chart bodies and the Distributed Map's results, per backfill id. Inside raw/, so they
# follow raw/'s lifecycle (the warehouse holds the rows).
HISTORY = "raw/history/"


class DataLake(Construct):
    """The lake bucket plus the bucket that receives its S3 server access logs."""

    def __init__(self, scope: Construct, construct_id: str, *, settings: Settings) -> None:
        super().__init__(scope, construct_id)
        removal = cdk.RemovalPolicy.RETAIN if settings.retain_lake else cdk.RemovalPolicy.DESTROY

        # Server access logs go to their own bucket (S3 requires SSE-S3 on a log target).
        self.access_logs = s3.Bucket(
            self,
            "AccessLogs",
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            removal_policy=removal,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="expire-access-logs",
                    expiration=cdk.Duration.days(settings.access_log_retention_days),
                    abort_incomplete_multipart_upload_after=cdk.Duration.days(7),
                )
            ],
        )
        # cdk-nag's S1 (server access logging) accepts a bucket that is itself a log target.

        def ia_then_expire(rule_id: str, prefix: str, days: int) -> s3.LifecycleRule:
            return s3.LifecycleRule(
                id=rule_id,
                prefix=prefix,
                transitions=[
                    s3.Transition(
                        storage_class=s3.StorageClass.INFREQUENT_ACCESS,
                        transition_after=cdk.Duration.days(INFREQUENT_ACCESS_AFTER_DAYS),
                    )
                ],
                expiration=cdk.Duration.days(days),
            )

        self.bucket = s3.Bucket(
            self,
            "LakeBucket",
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            minimum_tls_version=1.2,
            versioned=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            server_access_logs_bucket=self.access_logs,
            server_access_logs_prefix="lake/",
            removal_policy=removal,
            lifecycle_rules=[
                # Raw pages are kept for replay/debugging, then age out.
                ia_then_expire("raw-to-ia-then-expire", RAW, settings.raw_retention_days),
                # Rejected rows are kept for inspection, then age out.
                ia_then_expire(
                    "rejected-to-ia-then-expire", REJECTED, settings.rejected_retention_days
                ),
                # processed/ (the warehouse's source) and snapshots/ (the index of the loaded
                # run) never expire. Each attempt writes its own run=… keys and only the index
                # is overwritten, so old versions are only a safety net.
                s3.LifecycleRule(
                    id="expire-noncurrent-versions",
                    noncurrent_version_expiration=cdk.Duration.days(
                        settings.noncurrent_version_retention_days
                    ),
                    expired_object_delete_marker=True,
                    abort_incomplete_multipart_upload_after=cdk.Duration.days(7),
                ),
            ],
        )

    def object_arn(self, prefix: str) -> str:
        """ARN of every object under ``prefix`` (``arn:…:bucket/prefix*``)."""
        return self.bucket.arn_for_objects(f"{prefix}*")

    def grant(
        self,
        role: iam.IRole,
        *,
        read: tuple[str, ...] = (),
        write: tuple[str, ...] = (),
        list_only: tuple[str, ...] = (),
    ) -> None:
        """Least privilege by prefix: GetObject on ``read``, PutObject on ``write``, and
        ListBucket restricted (``s3:prefix`` condition) to the prefixes the role touches plus
        ``list_only`` (keys listed, never read)."""
        if read:
            role.add_to_principal_policy(
                iam.PolicyStatement(
                    sid="ReadLakePrefixes",
                    actions=["s3:GetObject"],
                    resources=[self.object_arn(p) for p in read],
                )
            )
        if write:
            role.add_to_principal_policy(
                iam.PolicyStatement(
                    sid="WriteLakePrefixes",
                    actions=["s3:PutObject"],
                    resources=[self.object_arn(p) for p in write],
                )
            )
        prefixes = sorted(set(read) | set(write) | set(list_only))
        if prefixes:
            # The storage layer's exists()/list_keys() call ListObjectsV2 with a key prefix;
            # listing is limited to the prefixes this role reads or writes.
            role.add_to_principal_policy(
                iam.PolicyStatement(
                    sid="ListLakePrefixes",
                    actions=["s3:ListBucket"],
                    resources=[self.bucket.bucket_arn],
                    conditions={"StringLike": {"s3:prefix": [f"{p}*" for p in prefixes]}},
                )
            )
