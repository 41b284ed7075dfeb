"""Functional API: put CatVersion residuals into a bare CLIP text encoder, control them, take them out.

This is what ``CatVersionLoaderMixin`` uses for each text encoder of a pipeline, and what notebooks or other
libraries can call directly::

    from catversion_diffusers import add_catversion_adapter, set_catversion_scale, delete_catversion_adapters

    add_catversion_adapter(text_encoder, "my-dog", {9: (k9, v9), 10: (k10, v10), 11: (k11, v11)})
    set_catversion_scale(text_encoder, {"my-dog": 0.7})
    delete_catversion_adapters(text_encoder)  # the stock modules are back
"""

import contextlib
import math
from dataclasses import dataclass, field
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .attention import CatVersionAttention, ResidualKV
from .errors import CatVersionAdapterNameError, CatVersionCompatibilityError, CatVersionFormatError

LayerResiduals = Mapping[int, Tuple[torch.Tensor, torch.Tensor]]

NUM_FEATURE_DENSE_LAYERS = 3  # the paper's "last three self-attention layers"


@dataclass
class CatVersionAdapterInfo:
    """What is loaded under one adapter name in one text encoder."""

    name: str
    layers: List[int]
    num_tokens: int
    scale: float
    logit_bias: float
    metadata: Dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------------ layers
