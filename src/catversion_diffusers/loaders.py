"""``CatVersionLoaderMixin``: ``pipe.load_catversion(...)`` and friends on stock diffusers pipelines.

``import catversion_diffusers`` adds these methods to ``diffusers.DiffusionPipeline``, so every pipeline with a
CLIP text encoder gets them (Stable Diffusion 1.x/2.x and their img2img, inpaint and ControlNet variants, SDXL).
Custom pipelines can also inherit from the mixin.
"""

import functools
import inspect
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

import torch
from torch import nn

from .errors import CatVersionAdapterNameError, CatVersionCompatibilityError, CatVersionFormatError, CatVersionNotFoundError
from .format import (
    DEFAULT_WEIGHT_NAME,
    TEXT_ENCODER_NAMES,
    CatVersionState,
    load_official_checkpoint,
    load_state_file,
    save_state,
    state_from_tensors,
)
from .text_encoder import (
    CatVersionAdapterInfo,
    add_catversion_adapter,
    catversion_disabled,
    default_catversion_layers,
    delete_catversion_adapters,
    get_catversion_adapters,
    get_catversion_residuals,
    set_catversion_scale,
    text_encoder_hidden_size,
    validate_residuals,
)
from .utils import get_logger, library_version

logger = get_logger(__name__)

_OFFICIAL_WEIGHT_NAME = "pytorch_adapter.bin"


# ------------------------------------------------------------------------------------------------------ resolving
def resolve_catversion_file(
    pretrained_model_name_or_path: str,
    weight_name: Optional[str] = None,
    subfolder: Optional[str] = None,
    cache_dir: Optional[str] = None,
    revision: Optional[str] = None,
    token: Optional[Union[str, bool]] = None,
    local_files_only: Optional[bool] = None,
    force_download: bool = False,
) -> str:
    """Local path of a residual file given a file, a folder or a Hugging Face Hub repo id."""
    path = str(pretrained_model_name_or_path)
    if os.path.isfile(path):
        return path
    if os.path.isdir(path):
        folder = os.path.join(path, subfolder) if subfolder else path
        if weight_name is not None:
            candidate = os.path.join(folder, weight_name)
            if not os.path.isfile(candidate):
                raise CatVersionNotFoundError(f"No file {weight_name!r} in folder {folder!r}.")
            return candidate
        for name in (DEFAULT_WEIGHT_NAME, _OFFICIAL_WEIGHT_NAME):
            if os.path.isfile(os.path.join(folder, name)):
                return os.path.join(folder, name)
        safetensors = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors")) if os.path.isdir(folder) else []
        if len(safetensors) == 1:
            return os.path.join(folder, safetensors[0])
        raise CatVersionNotFoundError(
            f"Folder {folder!r} has no {DEFAULT_WEIGHT_NAME!r}"
            + (f" and several .safetensors files {safetensors}" if safetensors else "")
            + ": pass `weight_name=` to say which file to load."
        )

    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if path.count("/") > 1 or path.startswith((".", "/", "~")):
        raise CatVersionNotFoundError(
            f"{path!r} is neither an existing file or folder nor a Hugging Face Hub repo id ('user/name'). Check the path."
        )
    try:
        return hf_hub_download(
            path,
            filename=weight_name or DEFAULT_WEIGHT_NAME,
            subfolder=subfolder,
            cache_dir=cache_dir,
            revision=revision,
            token=token,
            local_files_only=bool(local_files_only),
            force_download=force_download,
        )
    except LocalEntryNotFoundError as error:  # before EntryNotFoundError: it is a subclass
        raise CatVersionNotFoundError(
            f"Could not get {weight_name or DEFAULT_WEIGHT_NAME!r} of {path!r}: it is not a local file or folder, it "
            "is not in the Hugging Face cache, and the Hub could not be reached (offline, HF_HUB_OFFLINE=1 or "
            "local_files_only=True). Connect once to download it, or pass the path of a local copy."
        ) from error
    except (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError) as error:
        raise _hub_not_found(path, weight_name, error) from error
    except (HfHubHTTPError, OSError) as error:
        raise CatVersionNotFoundError(
            f"Could not download {weight_name or DEFAULT_WEIGHT_NAME!r} of {path!r} from the Hugging Face Hub "
            f"({type(error).__name__}: {error}). Check your connection, the repo id and `token=`."
        ) from error


