"""The CDK app that deploys crypto-etl to AWS (the only package that imports ``aws_cdk``)."""
