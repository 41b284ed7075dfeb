"""Errors raised by the evaluation subpackage (all subclasses of `catversion_diffusers.errors.CatVersionError`)."""

from ..errors import CatVersionError


class EvaluationError(CatVersionError, ValueError):
    """Bad evaluation input: images and masks or prompts that do not match in count or name, an empty image list,
    an unknown option value."""


class EvaluationModelNotFoundError(CatVersionError, OSError):
    """A model used by the metrics (CLIP, DINO, CLIPSeg) could not be loaded from the name or path given.

    The message names the model and says how to provide it: download it on a machine with internet access
    (``huggingface-cli download <name>`` or ``snapshot_download``) and pass the local folder, or point ``HF_HOME``
    at a Hugging Face cache that holds it.
    """
