"""Errors a user can act on. The CLI prints their message on one line and exits 2."""


class VSearchError(ValueError):
    """Base class: a problem with the user's input, files or configuration."""


class ConfigError(VSearchError):
    """An override or a config file does not fit the config's fields."""


class DataError(VSearchError):
    """A data folder or artifact cannot be used; the message names the path and what to do."""


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
