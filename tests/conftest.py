"""Shared fixtures and independent float64 references for the catversion-diffusers core tests.

Everything is offline and tiny: a real ``CLIPTokenizer`` over a small word list written into a session temporary
folder, CLIP text encoders of width 32 with 5 layers, and tiny Stable Diffusion / SDXL pipelines built from configs.

The references below re-implement the method (paper eq. 4, with the authors' logit bias) from scratch in float64:
they read only the weights of the model (``nn.Linear`` / ``nn.LayerNorm`` / ``nn.Embedding`` parameters), never
its forward code, so that a test compares the library against an independent computation.
"""

import math
import os
from types import SimpleNamespace
from typing import Dict, List, Optional, Sequence, Tuple

import pytest
import torch

import catversion_diffusers  # noqa: F401  (registers the pipeline methods)
from catversion_diffusers import testing
from catversion_diffusers.attention import CatVersionAttention

HIDDEN = 32
NUM_LAYERS = 5
NUM_HEADS = 4
# Tiny models run much faster on one thread, above all on a shared, busy CPU (OpenMP threads spin and contend:
# measured 30x on this suite). OMP_NUM_THREADS, when set, wins.
if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(1)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROMPTS = ["a photo of a dog", "a red teapot on the beach", "a shiny cube shaped toy in the snow with a city"]


# ------------------------------------------------------------------------------------------------ environment
@pytest.fixture(autouse=True)
def _offline_hub(monkeypatch, tmp_path_factory):
    """No test may reach the network: the Hub is offline and its default cache is an empty temporary folder."""
    import huggingface_hub.constants as hf_constants

    cache = tmp_path_factory.mktemp("hf_cache")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    yield


# ------------------------------------------------------------------------------------------------ tiny models
@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> str:
    directory = str(tmp_path_factory.mktemp("tokenizer"))
    testing.write_clip_tokenizer_files(directory)
    return directory


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    return testing.tiny_clip_tokenizer(tokenizer_dir)


@pytest.fixture
def make_text_encoder(tokenizer):
    """Factory: a fresh random tiny CLIP text encoder (eval mode, fp32)."""

    def make(attn_implementation: Optional[str] = None, seed: int = 0, with_projection: bool = False, **kwargs):
        return testing.tiny_clip_text_model(
            tokenizer,
            kwargs.pop("hidden_size", HIDDEN),
            kwargs.pop("num_layers", NUM_LAYERS),
            kwargs.pop("num_heads", NUM_HEADS),
            seed=seed,
            with_projection=with_projection,
            attn_implementation=attn_implementation,
        )

    return make


@pytest.fixture
def text_encoder(make_text_encoder):
    return make_text_encoder()


@pytest.fixture
def sd_pipe(tokenizer_dir):
    return testing.tiny_stable_diffusion_pipeline(tokenizer_dir)


@pytest.fixture
def sdxl_pipe(tokenizer_dir):
    return testing.tiny_stable_diffusion_xl_pipeline(tokenizer_dir)


# ------------------------------------------------------------------------------------------------ helpers
def tokenize(tokenizer, prompts: Sequence[str], max_length: int = 12):
    """Padded (to ``max_length``) ids and the padding mask (1 = real token)."""
    batch = tokenizer(
        list(prompts), padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
    )
    return batch.input_ids, batch.attention_mask


def random_residuals(
    hidden_size: int, layers: Sequence[int], num_tokens: int = 1, seed: int = 0, std: float = 1.0
) -> Dict[int, Tuple[torch.Tensor, torch.Tensor]]:
    """Layer -> (key, value), standard normal like the authors' init (trained values have std ~1.1)."""
    generator = torch.Generator().manual_seed(seed)
    return {
        index: (
            torch.randn(num_tokens, hidden_size, generator=generator) * std,
            torch.randn(num_tokens, hidden_size, generator=generator) * std,
        )
        for index in layers
    }


def to_state_dict(residuals: Dict[int, Tuple[torch.Tensor, torch.Tensor]], encoder: str = "text_encoder") -> dict:
    """Format v1 tensors for ``residuals`` (names written by hand from docs/file_format.md)."""
    tensors = {}
    for index, (key, value) in residuals.items():
        tensors[f"{encoder}.layers.{index}.residual_key"] = key.clone()
        tensors[f"{encoder}.layers.{index}.residual_value"] = value.clone()
    return tensors


def encoder_layers(text_encoder):
    model = getattr(text_encoder, "text_model", text_encoder)
    return model.encoder.layers


def attention_modules(text_encoder) -> List[torch.nn.Module]:
    return [layer.self_attn for layer in encoder_layers(text_encoder)]


def count_catversion_modules(module: torch.nn.Module) -> int:
    return sum(isinstance(m, CatVersionAttention) for m in module.modules())


