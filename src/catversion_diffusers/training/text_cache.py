"""Text conditioning for training, with the residual-independent part of the text encoder computed once.

The training captions are a fixed set (templates x class word), and the residuals sit in the last layers of the
encoder. The hidden states entering the first residual layer therefore never change during training: they are
captured once per caption (with the exact arguments the encoder passes to that layer), and each step only runs the
layers from there on (+ the final layer norm / projection the pipeline uses). A self-check at setup compares this with
the full encoder on every caption and falls back to the full encoder, with a warning, if they ever disagree.
"""

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..text_encoder import get_encoder_layers
from ..utils import get_logger

logger = get_logger(__name__)


def _inner_model(text_encoder: nn.Module) -> nn.Module:
    return getattr(text_encoder, "text_model", text_encoder)


def tokenize(tokenizer, prompts: Sequence[str]) -> torch.Tensor:
    """Token ids as the Stable Diffusion pipelines make them (padded to the model length, truncated, no mask)."""
    return tokenizer(
        list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


class EncoderSpec:
    """What a pipeline takes from one text encoder.

    Args:
        hidden_state_index (`int` or None): None: ``last_hidden_state`` (after the final layer norm, SD 1.x/2.x);
            otherwise the index into ``hidden_states`` (SDXL: -2, no final layer norm).
        pooled (`bool`): whether the projected pooled output (``text_embeds``) is used too (SDXL's second encoder).
    """

    def __init__(self, hidden_state_index: Optional[int] = None, pooled: bool = False):
        self.hidden_state_index = hidden_state_index
        self.pooled = pooled


def reference_encode(text_encoder: nn.Module, input_ids: torch.Tensor, spec: EncoderSpec):
    """The full text encoder, exactly as the diffusers pipelines call it. Returns (embeddings, pooled or None)."""
    if spec.hidden_state_index is None and not spec.pooled:
        return text_encoder(input_ids, attention_mask=None)[0], None
    out = text_encoder(input_ids, output_hidden_states=True)
    embeds = out[0] if spec.hidden_state_index is None else out.hidden_states[spec.hidden_state_index]
    pooled = out[0] if spec.pooled else None
    return embeds, pooled


class CachedTextEncoder:
    """One text encoder with its layers before ``start`` replaced by a cache, for a fixed set of captions."""

    def __init__(self, text_encoder: nn.Module, input_ids: torch.Tensor, start: int, spec: EncoderSpec):
        self.text_encoder = text_encoder
        self.input_ids = input_ids
        self.spec = spec
        self.layers = get_encoder_layers(text_encoder)
        num_layers = len(self.layers)
        self.start = start
        if spec.hidden_state_index is None or spec.pooled:
            self.stop = num_layers - 1
        else:
            self.stop = num_layers + spec.hidden_state_index  # hidden_states[-j] is the output of layer L - j
        self.output_layer = None if spec.hidden_state_index is None else num_layers + spec.hidden_state_index
        self.num_rows = input_ids.shape[0]

        captured: Dict[str, Any] = {}

        def capture(module, args, kwargs):
            captured["args"], captured["kwargs"] = args, dict(kwargs)

        handle = self.layers[start].register_forward_pre_hook(capture, with_kwargs=True)
        try:
            with torch.no_grad():
                reference_encode(text_encoder, input_ids, spec)
        finally:
            handle.remove()
        args, kwargs = captured["args"], captured["kwargs"]
        if args:
            self.hidden, self.args = args[0].detach(), tuple(args[1:])
        else:
            self.hidden, self.args = kwargs.pop("hidden_states").detach(), ()
        self.kwargs = {k: v for k, v in kwargs.items() if k not in ("output_hidden_states",)}
        model = _inner_model(text_encoder)
        self.final_layer_norm = model.final_layer_norm
        self.projection = getattr(text_encoder, "text_projection", None)
        eos = getattr(model, "eos_token_id", None)
        if eos is None:
            eos = getattr(getattr(text_encoder, "config", None), "eos_token_id", 2)
        ids = input_ids.to(torch.int)
        self.pooled_index = ids.argmax(dim=-1) if eos == 2 else (ids == eos).int().argmax(dim=-1)

    def _select(self, value: Any, rows: torch.Tensor) -> Any:
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == self.num_rows and self.num_rows > 1:
            return value.index_select(0, rows.to(value.device))
        return value

    def encode(self, rows: torch.Tensor):
        """(embeddings, pooled or None) for the captions ``rows`` (indices into the cached set)."""
        hidden = self.hidden.index_select(0, rows.to(self.hidden.device))
        args = tuple(self._select(a, rows) for a in self.args)
        kwargs = {k: self._select(v, rows) for k, v in self.kwargs.items()}
        embeds = None
        for index in range(self.start, self.stop + 1):
            out = self.layers[index](hidden, *args, **kwargs)
            hidden = out[0] if isinstance(out, (tuple, list)) else out
            if index == self.output_layer:
                embeds = hidden
        pooled = None
        if self.spec.hidden_state_index is None or self.spec.pooled:
            final = self.final_layer_norm(hidden)
            if self.spec.hidden_state_index is None:
                embeds = final
            if self.spec.pooled:
                index = self.pooled_index.to(final.device).index_select(0, rows.to(final.device))
                pooled = final[torch.arange(final.shape[0], device=final.device), index]
                if self.projection is not None:
                    pooled = self.projection(pooled)
        return embeds, pooled


class TrainingTextEncoder:
    """Conditioning (``encoder_hidden_states`` and, for SDXL, the pooled ``text_embeds``) for caption indices.

    Args:
        encoders (`List[Tuple[nn.Module, torch.Tensor, EncoderSpec, int]]`): per text encoder of the pipeline, in
            order: the module, the token ids of every caption, what the pipeline takes from it, and its first
            residual layer.
        use_cache (`bool`): run only the layers from the first residual layer on (checked against the full encoder).
    """

    def __init__(self, encoders: List[Tuple[nn.Module, torch.Tensor, EncoderSpec, int]], use_cache: bool = True):
        self.encoders = encoders
        self.cached: Optional[List[CachedTextEncoder]] = None
        if use_cache:
            try:
                self.cached = [CachedTextEncoder(te, ids, start, spec) for te, ids, spec, start in encoders]
            except Exception as error:  # an encoder whose layers cannot be called one by one
                logger.warning(f"Text-encoder caching is off ({type(error).__name__}: {error}); using the full encoder.")
                self.cached = None

    @property
    def uses_cache(self) -> bool:
        return self.cached is not None

    def full(self, rows: torch.Tensor):
        embeds, pooled = [], None
        for te, ids, spec, _ in self.encoders:
            device = next(te.parameters()).device
            e, p = reference_encode(te, ids.index_select(0, rows.cpu()).to(device), spec)
            embeds.append(e)
            pooled = p if p is not None else pooled
        return torch.cat(embeds, dim=-1) if len(embeds) > 1 else embeds[0], pooled

    def fast(self, rows: torch.Tensor):
        embeds, pooled = [], None
        for cache in self.cached:
            e, p = cache.encode(rows)
            embeds.append(e)
            pooled = p if p is not None else pooled
        return torch.cat(embeds, dim=-1) if len(embeds) > 1 else embeds[0], pooled

    def __call__(self, rows: torch.Tensor):
        """Conditioning of captions ``rows`` (duplicates are encoded once)."""
        unique, inverse = torch.unique(rows.cpu(), return_inverse=True)
        embeds, pooled = self.fast(unique) if self.cached is not None else self.full(unique)
        inverse = inverse.to(embeds.device)
        return embeds.index_select(0, inverse), (pooled.index_select(0, inverse) if pooled is not None else None)

    def self_check(self) -> bool:
        """Compare the cached path with the full encoder on every caption; switch the cache off if they differ."""
        if self.cached is None:
            return False
        rows = torch.arange(self.encoders[0][1].shape[0])
        with torch.no_grad():
            fast = self.fast(rows)
            full = self.full(rows)
        for a, b in zip(fast, full):
            if (a is None) != (b is None):
                ok = False
                break
            if a is None:
                continue
            tolerance = 1e-4 if a.dtype == torch.float32 else 2e-2
            scale = max(1.0, float(b.abs().max()))
            ok = a.shape == b.shape and float((a.float() - b.float()).abs().max()) <= tolerance * scale
            if not ok:
                break
        else:
            ok = True
        if not ok:
            logger.warning(
                "The cached text-encoder path does not reproduce the full text encoder for this model; caching is "
                "off (training is correct, a little slower)."
            )
            self.cached = None
        return ok
