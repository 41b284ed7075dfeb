"""catversion-diffusers: CatVersion personalization for diffusers pipelines.

``import catversion_diffusers`` gives every diffusers pipeline ``load_catversion``, ``unload_catversion``,
``set_catversion_scale``, ``get_catversion_adapters``, ``save_catversion`` and ``push_catversion_to_hub``.
"""

__version__ = "0.1.0"

from .attention import CatVersionAttention, ResidualKV
from .errors import (
    CatVersionAdapterNameError,
    CatVersionCompatibilityError,
    CatVersionError,
    CatVersionFormatError,
    CatVersionNotFoundError,
    CatVersionUnsafeCheckpointError,
)
from .format import (
    DEFAULT_WEIGHT_NAME,
    FORMAT_VERSION,
    CatVersionState,
    load_official_checkpoint,
    load_state_file,
    save_state,
    state_from_tensors,
    state_to_tensors,
)
from .loaders import CatVersionLoaderMixin, load_catversion_state, register_catversion_methods
from .text_encoder import (
    CatVersionAdapterInfo,
    add_catversion_adapter,
    catversion_disabled,
    default_catversion_layers,
    delete_catversion_adapters,
    get_catversion_adapters,
    get_catversion_residuals,
    get_encoder_layers,
    set_catversion_scale,
)

register_catversion_methods()

__all__ = [
    "CatVersionAttention",
    "ResidualKV",
    "CatVersionError",
    "CatVersionFormatError",
    "CatVersionCompatibilityError",
    "CatVersionAdapterNameError",
    "CatVersionNotFoundError",
    "CatVersionUnsafeCheckpointError",
    "DEFAULT_WEIGHT_NAME",
    "FORMAT_VERSION",
    "CatVersionState",
    "load_official_checkpoint",
    "load_state_file",
    "save_state",
    "state_from_tensors",
    "state_to_tensors",
    "CatVersionLoaderMixin",
    "load_catversion_state",
    "register_catversion_methods",
    "CatVersionAdapterInfo",
    "add_catversion_adapter",
    "catversion_disabled",
    "default_catversion_layers",
    "delete_catversion_adapters",
    "get_catversion_adapters",
    "get_catversion_residuals",
    "get_encoder_layers",
    "set_catversion_scale",
]
