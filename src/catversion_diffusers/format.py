"""The CatVersion residual file, format v1 (described in docs/file_format.md), and the authors' checkpoints.

A concept is a ``CatVersionState``: for each text encoder of the pipeline (``"text_encoder"``, and
``"text_encoder_2"`` for SDXL), layer index -> ``(residual_key, residual_value)``, plus a logit bias and metadata.
On disk it is one safetensors file::

    text_encoder.layers.{i}.residual_key     [num_tokens, hidden_size]
    text_encoder.layers.{i}.residual_value   [num_tokens, hidden_size]
    text_encoder_2.layers.{i}.residual_key   (SDXL's second encoder)
    metadata: format="catversion", format_version="1", logit_bias="0.0", class_word, base_model, num_tokens, ...
"""

import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Tuple

import torch

from .errors import CatVersionFormatError, CatVersionUnsafeCheckpointError

FORMAT_NAME = "catversion"
FORMAT_VERSION = "1"
DEFAULT_WEIGHT_NAME = "catversion.safetensors"
TEXT_ENCODER_NAMES = ("text_encoder", "text_encoder_2")
AUTHORS_LOGIT_BIAS = 1.0  # their prefix-tuning mask adds +1 to the prefix logit

_KEY_PATTERN = re.compile(r"^(text_encoder(?:_2)?)\.layers\.(\d+)\.residual_(key|value)$")
_OFFICIAL_KEY_PATTERN = re.compile(r"(?:^|\.)layers\.(\d+)\.self_attn\.prefix_tuning\..*control_trans$")

Residuals = Dict[int, Tuple[torch.Tensor, torch.Tensor]]


@dataclass
class CatVersionState:
    """One concept: residuals per text encoder and layer, its logit bias and informative metadata.

    Args:
        residuals (`Dict[str, Dict[int, Tuple[torch.Tensor, torch.Tensor]]]`): text encoder name -> 0-based layer
            index -> ``(key, value)``, each ``[num_tokens, hidden_size]``.
        logit_bias (`float`, defaults to 0.0): added to the residual tokens' attention logits (paper: 0.0, authors'
            code: 1.0).
        metadata (`Dict[str, str]`): informative strings (``class_word``, ``base_model``...).
    """

    residuals: Dict[str, Residuals]
    logit_bias: float = 0.0
    metadata: Dict[str, str] = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        first = next(iter(next(iter(self.residuals.values())).values()))
        return int(first[0].shape[0])


# -------------------------------------------------------------------------------------------------- state dicts
def state_to_tensors(state: CatVersionState) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """The safetensors tensors and string metadata of ``state`` (tensors detached, contiguous, on CPU)."""
    tensors: Dict[str, torch.Tensor] = {}
    for encoder, layers in state.residuals.items():
        for index, (key, value) in sorted(layers.items()):
            tensors[f"{encoder}.layers.{index}.residual_key"] = key.detach().to("cpu").contiguous()
            tensors[f"{encoder}.layers.{index}.residual_value"] = value.detach().to("cpu").contiguous()
    metadata = {k: str(v) for k, v in state.metadata.items() if v is not None}
    metadata.update(
        format=FORMAT_NAME,
        format_version=FORMAT_VERSION,
        logit_bias=repr(float(state.logit_bias)),
        num_tokens=str(state.num_tokens),
    )
    return tensors, metadata