def state_dict_snapshot(module: torch.nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_state_dict(module: torch.nn.Module, snapshot: Dict[str, torch.Tensor]) -> None:
    current = module.state_dict()
    assert list(current) == list(snapshot)
    for key, value in snapshot.items():
        assert current[key].dtype == value.dtype, key
        assert torch.equal(current[key], value), key


# ------------------------------------------------------------------------------------------------ float64 reference
def _linear64(linear: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    weight = linear.weight.detach().double()
    out = x @ weight.T
    if linear.bias is not None:
        out = out + linear.bias.detach().double()
    return out


def _layer_norm64(norm: torch.nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight.detach().double() + norm.bias.detach().double()


def reference_attention(
    attention: torch.nn.Module,
    hidden_states: torch.Tensor,
    residuals: Sequence[Tuple[torch.Tensor, torch.Tensor, float]] = (),
    padding_mask: Optional[torch.Tensor] = None,
    num_heads: Optional[int] = None,
    return_weights: bool = False,
):
    """CLIP causal self-attention with residual K/V concatenated, written out in float64.

    Args:
        attention: the (stock or CatVersion) attention module; only its q/k/v/out projection weights are read.
        hidden_states: ``[b, l, d]`` input of the attention module.
        residuals: ``(key [n, d], value [n, d], logit_offset)`` per concept; the offset (logit bias + log(scale))
            is added to that concept's residual logits. The residual keys/values are in post-projection space.
        padding_mask: ``[b, l]``, 1 for real tokens; padded keys get no attention from any query.
        return_weights: also return the attention weights ``[b, h, l, l + N]``.

    Residual tensors are not detached, so gradients can flow back to them through the reference.
    """
    x = hidden_states.detach().double()
    b, l, d = x.shape
    h = num_heads or attention.num_heads
    dh = d // h
    q = _linear64(attention.q_proj, x)
    k = _linear64(attention.k_proj, x)
    v = _linear64(attention.v_proj, x)
    # Explicit concatenation along the token axis: K' = [K ; dk1 ; dk2 ...], V' likewise (shared over the batch).
    k_res = [r[0].double().unsqueeze(0).expand(b, -1, -1) for r in residuals]
    v_res = [r[1].double().unsqueeze(0).expand(b, -1, -1) for r in residuals]
    k_all = torch.cat([k] + k_res, dim=1)  # [b, l + N, d]
    v_all = torch.cat([v] + v_res, dim=1)
    total = k_all.shape[1]

    heads_out, heads_weights = [], []
    for head in range(h):
        cols = slice(head * dh, (head + 1) * dh)
        logits = q[:, :, cols] @ k_all[:, :, cols].transpose(1, 2) / math.sqrt(dh)  # [b, l, l + N]
        bias = torch.zeros(b, l, total, dtype=torch.float64)
        for query in range(l):
            for key in range(l):
                if key > query:
                    bias[:, query, key] = -math.inf  # causal over the text keys
        if padding_mask is not None:
            for i in range(b):
                for key in range(l):
                    if padding_mask[i, key] == 0:
                        bias[i, :, key] = -math.inf
        column = l
        for key_r, _, offset in residuals:
            for _ in range(key_r.shape[0]):
                bias[:, :, column] = offset  # every query sees every residual token
                column += 1
        weights = torch.softmax(logits + bias, dim=-1)
        heads_weights.append(weights)
        heads_out.append(weights @ v_all[:, :, cols])
    out = _linear64(attention.out_proj, torch.cat(heads_out, dim=-1))
    if return_weights:
        return out, torch.stack(heads_weights, dim=1)
    return out


def reference_text_encoder(
    text_encoder: torch.nn.Module,
    input_ids: torch.Tensor,
    residuals_by_layer: Optional[Dict[int, Sequence[Tuple[torch.Tensor, torch.Tensor, float]]]] = None,
    padding_mask: Optional[torch.Tensor] = None,
) -> SimpleNamespace:
    """The whole CLIP text transformer in float64 from its weights, with residuals in the given layers.

    Returns ``hidden_states`` (embeddings, then each layer's output) and ``last_hidden_state`` (final layer norm).
    """
    model = getattr(text_encoder, "text_model", text_encoder)
    config = model.config
    assert config.hidden_act == "quick_gelu"
    residuals_by_layer = residuals_by_layer or {}
    positions = torch.arange(input_ids.shape[1])
    x = model.embeddings.token_embedding.weight.detach().double()[input_ids]
    x = x + model.embeddings.position_embedding.weight.detach().double()[positions].unsqueeze(0)
    hidden_states = [x]
    for index, layer in enumerate(model.encoder.layers):
        attn_in = _layer_norm64(layer.layer_norm1, x)
        x = x + reference_attention(
            layer.self_attn, attn_in, residuals_by_layer.get(index, ()), padding_mask, config.num_attention_heads
        )
        mlp_in = _layer_norm64(layer.layer_norm2, x)
        hidden = _linear64(layer.mlp.fc1, mlp_in)
        hidden = hidden * torch.sigmoid(1.702 * hidden)  # quick_gelu
        x = x + _linear64(layer.mlp.fc2, hidden)
        hidden_states.append(x)
    return SimpleNamespace(hidden_states=hidden_states, last_hidden_state=_layer_norm64(model.final_layer_norm, x))


class AttentionRecorder:
    """Forward hook recording the input hidden states and the output of attention modules."""

    def __init__(self, modules):
        self.inputs: Dict[int, torch.Tensor] = {}
        self.outputs: Dict[int, torch.Tensor] = {}
        self.handles = [
            module.register_forward_hook(self._hook(i), with_kwargs=True) for i, module in enumerate(modules)
        ]

    def _hook(self, index):
        def hook(module, args, kwargs, output):
            hidden = args[0] if args else kwargs["hidden_states"]
            self.inputs[index] = hidden.detach().clone()
            self.outputs[index] = output[0].detach().clone()

        return hook

    def remove(self):
        for handle in self.handles:
            handle.remove()


@pytest.fixture
def ref():
    """The helpers and references of this file, for the test modules."""
    return SimpleNamespace(
        tokenize=tokenize,
        random_residuals=random_residuals,
        to_state_dict=to_state_dict,
        encoder_layers=encoder_layers,
        attention_modules=attention_modules,
        count_catversion_modules=count_catversion_modules,
        state_dict_snapshot=state_dict_snapshot,
        assert_same_state_dict=assert_same_state_dict,
        attention=reference_attention,
        text_encoder=reference_text_encoder,
        AttentionRecorder=AttentionRecorder,
        PROMPTS=PROMPTS,
        HIDDEN=HIDDEN,
        NUM_LAYERS=NUM_LAYERS,
    )

