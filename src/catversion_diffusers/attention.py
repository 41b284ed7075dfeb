"""CatVersion attention: CLIP self-attention with learnable residual Keys and Values concatenated.

This file holds all the math of the method (paper, section 4.2, eq. 4). For a text feature ``f`` of ``l`` tokens
and the residual embeddings ``Δk, Δv`` of ``n`` tokens (post-projection space, split per head like any key)::

    Q  = W_q f                          # [l, d]
    K' = [W_k f ; Δk]                   # [l + n, d]
    V' = [W_v f ; Δv]                   # [l + n, d]
    A' = softmax(Q K'ᵀ / sqrt(d') + M)  # [l, l + n]
    out = W_o (A' V')                   # [l, d]

``M`` is the logit mask. On the ``l`` text keys it is the encoder's own mask (causal, plus padding when a padding
mask is given). On the ``n`` residual keys it is never ``-inf``: every query sees them, and their logit gets

    bias = logit_bias + log(scale)

``logit_bias`` is 0.0 in the paper and 1.0 in the authors' code (their prefix-tuning mask adds +1 to the prefix
logit). ``log(scale)`` multiplies the residual tokens' unnormalised attention weight by ``scale``: scale 1 is the
trained behaviour, scale 0 removes the concept exactly (the concept is then skipped altogether), and the output
moves monotonically between the two. Several concepts are simply more residual tokens, each with its own bias.

With no active concept the stock ``CLIPAttention.forward`` runs unchanged, so outputs are bit-identical to the
model without CatVersion.
"""

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ResidualKV:
    """The residual Keys and Values of one concept in one attention layer.

    Args:
        key (`torch.Tensor`): residual keys ``Δk`` of shape ``[num_tokens, hidden_size]``.
        value (`torch.Tensor`): residual values ``Δv`` of shape ``[num_tokens, hidden_size]``.
        logit_bias (`float`, defaults to 0.0): constant added to the residual tokens' attention logits.
        scale (`float`, defaults to 1.0): runtime strength; ``log(scale)`` is added to the same logits.
    """

    key: torch.Tensor
    value: torch.Tensor
    logit_bias: float = 0.0
    scale: float = 1.0

    @property
    def num_tokens(self) -> int:
        return self.key.shape[0]

    def logit_offset(self) -> float:
        return self.logit_bias + math.log(self.scale)