def _hub_not_found(repo_id: str, weight_name: Optional[str], error: Exception) -> CatVersionNotFoundError:
    return CatVersionNotFoundError(
        f"{repo_id!r} on the Hugging Face Hub has no file {weight_name or DEFAULT_WEIGHT_NAME!r} ({type(error).__name__}). "
        "Check the repo id, pass `weight_name=` for another file name, and `token=` for a private repo."
    )


def load_catversion_state(
    pretrained_model_name_or_path_or_dict: Union[str, os.PathLike, Mapping[str, torch.Tensor], CatVersionState],
    allow_pickle: bool = False,
    hidden_size: Optional[int] = None,
    **hub_kwargs: Any,
) -> CatVersionState:
    """Read a concept from a Hub repo id, folder, file, state dict or ``CatVersionState``."""
    source = pretrained_model_name_or_path_or_dict
    if isinstance(source, CatVersionState):
        return source
    if isinstance(source, Mapping):
        if any(k.endswith("control_trans") for k in source):
            return load_official_checkpoint(dict(source), hidden_size=hidden_size)
        return state_from_tensors(source, source="the state dict")
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            "`pretrained_model_name_or_path_or_dict` must be a Hub repo id, a folder, a file, a state dict or a "
            f"CatVersionState, not {type(source).__name__}."
        )
    path = resolve_catversion_file(os.fspath(source), **hub_kwargs)
    return load_state_file(path, allow_pickle=allow_pickle, hidden_size=hidden_size)


def _default_adapter_name(source: Any, state: CatVersionState, taken: List[str]) -> str:
    if isinstance(source, (str, os.PathLike)):
        path = os.path.normpath(os.fspath(source))
        stem = os.path.splitext(os.path.basename(path))[0] if os.path.isfile(path) else os.path.basename(path)
        if stem in ("catversion", "pytorch_adapter", "") and os.path.isfile(path):
            stem = os.path.basename(os.path.dirname(os.path.abspath(path)))
        if stem:
            return stem
    name = state.metadata.get("adapter_name")
    if name:
        return name
    index = 0
    while f"default_{index}" in taken:
        index += 1
    return f"default_{index}"


