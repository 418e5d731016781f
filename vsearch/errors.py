"""Errors a user can act on. The CLI prints their message on one line and exits 2."""


class VSearchError(ValueError):
    """Base class: a problem with the user's input, files or configuration."""


class ConfigError(VSearchError):
    """An override or a config file does not fit the config's fields."""


class DataError(VSearchError):
    """A data folder or artifact cannot be used; the message names the path and what to do."""


class StoreError(VSearchError):
    """The store failed on its side (a server down, restarting or refusing), not the input.

    The web API answers it with 503 and ``Retry-After: retry_after`` seconds; the message
    says whether anything was written.
    """

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


class BackboneError(VSearchError):
    """The backbone or its weights cannot be built or found."""


class ImageError(VSearchError):
    """An image cannot be used; the message names the source and the reason."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class TrainingError(VSearchError):
    """Training cannot go on (the loss is no longer a finite number); no model was saved."""