def get_encoder_layers(text_encoder: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a CLIP text encoder, whatever the transformers version.

    transformers >= 5.6 ``CLIPTextModel`` has ``encoder.layers``; ``CLIPTextModelWithProjection`` and 4.x models
    nest them under ``text_model``.
    """
    model = getattr(text_encoder, "text_model", text_encoder)
    layers = getattr(getattr(model, "encoder", None), "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0 or not hasattr(layers[0], "self_attn"):
        raise CatVersionCompatibilityError(
            f"{type(text_encoder).__name__} does not look like a CLIP text encoder: no `encoder.layers[*].self_attn` "
            "found (also under `.text_model`). CatVersion needs a transformers CLIPTextModel or "
            "CLIPTextModelWithProjection."
        )
    return layers


def text_encoder_hidden_size(text_encoder: nn.Module) -> int:
    return int(get_encoder_layers(text_encoder)[0].self_attn.k_proj.out_features)


def default_catversion_layers(
    text_encoder: nn.Module, output_layer: int = -1, num_layers: int = NUM_FEATURE_DENSE_LAYERS
) -> List[int]:
    """The last ``num_layers`` encoder layers whose output feeds the conditioning (0-based indices).

    Args:
        text_encoder (`nn.Module`): the CLIP text encoder.
        output_layer (`int`, defaults to -1): which entry of ``hidden_states`` the pipeline conditions on: -1 for
            the final layer (Stable Diffusion 1.x/2.x), -2 for the penultimate (SDXL, or SD with ``clip_skip=1``),
            ``-(clip_skip + 1)`` in general.
        num_layers (`int`, defaults to 3): how many layers, counting back from that one.
    """
    total = len(get_encoder_layers(text_encoder))
    if output_layer >= 0 or -output_layer > total:
        raise ValueError(f"`output_layer` must be in [-{total}, -1] for a {total}-layer encoder, got {output_layer}.")
    last = total + output_layer
    if not 1 <= num_layers <= last + 1:
        raise ValueError(f"`num_layers` must be in [1, {last + 1}] when the output layer is {output_layer}.")
    return list(range(last - num_layers + 1, last + 1))


def _catversion_modules(text_encoder: nn.Module) -> Dict[int, CatVersionAttention]:
    return {
        index: layer.self_attn
        for index, layer in enumerate(get_encoder_layers(text_encoder))
        if isinstance(layer.self_attn, CatVersionAttention)
    }


def _registry(text_encoder: nn.Module, create: bool = False) -> Dict[str, Dict[str, str]]:
    """Adapter name -> metadata, kept as a plain attribute of the text encoder (not in its state dict)."""
    if create:
        return text_encoder.__dict__.setdefault("_catversion_adapters", {})
    return text_encoder.__dict__.get("_catversion_adapters", {})


# ------------------------------------------------------------------------------------------------------ checks
def validate_residuals(text_encoder: nn.Module, residuals: LayerResiduals, source: str = "the residuals") -> int:
    """Check layer indices, shapes and values against ``text_encoder``; return the number of residual tokens."""
    layers = get_encoder_layers(text_encoder)
    hidden_size = text_encoder_hidden_size(text_encoder)
    num_heads = getattr(layers[0].self_attn, "num_heads", None)
    if not residuals:
        raise CatVersionFormatError(f"{source} hold no layer at all: nothing to load.")
    num_tokens = None
    for index, pair in residuals.items():
        if not isinstance(index, int) or not 0 <= index < len(layers):
            raise CatVersionCompatibilityError(
                f"{source} target layer {index!r}, but this text encoder has layers 0..{len(layers) - 1}. The file "
                "was made for a deeper encoder: load it into the model it was trained on."
            )
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise CatVersionFormatError(f"{source}: layer {index} must map to a (key, value) pair of tensors.")
        for kind, tensor in zip(("key", "value"), pair):
            if not isinstance(tensor, torch.Tensor) or tensor.dim() != 2:
                raise CatVersionFormatError(
                    f"{source}: layer {index} residual {kind} must be a 2-D tensor [num_tokens, hidden_size], got "
                    f"{getattr(tensor, 'shape', type(tensor).__name__)}."
                )
            if not tensor.is_floating_point():
                raise CatVersionFormatError(f"{source}: layer {index} residual {kind} has dtype {tensor.dtype}.")
            if tensor.shape[1] != hidden_size:
                raise CatVersionCompatibilityError(
                    f"{source}: layer {index} residual {kind} has hidden size {tensor.shape[1]}, but this text encoder "
                    f"has {hidden_size}. The residuals were trained for another base model (e.g. SD1.x uses 768, "
                    "SD2.x 1024): load them into that model."
                )
            if num_tokens is None:
                num_tokens = tensor.shape[0]
            if tensor.shape[0] != num_tokens or num_tokens < 1:
                raise CatVersionFormatError(
                    f"{source}: every residual must have the same number of tokens (>= 1); layer {index} {kind} has "
                    f"{tensor.shape[0]}, expected {num_tokens}."
                )
            if not torch.isfinite(tensor.detach()).all():
                raise CatVersionFormatError(
                    f"{source}: layer {index} residual {kind} contains NaN or inf values. The file is corrupt or the "
                    "training diverged (try a lower learning rate)."
                )
    if num_heads and hidden_size % int(num_heads):
        raise CatVersionCompatibilityError(f"hidden size {hidden_size} does not split into {num_heads} heads.")
    return int(num_tokens)


def _check_scale(name: str, scale: float) -> float:
    scale = float(scale)
    if not math.isfinite(scale) or scale < 0:
        raise ValueError(f"The scale of adapter {name!r} must be a finite number >= 0, got {scale}.")
    return scale


# ------------------------------------------------------------------------------------------------------ public API
def add_catversion_adapter(
    text_encoder: nn.Module,
    adapter_name: str,
    residuals: LayerResiduals,
    *,
    logit_bias: float = 0.0,
    scale: float = 1.0,
    metadata: Optional[Mapping[str, str]] = None,
) -> CatVersionAdapterInfo:
    """Concatenate a concept's residual Keys/Values to the given layers of ``text_encoder``.

    Everything is checked before the model is touched: on error the text encoder is exactly as before.

    Args:
        text_encoder (`nn.Module`): a transformers CLIP text encoder.
        adapter_name (`str`): name of the concept; must not be loaded already.
        residuals (`Mapping[int, Tuple[torch.Tensor, torch.Tensor]]`): 0-based layer index -> ``(key, value)``,
            each ``[num_tokens, hidden_size]``. Tensors are used as given (``nn.Parameter`` stay trainable).
        logit_bias (`float`, defaults to 0.0): added to the residual tokens' attention logits (1.0 for the
            authors' checkpoints).
        scale (`float`, defaults to 1.0): runtime strength, see ``set_catversion_scale``.
        metadata (`Mapping[str, str]`, *optional*): informative strings kept with the adapter (class word...).
    """
    if not isinstance(adapter_name, str) or not adapter_name:
        raise CatVersionAdapterNameError(f"`adapter_name` must be a non-empty string, got {adapter_name!r}.")
    if adapter_name in _registry(text_encoder):
        raise CatVersionAdapterNameError(
            f"An adapter named {adapter_name!r} is already loaded. Pass another `adapter_name`, or unload it first "
            f"with `unload_catversion({adapter_name!r})`."
        )
    num_tokens = validate_residuals(text_encoder, residuals, f"adapter {adapter_name!r}")
    scale = _check_scale(adapter_name, scale)
    logit_bias = float(logit_bias)
    if not math.isfinite(logit_bias):
        raise CatVersionFormatError(f"adapter {adapter_name!r}: logit_bias must be finite, got {logit_bias}.")

    layers = get_encoder_layers(text_encoder)
    for index in sorted(residuals):
        layer = layers[index]
        if not isinstance(layer.self_attn, CatVersionAttention):
            layer.self_attn = CatVersionAttention(layer.self_attn)
        key, value = residuals[index]
        layer.self_attn.residuals[adapter_name] = ResidualKV(key, value, logit_bias=logit_bias, scale=scale)
    _registry(text_encoder, create=True)[adapter_name] = dict(metadata or {})
    return get_catversion_adapters(text_encoder)[adapter_name]


def delete_catversion_adapters(text_encoder: nn.Module, adapter_names: Union[str, Iterable[str], None] = None) -> None:
    """Remove adapters (all when ``adapter_names`` is None); layers left without any get their stock module back."""
    registry = _registry(text_encoder)
    names = list(registry) if adapter_names is None else _as_names(adapter_names)
    _check_known(text_encoder, names)
    layers = get_encoder_layers(text_encoder)
    for index, module in _catversion_modules(text_encoder).items():
        for name in names:
            module.residuals.pop(name, None)
        if not module.residuals:
            layers[index].self_attn = module.restore()
    for name in names:
        registry.pop(name)
    if not registry:
        text_encoder.__dict__.pop("_catversion_adapters", None)


def set_catversion_scale(text_encoder: nn.Module, scales: Union[float, Mapping[str, float]]) -> None:
    """Set the runtime strength of loaded adapters.

    Args:
        scales (`float` or `Mapping[str, float]`): one scale for every adapter, or adapter name -> scale. Scale 0
            gives the base model exactly, 1 the trained behaviour; in between (and above 1) the residual tokens'
            unnormalised attention weight is multiplied by the scale (``log(scale)`` added to their logits).
    """
    names = list(_registry(text_encoder))
    if not isinstance(scales, Mapping):
        scales = {name: scales for name in names}
    _check_known(text_encoder, list(scales))
    checked = {name: _check_scale(name, value) for name, value in scales.items()}
    for module in _catversion_modules(text_encoder).values():
        for name, value in checked.items():
            if name in module.residuals:
                module.residuals[name].scale = value


def get_catversion_adapters(text_encoder: nn.Module) -> Dict[str, CatVersionAdapterInfo]:
    """Adapter name -> ``CatVersionAdapterInfo`` (layers, number of tokens, scale, logit bias, metadata)."""
    infos: Dict[str, CatVersionAdapterInfo] = {}
    modules = _catversion_modules(text_encoder)
    for name, metadata in _registry(text_encoder).items():
        entries = {index: m.residuals[name] for index, m in modules.items() if name in m.residuals}
        first = next(iter(entries.values()))
        infos[name] = CatVersionAdapterInfo(
            name=name,
            layers=sorted(entries),
            num_tokens=first.num_tokens,
            scale=first.scale,
            logit_bias=first.logit_bias,
            metadata=dict(metadata),
        )
    return infos


def get_catversion_residuals(text_encoder: nn.Module, adapter_name: str) -> Dict[int, Tuple[torch.Tensor, torch.Tensor]]:
    """Layer index -> ``(key, value)`` tensors of one adapter (the live tensors, not copies)."""
    _check_known(text_encoder, [adapter_name])
    return {
        index: (m.residuals[adapter_name].key, m.residuals[adapter_name].value)
        for index, m in sorted(_catversion_modules(text_encoder).items())
        if adapter_name in m.residuals
    }


@contextlib.contextmanager
def catversion_disabled(text_encoder: nn.Module) -> Iterator[None]:
    """Context manager in which ``text_encoder`` runs as the stock model (e.g. for the negative prompt)."""
    modules = list(_catversion_modules(text_encoder).values())
    previous = [m.residuals_enabled for m in modules]
    for m in modules:
        m.residuals_enabled = False
    try:
        yield
    finally:
        for m, state in zip(modules, previous):
            m.residuals_enabled = state


def _as_names(names: Union[str, Iterable[str]]) -> List[str]:
    return [names] if isinstance(names, str) else list(names)


def _check_known(text_encoder: nn.Module, names: Sequence[str]) -> None:
    known = _registry(text_encoder)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise CatVersionAdapterNameError(
            f"No CatVersion adapter named {', '.join(map(repr, unknown))} is loaded. Loaded: "
            f"{sorted(known) or 'none'} (see `get_catversion_adapters()`)."
        )