# ------------------------------------------------------------------------------------------------------ the mixin
class CatVersionLoaderMixin:
    """Load, combine, scale, save and unload CatVersion concepts on a diffusers pipeline."""

    # ---- which text encoders
    def _catversion_text_encoders(self) -> Dict[str, nn.Module]:
        encoders = {name: getattr(self, name, None) for name in TEXT_ENCODER_NAMES}
        encoders = {name: te for name, te in encoders.items() if te is not None}
        if not encoders:
            raise CatVersionCompatibilityError(
                f"{type(self).__name__} has no `text_encoder`: CatVersion needs a pipeline with a CLIP text encoder."
            )
        return encoders

    def catversion_default_layers(self, clip_skip: Optional[int] = None) -> Dict[str, List[int]]:
        """The layers CatVersion trains by default: the last three whose output feeds the conditioning.

        SD 1.x/2.x condition on the final layer (or ``hidden_states[-(clip_skip + 1)]``); SDXL on ``hidden_states[-2]``
        of both encoders.
        """
        output_layer = -2 if getattr(self, "text_encoder_2", None) is not None else -1
        if clip_skip:
            output_layer = -(clip_skip + 1) if output_layer == -1 else output_layer - clip_skip
        return {name: default_catversion_layers(te, output_layer) for name, te in self._catversion_text_encoders().items()}

    # ---- loading
    def load_catversion(
        self,
        pretrained_model_name_or_path_or_dict: Union[str, os.PathLike, Mapping[str, torch.Tensor], CatVersionState],
        weight_name: Optional[str] = None,
        adapter_name: Optional[str] = None,
        scale: float = 1.0,
        subfolder: Optional[str] = None,
        cache_dir: Optional[str] = None,
        revision: Optional[str] = None,
        token: Optional[Union[str, bool]] = None,
        local_files_only: Optional[bool] = None,
        force_download: bool = False,
        allow_pickle: bool = False,
    ) -> str:
        """Load a CatVersion concept into the pipeline's text encoder(s).

        Args:
            pretrained_model_name_or_path_or_dict (`str`, `os.PathLike`, `dict` or `CatVersionState`):
                a Hugging Face Hub repo id (``"user/my-dog"``), a folder, a file (``.safetensors``, or the authors'
                ``pytorch_adapter.bin``), a state dict in format v1 (or the authors' layout), or a ``CatVersionState``.
            weight_name (`str`, *optional*): file name inside the repo or folder; defaults to
                ``"catversion.safetensors"`` (a folder holding ``pytorch_adapter.bin`` works too).
            adapter_name (`str`, *optional*): name of the concept; defaults to the repo, folder or file name.
            scale (`float`, defaults to 1.0): runtime strength (see `set_catversion_scale`).
            subfolder (`str`, *optional*): subfolder of the repo or folder.
            cache_dir (`str`, *optional*): Hugging Face cache folder.
            revision (`str`, *optional*): branch, tag or commit of the Hub repo.
            token (`str` or `bool`, *optional*): Hugging Face token for private repos.
            local_files_only (`bool`, *optional*): only look in the local cache.
            force_download (`bool`, defaults to False): download again even if cached.
            allow_pickle (`bool`, defaults to False): read pickle files other than the authors' checkpoints (still
                tensors only, never code).

        Returns:
            `str`: the adapter name the concept was loaded under.

        Raises:
            `CatVersionNotFoundError`, `CatVersionFormatError`, `CatVersionCompatibilityError`,
            `CatVersionAdapterNameError`, `CatVersionUnsafeCheckpointError`. On any error the pipeline is unchanged.
        """
        encoders = self._catversion_text_encoders()
        state = load_catversion_state(
            pretrained_model_name_or_path_or_dict,
            allow_pickle=allow_pickle,
            hidden_size=text_encoder_hidden_size(encoders["text_encoder"]) if "text_encoder" in encoders else None,
            weight_name=weight_name,
            subfolder=subfolder,
            cache_dir=cache_dir,
            revision=revision,
            token=token,
            local_files_only=local_files_only,
            force_download=force_download,
        )
        loaded = list(self.get_catversion_adapters())
        if adapter_name is None:
            adapter_name = _default_adapter_name(pretrained_model_name_or_path_or_dict, state, loaded)
        if adapter_name in loaded:
            raise CatVersionAdapterNameError(
                f"An adapter named {adapter_name!r} is already loaded. Pass another `adapter_name=`, or unload it "
                f"first with `pipe.unload_catversion({adapter_name!r})`."
            )
        unknown = set(state.residuals) - set(encoders)
        if unknown:
            raise CatVersionCompatibilityError(
                f"The concept has residuals for {sorted(unknown)}, but {type(self).__name__} has no such text encoder "
                "(an SDXL concept needs an SDXL pipeline)."
            )
        # Validate against every encoder before touching any, so that a failure changes nothing.
        for encoder_name, residuals in state.residuals.items():
            validate_residuals(encoders[encoder_name], residuals, f"{encoder_name} residuals of {adapter_name!r}")

        metadata = dict(state.metadata)
        added = []
        try:
            for encoder_name, residuals in state.residuals.items():
                te = encoders[encoder_name]
                device = _module_device(te)
                placed = {i: (k.to(device, torch.float32), v.to(device, torch.float32)) for i, (k, v) in residuals.items()}
                add_catversion_adapter(te, adapter_name, placed, logit_bias=state.logit_bias, scale=scale, metadata=metadata)
                added.append(te)
        except BaseException:
            for te in added:
                delete_catversion_adapters(te, adapter_name)
            raise
        self._install_catversion_prompt_hook()
        logger.info(
            f"Loaded CatVersion adapter {adapter_name!r} ({state.num_tokens} token(s), layers "
            f"{ {k: sorted(v) for k, v in state.residuals.items()} }, logit bias {state.logit_bias})."
        )
        return adapter_name

    # ---- control
    def get_catversion_adapters(self) -> Dict[str, CatVersionAdapterInfo]:
        """Loaded adapters: name -> ``CatVersionAdapterInfo`` (layers of the first encoder that has it, scale...)."""
        infos: Dict[str, CatVersionAdapterInfo] = {}
        for te in self._catversion_text_encoders().values():
            for name, info in get_catversion_adapters(te).items():
                infos.setdefault(name, info)
        return infos

    def get_active_catversion_adapters(self) -> List[str]:
        """Names of the loaded adapters whose scale is not 0."""
        return [name for name, info in self.get_catversion_adapters().items() if info.scale != 0]

    def set_catversion_scale(self, scales: Union[float, Mapping[str, float]]) -> None:
        """Set the strength of loaded concepts.

        Args:
            scales (`float` or `Dict[str, float]`): one value for all adapters, or adapter name -> value. 0 gives the
                base model exactly, 1 the trained behaviour, values in between (or above 1) scale the residual tokens'
                unnormalised attention weight (``log(scale)`` is added to their attention logits).
        """
        known = self.get_catversion_adapters()
        if isinstance(scales, Mapping):
            unknown = [n for n in scales if n not in known]
            if unknown:
                raise CatVersionAdapterNameError(
                    f"No CatVersion adapter named {', '.join(map(repr, unknown))} is loaded. Loaded: {sorted(known) or 'none'}."
                )
        else:
            scales = {name: scales for name in known}
        values = {name: float(value) for name, value in scales.items()}
        bad = {n: v for n, v in values.items() if not (v >= 0 and v != float("inf"))}  # all checked first
        if bad:
            raise ValueError(f"CatVersion scales must be finite numbers >= 0, got {bad}.")
        for te in self._catversion_text_encoders().values():
            present = get_catversion_adapters(te)
            set_catversion_scale(te, {n: v for n, v in values.items() if n in present})

    def unload_catversion(self, adapter_names: Union[str, List[str], None] = None) -> None:
        """Remove concepts (all when ``adapter_names`` is None). With none left the text encoders are the stock ones.

        Args:
            adapter_names (`str` or `List[str]`, *optional*): which adapters to remove.
        """
        known = self.get_catversion_adapters()
        names = list(known) if adapter_names is None else ([adapter_names] if isinstance(adapter_names, str) else list(adapter_names))
        unknown = [n for n in names if n not in known]
        if unknown:
            raise CatVersionAdapterNameError(
                f"No CatVersion adapter named {', '.join(map(repr, unknown))} is loaded, so it cannot be unloaded. "
                f"Loaded: {sorted(known) or 'none'} (see `pipe.get_catversion_adapters()`)."
            )
        for te in self._catversion_text_encoders().values():
            present = [n for n in names if n in get_catversion_adapters(te)]
            if present:
                delete_catversion_adapters(te, present)
        if not self.get_catversion_adapters():
            self._remove_catversion_prompt_hook()

    def apply_catversion_to_negative_prompt(self, enabled: bool = True) -> None:
        """Whether the negative / unconditional branch of classifier-free guidance sees the residuals.

        By default it does not (as in the authors' code: the empty prompt is encoded by the stock model).
        """
        self.__dict__["_catversion_negative_prompt"] = bool(enabled)

    # ---- saving
    def catversion_state(self, adapter_name: Optional[str] = None) -> CatVersionState:
        """The ``CatVersionState`` of a loaded adapter (the only one when ``adapter_name`` is None)."""
        adapter_name = self._single_adapter_name(adapter_name)
        residuals, info = {}, None
        for encoder_name, te in self._catversion_text_encoders().items():
            if adapter_name in get_catversion_adapters(te):
                info = info or get_catversion_adapters(te)[adapter_name]
                residuals[encoder_name] = {
                    i: (k.detach().float().cpu(), v.detach().float().cpu())
                    for i, (k, v) in get_catversion_residuals(te, adapter_name).items()
                }
        metadata = dict(info.metadata)
        metadata.setdefault("adapter_name", adapter_name)
        metadata["library_version"] = library_version()
        base_model = getattr(getattr(self, "config", None), "_name_or_path", None) or getattr(self, "name_or_path", None)
        if base_model and "base_model" not in metadata:
            metadata["base_model"] = str(base_model)
        return CatVersionState(residuals=residuals, logit_bias=info.logit_bias, metadata=metadata)

    def save_catversion(
        self, save_directory: Union[str, os.PathLike], adapter_name: Optional[str] = None, weight_name: str = DEFAULT_WEIGHT_NAME
    ) -> str:
        """Save a loaded concept as ``save_directory/weight_name`` (format v1 safetensors, written atomically).

        Args:
            save_directory (`str` or `os.PathLike`): folder to write to (created if needed).
            adapter_name (`str`, *optional*): which adapter; may be omitted when exactly one is loaded.
            weight_name (`str`, defaults to `"catversion.safetensors"`): file name.

        Returns:
            `str`: the path written.
        """
        state = self.catversion_state(adapter_name)
        path = save_state(state, os.path.join(os.fspath(save_directory), weight_name))
        logger.info(f"Saved CatVersion adapter to {path}")
        return path

    def push_catversion_to_hub(
        self,
        repo_id: str,
        adapter_name: Optional[str] = None,
        token: Optional[str] = None,
        private: Optional[bool] = None,
        commit_message: str = "Upload CatVersion residuals",
        example_prompts: Optional[List[str]] = None,
        images: Optional[List[str]] = None,
    ) -> str:
        """Upload a loaded concept (residual file and a model card) to the Hugging Face Hub. Returns the commit URL."""
        from .hub import push_catversion_state_to_hub

        return push_catversion_state_to_hub(
            self.catversion_state(adapter_name),
            repo_id,
            token=token,
            private=private,
            commit_message=commit_message,
            example_prompts=example_prompts,
            images=images,
        )

    def _single_adapter_name(self, adapter_name: Optional[str]) -> str:
        loaded = list(self.get_catversion_adapters())
        if adapter_name is None:
            if len(loaded) != 1:
                raise CatVersionAdapterNameError(
                    f"{len(loaded)} CatVersion adapters are loaded ({loaded}): pass `adapter_name=` to say which."
                )
            return loaded[0]
        if adapter_name not in loaded:
            raise CatVersionAdapterNameError(f"No CatVersion adapter named {adapter_name!r} is loaded. Loaded: {loaded}.")
        return adapter_name

    # ---- the negative prompt
    def _install_catversion_prompt_hook(self) -> None:
        if "encode_prompt" in self.__dict__ or not hasattr(self, "encode_prompt"):
            return
        self.__dict__["encode_prompt"] = _wrap_encode_prompt(self, type(self).encode_prompt.__get__(self))

    def _remove_catversion_prompt_hook(self) -> None:
        wrapper = self.__dict__.get("encode_prompt")
        if getattr(wrapper, "_catversion_wrapper", False):
            del self.__dict__["encode_prompt"]


