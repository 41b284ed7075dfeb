"""The functional API on a bare CLIP text encoder: whole-encoder reference, bit-identity, scale semantics, bookkeeping."""

import math

import numpy as np
import pytest
import torch
from transformers.models.clip.modeling_clip import CLIPAttention

from catversion_diffusers import (
    CatVersionAdapterNameError,
    CatVersionAttention,
    CatVersionCompatibilityError,
    CatVersionFormatError,
    add_catversion_adapter,
    catversion_disabled,
    default_catversion_layers,
    delete_catversion_adapters,
    get_catversion_adapters,
    get_catversion_residuals,
    get_encoder_layers,
    set_catversion_scale,
)

TOL = dict(rtol=1e-5, atol=1e-5)
LAYERS = [2, 3, 4]


def _run(te, input_ids, **kwargs):
    with torch.no_grad():
        return te(input_ids, output_hidden_states=True, **kwargs)


# ------------------------------------------------------------------------------------------------ whole encoder
@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("padding", [False, True], ids=["no-padding-mask", "padding-mask"])
@pytest.mark.parametrize("with_projection", [False, True], ids=["CLIPTextModel", "WithProjection"])
def test_whole_encoder_matches_float64_reference(
    ref, make_text_encoder, tokenizer, attn_implementation, padding, with_projection
):
    te = make_text_encoder(attn_implementation, with_projection=with_projection)
    input_ids, mask = ref.tokenize(tokenizer, ref.PROMPTS)
    mask = mask if padding else None
    first = ref.random_residuals(ref.HIDDEN, LAYERS, 1, seed=11)
    second = ref.random_residuals(ref.HIDDEN, [4], 2, seed=12)
    add_catversion_adapter(te, "first", first, logit_bias=1.0)
    add_catversion_adapter(te, "second", second, scale=0.5)

    output = _run(te, input_ids, attention_mask=mask)
    concepts = {i: [(k, v, 1.0)] for i, (k, v) in first.items()}
    concepts[4].append((second[4][0], second[4][1], math.log(0.5)))
    expected = ref.text_encoder(te, input_ids, concepts, mask)
    assert len(output.hidden_states) == ref.NUM_LAYERS + 1
    for got, want in zip(output.hidden_states, expected.hidden_states):
        torch.testing.assert_close(got.double(), want, **TOL)
    torch.testing.assert_close(output.last_hidden_state.double(), expected.last_hidden_state, **TOL)

    # and the reference without residuals is the stock model (the reference itself is right)
    delete_catversion_adapters(te)
    stock = _run(te, input_ids, attention_mask=mask)
    torch.testing.assert_close(stock.last_hidden_state.double(), ref.text_encoder(te, input_ids, None, mask).last_hidden_state, **TOL)


def test_layers_outside_the_chosen_ones_are_untouched(ref, text_encoder, tokenizer):
    te = text_encoder
    input_ids, _ = ref.tokenize(tokenizer, ref.PROMPTS)
    before = ref.attention_modules(te)
    stock = _run(te, input_ids)
    add_catversion_adapter(te, "concept", ref.random_residuals(ref.HIDDEN, [3, 4], 1, seed=13))
    after = ref.attention_modules(te)
    for index in range(ref.NUM_LAYERS):
        if index in (3, 4):
            assert isinstance(after[index], CatVersionAttention)
            assert after[index].original_attention is before[index]
            # projections are shared, not copied
            for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
                assert getattr(after[index], name) is getattr(before[index], name)
        else:
            assert after[index] is before[index]
            assert not isinstance(after[index], CatVersionAttention)
    output = _run(te, input_ids)
    # hidden_states[i] is the input of layer i: everything up to layer 3's input is bit-identical
    for index in range(4):
        assert torch.equal(output.hidden_states[index], stock.hidden_states[index])
    for index in (4, 5):
        assert not torch.allclose(output.hidden_states[index], stock.hidden_states[index], atol=1e-4)


