"""One small error hierarchy. The class name is what Step Functions sees as the error name."""

from __future__ import annotations


class CryptoEtlError(Exception):
    """Base class of every error the pipeline raises on purpose."""


class ConfigError(CryptoEtlError):
    """A configuration value (environment variable, secret) is missing or malformed."""

    def __init__(self, name: str, problem: str) -> None:
        self.name = name
        self.problem = problem
        super().__init__(f"configuration {name}: {problem}")


class ValidationError(CryptoEtlError):
    """An input (event field, file, row) is not what the contract says."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"invalid {field}: {problem}")


class SourceError(CryptoEtlError):
    """The CoinGecko API refused a request (a 4xx other than 429): not worth retrying."""

    def __init__(
        self, message: str, *, url: str = "", status: int | None = None, api_message: str = ""
    ) -> None:
        self.url = url
        self.status = status
        self.api_message = api_message
        super().__init__(message)


class SourceUnavailableError(SourceError):
    """The API kept failing transiently (429/5xx/timeouts) past the retry budget."""


class DataQualityError(CryptoEtlError):
    """The data set as a whole fails a quality check (e.g. no valid rows at all)."""


class StorageError(CryptoEtlError):
    """Reading or writing the data lake failed (permissions, throttling, network)."""


class LoadError(CryptoEtlError):
    """Loading into the warehouse failed; the message says whether the warehouse changed."""
