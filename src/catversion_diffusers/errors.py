"""Exception types raised by catversion-diffusers.

Every error raised on bad input is one of these, so that callers can catch them precisely, and every message
names the problem and how to fix it.
"""


class CatVersionError(Exception):
    """Base class of every error raised by catversion-diffusers."""


class CatVersionFormatError(CatVersionError, ValueError):
    """A residual file or state dict is malformed: missing or extra tensors, wrong shapes, NaN/inf values,
    an unknown format version, or a file that is not safetensors."""


class CatVersionCompatibilityError(CatVersionError, ValueError):
    """Residuals do not fit the model they are loaded into (hidden size, number of layers, missing encoder)."""


class CatVersionAdapterNameError(CatVersionError, KeyError):
    """An adapter name is unknown, or is already loaded."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class CatVersionUnsafeCheckpointError(CatVersionError):
    """A pickle checkpoint was refused because it could execute code when loaded."""


class CatVersionNotFoundError(CatVersionError, FileNotFoundError):
    """The residual file could not be found locally or on the Hugging Face Hub."""
