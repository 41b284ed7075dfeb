"""Small shared helpers: logging in the diffusers style, the library version."""

import logging


def get_logger(name: str) -> logging.Logger:
    """A logger under the diffusers logging tree (so ``diffusers.utils.logging.set_verbosity_*`` applies)."""
    try:
        from diffusers.utils import logging as diffusers_logging

        return diffusers_logging.get_logger(name)
    except ImportError:  # pragma: no cover - diffusers is a hard dependency
        return logging.getLogger(name)


def library_version() -> str:
    from . import __version__

    return __version__