# ------------------------------------------------------------------------------------------------ bit identity
@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_bit_identity_with_stock(ref, make_text_encoder, tokenizer, attn_implementation):
    te = make_text_encoder(attn_implementation)
    input_ids, mask = ref.tokenize(tokenizer, ref.PROMPTS)
    originals = ref.attention_modules(te)
    snapshot = ref.state_dict_snapshot(te)
    stock = _run(te, input_ids).last_hidden_state
    stock_masked = _run(te, input_ids, attention_mask=mask).last_hidden_state

    residuals = ref.random_residuals(ref.HIDDEN, LAYERS, 2, seed=14)
    add_catversion_adapter(te, "concept", residuals, logit_bias=1.0)
    loaded = _run(te, input_ids).last_hidden_state
    assert not torch.allclose(loaded, stock, atol=1e-3)
    # the state dict is exactly the stock one while a concept is loaded (keys, order, dtypes, values)
    ref.assert_same_state_dict(te, snapshot)
    assert not any("residual" in key for key in te.state_dict())

    # scale 0: the stock computation
    set_catversion_scale(te, 0.0)
    assert torch.equal(_run(te, input_ids).last_hidden_state, stock)
    assert torch.equal(_run(te, input_ids, attention_mask=mask).last_hidden_state, stock_masked)
    set_catversion_scale(te, 1.0)
    assert torch.equal(_run(te, input_ids).last_hidden_state, loaded)

    # disabled (as for the negative prompt): the stock computation
    with catversion_disabled(te):
        assert torch.equal(_run(te, input_ids).last_hidden_state, stock)
    assert torch.equal(_run(te, input_ids).last_hidden_state, loaded)

    # unloaded: the original modules are back and the outputs are bit-identical
    delete_catversion_adapters(te, "concept")
    assert ref.count_catversion_modules(te) == 0
    for layer, original in zip(ref.encoder_layers(te), originals):
        assert layer.self_attn is original
        assert type(layer.self_attn) is CLIPAttention
    assert torch.equal(_run(te, input_ids).last_hidden_state, stock)
    assert torch.equal(_run(te, input_ids, attention_mask=mask).last_hidden_state, stock_masked)
    ref.assert_same_state_dict(te, snapshot)
    assert get_catversion_adapters(te) == {}
    assert "_catversion_adapters" not in te.__dict__


def test_scale_zero_concept_is_skipped_exactly(ref, text_encoder, tokenizer):
    te = text_encoder
    input_ids, _ = ref.tokenize(tokenizer, ref.PROMPTS)
    a = ref.random_residuals(ref.HIDDEN, LAYERS, 1, seed=15)
    b = ref.random_residuals(ref.HIDDEN, LAYERS, 2, seed=16)
    add_catversion_adapter(te, "a", a)
    only_a = _run(te, input_ids).last_hidden_state
    add_catversion_adapter(te, "b", b, scale=0.0)
    assert torch.equal(_run(te, input_ids).last_hidden_state, only_a)
    set_catversion_scale(te, {"b": 1.0})
    assert not torch.allclose(_run(te, input_ids).last_hidden_state, only_a, atol=1e-4)
    delete_catversion_adapters(te, "b")
    assert torch.equal(_run(te, input_ids).last_hidden_state, only_a)


def test_save_pretrained_while_loaded_writes_the_stock_weights(ref, text_encoder, tmp_path):
    from safetensors.torch import load_file

    te = text_encoder
    snapshot = ref.state_dict_snapshot(te)
    add_catversion_adapter(te, "concept", ref.random_residuals(ref.HIDDEN, LAYERS, 1, seed=17))
    te.save_pretrained(tmp_path)
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert set(saved) <= set(snapshot)
    for key, value in saved.items():
        assert torch.equal(value, snapshot[key])