def state_from_tensors(
    tensors: Mapping[str, torch.Tensor], metadata: Optional[Mapping[str, str]] = None, source: str = "state dict"
) -> CatVersionState:
    """Parse and validate format v1 tensors (+ metadata). Raises `CatVersionFormatError` naming the problem."""
    metadata = dict(metadata or {})
    if metadata.get("format", FORMAT_NAME) != FORMAT_NAME:
        raise CatVersionFormatError(
            f"{source} declares format {metadata.get('format')!r}, not {FORMAT_NAME!r}: it is not a CatVersion file."
        )
    version = metadata.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise CatVersionFormatError(
            f"{source} has CatVersion format_version {version!r}; this library reads version {FORMAT_VERSION}. "
            "Upgrade catversion-diffusers (`pip install -U catversion-diffusers`)."
        )
    try:
        logit_bias = float(metadata.get("logit_bias", "0.0"))
    except ValueError:
        raise CatVersionFormatError(f"{source}: metadata logit_bias={metadata['logit_bias']!r} is not a number.")
    if not math.isfinite(logit_bias):
        raise CatVersionFormatError(f"{source}: metadata logit_bias must be finite, got {logit_bias}.")

    parts: Dict[str, Dict[int, Dict[str, torch.Tensor]]] = {}
    for name, tensor in tensors.items():
        match = _KEY_PATTERN.match(name)
        if match is None:
            raise CatVersionFormatError(
                f"{source} has an unexpected tensor {name!r}. CatVersion files hold only "
                "`text_encoder[_2].layers.<i>.residual_key|residual_value` (see docs/file_format.md)."
            )
        if not isinstance(tensor, torch.Tensor):
            raise CatVersionFormatError(f"{source}: {name!r} is a {type(tensor).__name__}, not a tensor.")
        encoder, index, kind = match.group(1), int(match.group(2)), match.group(3)
        parts.setdefault(encoder, {}).setdefault(index, {})[kind] = tensor
    if not parts:
        raise CatVersionFormatError(f"{source} holds no CatVersion residual tensor.")

    residuals: Dict[str, Residuals] = {}
    num_tokens = None
    for encoder, layers in parts.items():
        residuals[encoder] = {}
        for index, pair in sorted(layers.items()):
            missing = {"key", "value"} - set(pair)
            if missing:
                raise CatVersionFormatError(
                    f"{source}: `{encoder}.layers.{index}.residual_{missing.pop()}` is missing (each layer needs both "
                    "a residual key and a residual value). The file is incomplete: save it again."
                )
            for kind in ("key", "value"):
                tensor = pair[kind]
                if tensor.dim() != 2 or not tensor.is_floating_point():
                    raise CatVersionFormatError(
                        f"{source}: `{encoder}.layers.{index}.residual_{kind}` must be a floating 2-D tensor "
                        f"[num_tokens, hidden_size], got {tensor.dtype} {tuple(tensor.shape)}."
                    )
                if not torch.isfinite(tensor).all():
                    raise CatVersionFormatError(
                        f"{source}: `{encoder}.layers.{index}.residual_{kind}` contains NaN or inf values; the file is "
                        "corrupt or the training diverged (retrain with a lower learning rate)."
                    )
                if num_tokens is None:
                    num_tokens = tensor.shape[0]
                if tensor.shape[0] != num_tokens or tensor.shape != pair["key"].shape:
                    raise CatVersionFormatError(
                        f"{source}: residual tensors disagree in shape ({tuple(tensor.shape)} for "
                        f"`{encoder}.layers.{index}.residual_{kind}`); all must be [num_tokens, hidden_size]."
                    )
            residuals[encoder][index] = (pair["key"], pair["value"])
    if "num_tokens" in metadata and metadata["num_tokens"] != str(num_tokens):
        raise CatVersionFormatError(
            f"{source}: metadata says num_tokens={metadata['num_tokens']} but the tensors have {num_tokens}."
        )
    info = {k: v for k, v in metadata.items() if k not in ("format", "format_version", "logit_bias")}
    return CatVersionState(residuals=residuals, logit_bias=logit_bias, metadata=info)


