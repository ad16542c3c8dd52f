"""The pipeline's Amazon States Language definition (single source of truth) and local runner."""