class CatVersionAttention(nn.Module):
    """Drop-in replacement of transformers' ``CLIPAttention`` that concatenates residual Keys and Values.

    The replacement shares the original ``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj`` modules (no weight copy,
    same state-dict keys, so a peft LoRA on them keeps working) and keeps the original module to restore it. It
    accepts the forward signatures of transformers 5.x (``hidden_states, attention_mask=None, **kwargs``) and 4.5x
    (``hidden_states, attention_mask, causal_attention_mask, output_attentions``), the ``sdpa`` and ``eager``
    implementations, any floating dtype and device.

    Residuals are not registered as parameters or buffers: the text encoder's ``state_dict()`` stays exactly the
    stock one. They are cast to the query's device and dtype on the fly (they are a few KB), so they follow
    ``pipe.to(...)`` and CPU offloading, and keep fp32 masters during mixed-precision training.

    Args:
        attention (`nn.Module`): the ``CLIPAttention`` module to wrap.
    """

    def __new__(cls, attention: Optional[nn.Module] = None):
        # Also an instance of the wrapped class (e.g. CLIPAttention), so that isinstance-based machinery such as
        # transformers' output-recording hooks still recognises the module. ``attention`` is optional because
        # copy.deepcopy re-creates the (already mixed) class without arguments.
        if cls is CatVersionAttention and isinstance(attention, nn.Module):
            cls = _catversion_subclass(type(attention))
        return super().__new__(cls)

    def __init__(self, attention: nn.Module):
        nn.Module.__init__(self)  # not the wrapped class's __init__: nothing is rebuilt
        for name, value in vars(attention).items():
            if not name.startswith("_") and name != "training":
                setattr(self, name, value)  # config, embed_dim, num_heads, head_dim, scale, dropout, is_causal...
        for name, child in attention.named_children():
            setattr(self, name, child)  # shared, not copied
        for hooks in _HOOK_DICTS:  # shared: hooks registered on either module apply to both
            if hasattr(attention, hooks):
                setattr(self, hooks, getattr(attention, hooks))
        self.train(attention.training)
        # Plain attributes (not registered): the original module and the residuals of each concept.
        self.__dict__["original_attention"] = attention
        self.residuals: Dict[str, ResidualKV] = {}
        self.residuals_enabled = True

    # ------------------------------------------------------------------------------------------------ bookkeeping
    def restore(self) -> nn.Module:
        """Return the original module, carrying over the current projections (e.g. LoRA layers added since)."""
        original = self.__dict__["original_attention"]
        for name, child in self.named_children():
            setattr(original, name, child)
        original.train(self.training)
        return original

    def active_residuals(self) -> List[ResidualKV]:
        if not self.residuals_enabled:
            return []
        return [r for r in self.residuals.values() if r.scale != 0.0]

    # ------------------------------------------------------------------------------------------------ forward
    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        active = self.active_residuals()
        if not active:
            # Exactly the stock computation, with this module's (shared) projections.
            return type(self.original_attention).forward(self, hidden_states, *args, **kwargs)

        attention_mask, causal_attention_mask, output_attentions = _parse_mask_arguments(args, kwargs)
        batch_size, seq_len, _ = hidden_states.shape
        heads_shape = (batch_size, seq_len, -1, self.head_dim)

        queries = self.q_proj(hidden_states).view(heads_shape).transpose(1, 2)  # [b, h, l, dh]
        keys = self.k_proj(hidden_states).view(heads_shape).transpose(1, 2)
        values = self.v_proj(hidden_states).view(heads_shape).transpose(1, 2)
        num_heads = queries.shape[1]

        # K' = [K ; Δk], V' = [V ; Δv]: residuals split per head like ordinary keys, shared over the batch.
        residual_keys = self._residual_heads([r.key for r in active], queries, num_heads)
        residual_values = self._residual_heads([r.value for r in active], queries, num_heads)
        keys = torch.cat([keys, residual_keys.expand(batch_size, -1, -1, -1)], dim=2)
        values = torch.cat([values, residual_values.expand(batch_size, -1, -1, -1)], dim=2)

        is_causal = kwargs.get("is_causal", True) if causal_attention_mask is None else False
        text_mask = _text_logit_mask(
            attention_mask, causal_attention_mask, is_causal, seq_len, queries.dtype, queries.device
        )
        residual_bias = torch.tensor(
            [r.logit_offset() for r in active for _ in range(r.num_tokens)], dtype=queries.dtype, device=queries.device
        )
        mask = torch.cat(
            [
                text_mask.expand(batch_size, -1, seq_len, seq_len),
                residual_bias.expand(batch_size, text_mask.shape[1], seq_len, -1),
            ],
            dim=-1,
        )

        dropout = self.dropout if self.training else 0.0
        attn_weights = None
        if getattr(self.config, "_attn_implementation", "sdpa") == "eager":
            scores = torch.matmul(queries, keys.transpose(-1, -2)) * self.scale + mask
            attn_weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(queries.dtype)
            attn_weights = F.dropout(attn_weights, p=dropout, training=self.training)
            attn_output = torch.matmul(attn_weights, values)
        else:  # sdpa, and any kernel that cannot take an arbitrary mask
            attn_output = F.scaled_dot_product_attention(
                queries, keys, values, attn_mask=mask, dropout_p=dropout, is_causal=False, scale=self.scale
            )

        attn_output = attn_output.transpose(1, 2).reshape(batch_size, seq_len, -1).contiguous()
        attn_output = self.out_proj(attn_output)
        return attn_output, (attn_weights if output_attentions is not False else None)

    @staticmethod
    def _residual_heads(tensors: List[torch.Tensor], like: torch.Tensor, num_heads: int) -> torch.Tensor:
        stacked = torch.cat([t.to(device=like.device, dtype=like.dtype) for t in tensors], dim=0)  # [n, d]
        return stacked.view(1, stacked.shape[0], num_heads, -1).transpose(1, 2)  # [1, h, n, dh]


_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
)
_SUBCLASSES: Dict[type, type] = {}


def _catversion_subclass(attention_class: type) -> type:
    """``CatVersionAttention`` mixed with the wrapped attention class (cached, one per class)."""
    if issubclass(attention_class, CatVersionAttention):
        raise TypeError("This attention module is already a CatVersionAttention.")
    if attention_class not in _SUBCLASSES:
        _SUBCLASSES[attention_class] = type(
            f"CatVersion{attention_class.__name__}", (CatVersionAttention, attention_class), {"__module__": __name__}
        )
    return _SUBCLASSES[attention_class]


def _parse_mask_arguments(args: tuple, kwargs: dict) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], Any]:
    """Read (attention_mask, causal_attention_mask, output_attentions) from either transformers signature."""
    names = ("attention_mask", "causal_attention_mask", "output_attentions")
    values = [args[i] if i < len(args) else kwargs.get(name) for i, name in enumerate(names)]
    if values[2] is None:
        values[2] = True  # transformers 5.x records attentions through hooks: always return the weights we have
    return values[0], values[1], values[2]


def _text_logit_mask(
    attention_mask: Optional[torch.Tensor],
    causal_attention_mask: Optional[torch.Tensor],
    is_causal: bool,
    seq_len: int,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """The additive logit mask over the text keys, shape ``[b or 1, h or 1, l, l]``, never ``-inf``.

    Accepts boolean masks (True = attend, as transformers 5.x builds for sdpa) and additive float masks (as 5.x
    builds for eager, and 4.5x builds for every implementation, with the causal part passed separately).
    """
    minimum = torch.finfo(dtype).min
    parts = []
    for mask in (attention_mask, causal_attention_mask):
        if mask is None:
            continue
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(~mask.to(device), minimum)
        parts.append(mask.to(device=device, dtype=torch.float32))
    if not parts:
        if not is_causal:
            return torch.zeros(1, 1, seq_len, seq_len, dtype=dtype, device=device)
        causal = torch.full((seq_len, seq_len), minimum, dtype=dtype, device=device).triu(1)
        return causal.view(1, 1, seq_len, seq_len)
    total = parts[0] if len(parts) == 1 else parts[0] + parts[1]
    return total.clamp(min=minimum).to(dtype)