# -------------------------------------------------------------------------------------------------- files
def save_state(state: CatVersionState, path: str) -> str:
    """Write ``state`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    from safetensors.torch import save_file

    tensors, metadata = state_to_tensors(state)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix=".catversion-", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        save_file(tensors, tmp_path, metadata=metadata)
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise
    return path


def load_state_file(path: str, allow_pickle: bool = False, hidden_size: Optional[int] = None) -> CatVersionState:
    """Read a CatVersion file: format v1 safetensors, or one of the authors' ``pytorch_adapter.bin`` checkpoints.

    Args:
        path (`str`): file path.
        allow_pickle (`bool`, defaults to False): also read pickle files that are not the authors' checkpoints.
            Even then only tensors are unpickled (``torch.load(weights_only=True)``): no code ever runs.
        hidden_size (`int`, *optional*): the text encoder's width, to split the authors' flat tensors.
    """
    if path.endswith(".safetensors") or _looks_like_safetensors(path):
        return _load_safetensors(path)
    if os.path.basename(path).endswith("pytorch_adapter.bin") or allow_pickle:
        return load_official_checkpoint(path, hidden_size)
    raise CatVersionUnsafeCheckpointError(
        f"{path!r} is not a safetensors file. Pickle files can run code when loaded, so only the authors' "
        "`pytorch_adapter.bin` checkpoints are read by default (tensors only, `weights_only=True`). Convert the file "
        "to safetensors, or pass `allow_pickle=True` if you trust it."
    )


def _looks_like_safetensors(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000


def _load_safetensors(path: str) -> CatVersionState:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as error:  # safetensors raises its own SafetensorError / OSError for bad headers
        raise CatVersionFormatError(
            f"Could not read {path!r} as safetensors ({error}). The file is truncated or not a safetensors file: "
            "download or save it again."
        ) from error
    return state_from_tensors(tensors, metadata, source=repr(path))


def load_official_checkpoint(path_or_state_dict, hidden_size: Optional[int] = None) -> CatVersionState:
    """Map the authors' ``pytorch_adapter.bin`` (adapter-transformers prefix tuning) to a ``CatVersionState``.

    Their file holds one flat fp32 tensor of ``num_tokens * num_layers * 2 * hidden_size`` values, repeated under
    aliased keys; the layers are read from the ``...layers.{i}.self_attn.prefix_tuning...control_trans`` keys. The
    flat tensor is ``[num_tokens, num_layers, 2 (key, value), hidden_size]``. Their attention adds +1 to the
    residual logits, hence ``logit_bias=1.0``.

    Args:
        path_or_state_dict (`str` or `dict`): the ``.bin`` file, or the state dict already loaded.
        hidden_size (`int`, *optional*): the text encoder's width. Defaults to the ``hidden_size`` of the
            ``adapter_config.json`` beside the file, else the text encoder's, else 768 (SD1.x).
    """
    if isinstance(path_or_state_dict, str):
        try:
            state_dict = torch.load(path_or_state_dict, map_location="cpu", weights_only=True)
        except Exception as error:
            raise CatVersionUnsafeCheckpointError(
                f"Refused to load {path_or_state_dict!r}: it is not a plain tensor pickle ({error}). Only tensors are "
                "ever unpickled (`weights_only=True`), so a file holding code or other objects is rejected."
            ) from error
        source = repr(path_or_state_dict)
        hidden_size = _official_config_hidden_size(path_or_state_dict) or hidden_size
    else:
        state_dict, source = path_or_state_dict, "the state dict"
    if not isinstance(state_dict, Mapping):
        raise CatVersionFormatError(f"{source} is not a state dict of tensors.")
    layers = sorted({int(m.group(1)) for k in state_dict if (m := _OFFICIAL_KEY_PATTERN.search(k))})
    if not layers:
        raise CatVersionFormatError(
            f"{source} holds no `...layers.<i>.self_attn.prefix_tuning...control_trans` tensor: it is neither a "
            "CatVersion file nor an authors' checkpoint."
        )
    flats = [v for k, v in state_dict.items() if _OFFICIAL_KEY_PATTERN.search(k)]
    flat = flats[0]
    if not isinstance(flat, torch.Tensor) or any(not torch.equal(flat, other) for other in flats[1:]):
        raise CatVersionFormatError(f"{source}: the per-layer prefix tensors differ; expected one shared tensor.")
    hidden_size = hidden_size or 768
    num_tokens, remainder = divmod(flat.numel(), len(layers) * 2 * hidden_size)
    if remainder or num_tokens < 1:
        raise CatVersionFormatError(
            f"{source}: a prefix tensor of {flat.numel()} values does not split into {len(layers)} layers x 2 "
            f"(key, value) x hidden size {hidden_size}: it was trained for another model."
        )
    values = flat.detach().float().reshape(num_tokens, len(layers), 2, hidden_size)
    residuals = {
        index: (values[:, j, 0].clone(), values[:, j, 1].clone()) for j, index in enumerate(layers)
    }
    state = state_from_tensors(
        {f"text_encoder.layers.{i}.residual_{kind}": kv[n] for i, kv in residuals.items() for n, kind in enumerate(("key", "value"))},
        {"logit_bias": repr(AUTHORS_LOGIT_BIAS)},
        source=source,
    )
    state.metadata.update(base_model="stable-diffusion-v1-5/stable-diffusion-v1-5", source_format="authors-prefix-tuning")
    return state


def _official_config_hidden_size(path: str) -> Optional[int]:
    """``hidden_size`` from the ``adapter_config.json`` saved beside an authors' checkpoint, if there is one."""
    import json

    directory, name = os.path.split(path)
    for candidate in (name.replace("pytorch_adapter.bin", "adapter_config.json"), "adapter_config.json"):
        config_path = os.path.join(directory, candidate)
        if candidate != name and os.path.isfile(config_path):
            try:
                with open(config_path, encoding="utf-8") as f:
                    return int(json.load(f)["hidden_size"])
            except (ValueError, KeyError, TypeError, OSError):
                return None
    return None