# ------------------------------------------------------------------------------------------------ scale semantics
def test_scale_moves_attention_output_monotonically(ref, text_encoder):
    """At a CatVersion layer, every token's distance to the base output grows with the scale."""
    te = text_encoder
    base_module = ref.attention_modules(te)[4]
    x = torch.randn(2, 9, ref.HIDDEN, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        base, _ = base_module(x, attention_mask=None, is_causal=True)
    add_catversion_adapter(te, "concept", ref.random_residuals(ref.HIDDEN, [4], 1, seed=18), logit_bias=1.0)
    module = ref.attention_modules(te)[4]
    distances = []
    for scale in np.linspace(0.0, 1.0, 11):
        set_catversion_scale(te, float(scale))
        with torch.no_grad():
            out, _ = module(x, attention_mask=None, is_causal=True)
        distances.append((out - base).norm(dim=-1))  # per token
    distances = torch.stack(distances)  # [scales, b, l]
    assert torch.equal(distances[0], torch.zeros_like(distances[0]))
    assert (distances[1:] - distances[:-1] > 0).all()


def test_scale_moves_encoder_output_between_base_and_trained(ref, text_encoder, tokenizer):
    te = text_encoder
    input_ids, _ = ref.tokenize(tokenizer, ref.PROMPTS)
    base = _run(te, input_ids).last_hidden_state
    residuals = ref.random_residuals(ref.HIDDEN, LAYERS, 1, seed=19)
    add_catversion_adapter(te, "concept", residuals, logit_bias=1.0)
    trained = _run(te, input_ids).last_hidden_state  # default scale 1
    distances = []
    for scale in [0.0, 0.25, 0.5, 0.75, 1.0]:
        set_catversion_scale(te, scale)
        out = _run(te, input_ids).last_hidden_state
        distances.append((out - base).norm().item())
    assert distances[0] == 0.0
    assert all(b > a for a, b in zip(distances, distances[1:]))
    # scale 1 is the trained behaviour, bit for bit, and it is the reference with only the logit bias
    set_catversion_scale(te, 0.3)
    set_catversion_scale(te, 1.0)
    assert torch.equal(_run(te, input_ids).last_hidden_state, trained)
    expected = ref.text_encoder(te, input_ids, {i: [(k, v, 1.0)] for i, (k, v) in residuals.items()})
    torch.testing.assert_close(trained.double(), expected.last_hidden_state, **TOL)


# ------------------------------------------------------------------------------------------------ bookkeeping
def test_default_layers():
    from transformers import CLIPTextConfig, CLIPTextModel

    te = CLIPTextModel(CLIPTextConfig(hidden_size=8, intermediate_size=16, num_attention_heads=2, num_hidden_layers=5,
                                      vocab_size=50, max_position_embeddings=16))
    assert default_catversion_layers(te) == [2, 3, 4]
    assert default_catversion_layers(te, output_layer=-2) == [1, 2, 3]
    assert default_catversion_layers(te, output_layer=-3) == [0, 1, 2]
    assert default_catversion_layers(te, num_layers=1) == [4]
    assert default_catversion_layers(te, num_layers=5) == [0, 1, 2, 3, 4]
    for bad in (dict(output_layer=0), dict(output_layer=-6), dict(output_layer=-3, num_layers=4), dict(num_layers=0)):
        with pytest.raises(ValueError):
            default_catversion_layers(te, **bad)


def test_info_and_live_residuals(ref, text_encoder):
    te = text_encoder
    residuals = ref.random_residuals(ref.HIDDEN, LAYERS, 2, seed=20)
    info = add_catversion_adapter(te, "dog", residuals, logit_bias=1.0, scale=0.7, metadata={"class_word": "dog"})
    assert (info.name, info.layers, info.num_tokens, info.scale, info.logit_bias) == ("dog", LAYERS, 2, 0.7, 1.0)
    assert info.metadata == {"class_word": "dog"}
    assert list(get_catversion_adapters(te)) == ["dog"]
    live = get_catversion_residuals(te, "dog")
    assert sorted(live) == LAYERS
    for index in LAYERS:
        assert live[index][0] is residuals[index][0] and live[index][1] is residuals[index][1]
    with pytest.raises(CatVersionAdapterNameError, match="cat"):
        get_catversion_residuals(te, "cat")


def test_partial_delete_restores_only_freed_layers(ref, text_encoder, tokenizer):
    te = text_encoder
    input_ids, _ = ref.tokenize(tokenizer, ref.PROMPTS)
    originals = ref.attention_modules(te)
    a = ref.random_residuals(ref.HIDDEN, [4], 1, seed=21)
    b = ref.random_residuals(ref.HIDDEN, [2, 3, 4], 1, seed=22)
    add_catversion_adapter(te, "a", a)
    only_a = _run(te, input_ids).last_hidden_state
    add_catversion_adapter(te, "b", b)
    delete_catversion_adapters(te, ["b"])
    modules = ref.attention_modules(te)
    assert modules[2] is originals[2] and modules[3] is originals[3]
    assert isinstance(modules[4], CatVersionAttention) and list(modules[4].residuals) == ["a"]
    assert torch.equal(_run(te, input_ids).last_hidden_state, only_a)
    assert list(get_catversion_adapters(te)) == ["a"]


def test_wrapped_module_keeps_class_hooks_and_mode(ref, text_encoder):
    te = text_encoder
    original = ref.attention_modules(te)[4]
    calls = []
    handle = original.register_forward_hook(lambda module, args, output: calls.append(module))
    add_catversion_adapter(te, "concept", ref.random_residuals(ref.HIDDEN, [4], 1, seed=23))
    wrapped = ref.attention_modules(te)[4]
    assert isinstance(wrapped, CLIPAttention) and isinstance(wrapped, CatVersionAttention)
    assert not wrapped.training
    with torch.no_grad():
        te(torch.tensor([[0, 5, 6, 1]]))
    assert calls == [wrapped]
    handle.remove()
    te.train()
    assert wrapped.training
    delete_catversion_adapters(te)
    assert ref.attention_modules(te)[4] is original and original.training
    with pytest.raises(TypeError):
        CatVersionAttention(wrapped)


@pytest.mark.parametrize(
    "make_residuals, error",
    [
        (lambda r: {4: (torch.randn(1, 16), torch.randn(1, 16))}, CatVersionCompatibilityError),
        (lambda r: {2: (torch.randn(1, 32), torch.randn(1, 32)), 5: (torch.randn(1, 32), torch.randn(1, 32))}, CatVersionCompatibilityError),
        (lambda r: {-1: (torch.randn(1, 32), torch.randn(1, 32))}, CatVersionCompatibilityError),
        (lambda r: {4: (torch.randn(1, 32), torch.full((1, 32), float("nan")))}, CatVersionFormatError),
        (lambda r: {4: (torch.randn(1, 32), torch.randn(2, 32))}, CatVersionFormatError),
        (lambda r: {4: (torch.randn(32), torch.randn(32))}, CatVersionFormatError),
        (lambda r: {4: (torch.ones(1, 32, dtype=torch.long), torch.ones(1, 32, dtype=torch.long))}, CatVersionFormatError),
        (lambda r: {4: (torch.randn(1, 32),)}, CatVersionFormatError),
        (lambda r: {}, CatVersionFormatError),
    ],
    ids=["hidden-size", "layer-out-of-range", "negative-layer", "nan", "token-mismatch", "1-d", "integer", "no-value", "empty"],
)
def test_add_rejects_bad_residuals_without_touching_the_model(ref, text_encoder, make_residuals, error):
    te = text_encoder
    originals = ref.attention_modules(te)
    with pytest.raises(error) as info:
        add_catversion_adapter(te, "bad", make_residuals(ref))
    assert str(info.value)  # a message
    assert ref.attention_modules(te) == originals and ref.count_catversion_modules(te) == 0
    assert get_catversion_adapters(te) == {}


def test_add_rejects_bad_names_and_scales(ref, text_encoder, tokenizer):
    te = text_encoder
    input_ids, _ = ref.tokenize(tokenizer, ref.PROMPTS)
    residuals = ref.random_residuals(ref.HIDDEN, LAYERS, 1, seed=24)
    add_catversion_adapter(te, "concept", residuals)
    before = _run(te, input_ids).last_hidden_state
    with pytest.raises(CatVersionAdapterNameError, match="already loaded"):
        add_catversion_adapter(te, "concept", ref.random_residuals(ref.HIDDEN, LAYERS, 1, seed=25))
    with pytest.raises(CatVersionAdapterNameError):
        add_catversion_adapter(te, "", residuals)
    for scale in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="scale"):
            add_catversion_adapter(te, "other", residuals, scale=scale)
        with pytest.raises(ValueError, match="scale"):
            set_catversion_scale(te, scale)
    with pytest.raises(CatVersionFormatError):
        add_catversion_adapter(te, "other", residuals, logit_bias=float("nan"))
    with pytest.raises(CatVersionAdapterNameError):
        set_catversion_scale(te, {"unknown": 1.0})
    with pytest.raises(CatVersionAdapterNameError):
        delete_catversion_adapters(te, "unknown")
    assert list(get_catversion_adapters(te)) == ["concept"]
    assert get_catversion_adapters(te)["concept"].scale == 1.0
    assert torch.equal(_run(te, input_ids).last_hidden_state, before)


def test_not_a_clip_text_encoder():
    with pytest.raises(CatVersionCompatibilityError, match="CLIP"):
        get_encoder_layers(torch.nn.Linear(2, 2))
