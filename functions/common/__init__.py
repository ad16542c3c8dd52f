"""Shared building blocks for the three Lambda functions (no network imports here)."""