def _wrap_encode_prompt(pipe: Any, encode_prompt: Callable) -> Callable:
    """``encode_prompt`` whose negative embeddings come from the stock text encoder(s), unless asked otherwise."""

    @functools.wraps(encode_prompt)
    def encode_prompt_with_catversion(*args: Any, **kwargs: Any):
        outputs = encode_prompt(*args, **kwargs)
        if pipe.__dict__.get("_catversion_negative_prompt", False) or not pipe.get_active_catversion_adapters():
            return outputs
        if not isinstance(outputs, tuple) or len(outputs) < 2 or outputs[1] is None:
            return outputs  # no classifier-free guidance: nothing negative to encode
        import contextlib

        with contextlib.ExitStack() as stack:
            for te in pipe._catversion_text_encoders().values():
                stack.enter_context(catversion_disabled(te))
            stock = encode_prompt(*args, **kwargs)
        # (prompt, negative) or (prompt, negative, pooled, negative_pooled): negatives are at odd positions.
        return tuple(stock[i] if i % 2 == 1 else outputs[i] for i in range(len(outputs)))

    encode_prompt_with_catversion._catversion_wrapper = True
    return encode_prompt_with_catversion


def _module_device(module: nn.Module) -> torch.device:
    for parameter in module.parameters():
        if parameter.device.type != "meta":
            return parameter.device
    return torch.device("cpu")


_PUBLIC_METHODS = (
    "load_catversion",
    "unload_catversion",
    "set_catversion_scale",
    "get_catversion_adapters",
    "get_active_catversion_adapters",
    "apply_catversion_to_negative_prompt",
    "catversion_state",
    "catversion_default_layers",
    "save_catversion",
    "push_catversion_to_hub",
    "_catversion_text_encoders",
    "_single_adapter_name",
    "_install_catversion_prompt_hook",
    "_remove_catversion_prompt_hook",
)


def register_catversion_methods(pipeline_class: Optional[type] = None) -> None:
    """Give ``pipeline_class`` (default: ``diffusers.DiffusionPipeline``, so every pipeline) the mixin's methods."""
    if pipeline_class is None:
        from diffusers import DiffusionPipeline as pipeline_class
    for name in _PUBLIC_METHODS:
        existing = pipeline_class.__dict__.get(name)
        ours = CatVersionLoaderMixin.__dict__[name]
        if existing is not None and existing is not ours:
            logger.warning(f"{pipeline_class.__name__}.{name} already exists; catversion-diffusers leaves it alone.")
            continue
        setattr(pipeline_class, name, ours)
