"""CatVersionAttention against an independent float64 multi-head attention over explicitly concatenated K/V.

Each test runs a real tiny ``CLIPTextModel`` with residuals loaded, records the input and output of the attention
modules with forward hooks, and compares the outputs with ``conftest.reference_attention``: post-projection
residual keys/values split per head, seen by every query, text keys causal, padded keys masked when the text
model gets a padding ``attention_mask``, ``logit_bias + log(scale)`` added to the residual logits.
"""

import math

import pytest
import torch

from catversion_diffusers import (
    CatVersionAttention,
    add_catversion_adapter,
    delete_catversion_adapters,
    set_catversion_scale,
)

FP32_TOL = dict(rtol=1e-5, atol=1e-5)
LAYERS = [2, 3, 4]  # the last three of the 5-layer tiny encoder


def _run_and_check(ref, te, input_ids, padding_mask, concepts_by_layer, tol=FP32_TOL, pass_mask=True):
    """Run ``te`` and compare every attention module with the reference (residual-free layers too)."""
    recorder = ref.AttentionRecorder(ref.attention_modules(te))
    try:
        with torch.no_grad():
            output = te(input_ids, attention_mask=padding_mask if pass_mask else None)
    finally:
        recorder.remove()
    for index, module in enumerate(ref.attention_modules(te)):
        expected = ref.attention(
            module, recorder.inputs[index], concepts_by_layer.get(index, ()), padding_mask if pass_mask else None
        )
        torch.testing.assert_close(recorder.outputs[index].double(), expected, **tol)
    return output


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("logit_bias", [0.0, 1.0])
@pytest.mark.parametrize("num_tokens", [1, 2])
@pytest.mark.parametrize("padding", [False, True], ids=["no-padding-mask", "padding-mask"])
def test_single_concept_matches_reference(
    ref, make_text_encoder, tokenizer, attn_implementation, batch_size, logit_bias, num_tokens, padding
):
    te = make_text_encoder(attn_implementation)
    assert te.config._attn_implementation == attn_implementation
    input_ids, mask = ref.tokenize(tokenizer, ref.PROMPTS[:batch_size])
    assert (mask == 0).any(), "the test prompts must contain padding"
    residuals = ref.random_residuals(ref.HIDDEN, LAYERS, num_tokens, seed=1)
    add_catversion_adapter(te, "concept", residuals, logit_bias=logit_bias)
    assert ref.count_catversion_modules(te) == len(LAYERS)

    concepts = {i: [(k, v, logit_bias)] for i, (k, v) in residuals.items()}
    _run_and_check(ref, te, input_ids, mask, concepts, pass_mask=padding)


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_several_concepts_are_concatenated_each_with_its_bias(ref, make_text_encoder, tokenizer, attn_implementation):
    te = make_text_encoder(attn_implementation)
    input_ids, mask = ref.tokenize(tokenizer, ref.PROMPTS)
    first = ref.random_residuals(ref.HIDDEN, LAYERS, 1, seed=1)
    second = ref.random_residuals(ref.HIDDEN, [3, 4], 2, seed=2)  # other layers, other token count
    third = ref.random_residuals(ref.HIDDEN, [0, 4], 1, seed=3)
    add_catversion_adapter(te, "first", first, logit_bias=0.0)
    add_catversion_adapter(te, "second", second, logit_bias=1.0, scale=0.5)
    add_catversion_adapter(te, "third", third, logit_bias=-0.5, scale=2.0)

    concepts = {}
    for residuals, offset in ((first, 0.0), (second, 1.0 + math.log(0.5)), (third, -0.5 + math.log(2.0))):
        for index, (k, v) in residuals.items():
            concepts.setdefault(index, []).append((k, v, offset))
    assert sorted(concepts) == [0, 2, 3, 4]
    assert ref.count_catversion_modules(te) == 4
    _run_and_check(ref, te, input_ids, mask, concepts)
    _run_and_check(ref, te, input_ids, mask, concepts, pass_mask=False)


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("scale", [0.1, 0.5, 0.9, 3.0])
def test_scale_adds_log_scale_to_residual_logits(ref, make_text_encoder, tokenizer, attn_implementation, scale):
    te = make_text_encoder(attn_implementation)
    input_ids, mask = ref.tokenize(tokenizer, ref.PROMPTS[:2])
    residuals = ref.random_residuals(ref.HIDDEN, LAYERS, 2, seed=4)
    add_catversion_adapter(te, "concept", residuals, logit_bias=1.0)
    set_catversion_scale(te, scale)
    concepts = {i: [(k, v, 1.0 + math.log(scale))] for i, (k, v) in residuals.items()}
    _run_and_check(ref, te, input_ids, mask, concepts)


def test_first_token_attends_to_itself_and_the_residuals_only(ref, make_text_encoder):
    """A one-token sequence: with keys [k0, dk] the weights are a 2-way softmax, checked by hand."""
    te = make_text_encoder("eager")
    residuals = ref.random_residuals(ref.HIDDEN, [4], 1, seed=5)
    add_catversion_adapter(te, "concept", residuals, logit_bias=1.0)
    module = ref.attention_modules(te)[4]
    x = torch.randn(1, 1, ref.HIDDEN, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out, weights = module(x, attention_mask=None, is_causal=True)
        q = module.q_proj(x).view(1, 1, 4, 8).transpose(1, 2).double()  # [1, h, 1, 8]
        k0 = module.k_proj(x).view(1, 1, 4, 8).transpose(1, 2).double()
        v0 = module.v_proj(x).view(1, 1, 4, 8).transpose(1, 2).double()
    dk = residuals[4][0].double().view(1, 4, 8).transpose(0, 1).unsqueeze(0)  # [1, h, 1, 8]
    dv = residuals[4][1].double().view(1, 4, 8).transpose(0, 1).unsqueeze(0)
    s0 = (q * k0).sum(-1) / math.sqrt(8)
    s1 = (q * dk).sum(-1) / math.sqrt(8) + 1.0
    w1 = torch.exp(s1) / (torch.exp(s0) + torch.exp(s1))
    mixed = (1 - w1).unsqueeze(-1) * v0 + w1.unsqueeze(-1) * dv  # [1, h, 1, 8]
    expected = mixed.transpose(1, 2).reshape(1, 1, ref.HIDDEN) @ module.out_proj.weight.double().T
    expected = expected + module.out_proj.bias.double()
    torch.testing.assert_close(out.double(), expected, **FP32_TOL)
    assert weights.shape == (1, 4, 1, 2)
    torch.testing.assert_close(weights[..., 1].double(), w1, **FP32_TOL)


def test_attention_weights_are_returned_with_eager(ref, make_text_encoder, tokenizer):
    """output_attentions=True with eager: [b, h, l, l + n] weights equal to the reference softmax."""
    te = make_text_encoder("eager")
    input_ids, mask = ref.tokenize(tokenizer, ref.PROMPTS[:2])
    residuals = ref.random_residuals(ref.HIDDEN, LAYERS, 2, seed=6)
    add_catversion_adapter(te, "concept", residuals, logit_bias=1.0)
    recorder = ref.AttentionRecorder(ref.attention_modules(te))
    with torch.no_grad():
        output = te(input_ids, attention_mask=mask, output_attentions=True)
    recorder.remove()
    assert output.attentions is not None and len(output.attentions) == ref.NUM_LAYERS
    for index in range(ref.NUM_LAYERS):
        extra = 2 if index in LAYERS else 0
        weights = output.attentions[index]
        assert weights.shape == (2, 4, 12, 12 + extra)
        concepts = [(residuals[index][0], residuals[index][1], 1.0)] if index in LAYERS else []
        _, expected = ref.attention(
            ref.attention_modules(te)[index], recorder.inputs[index], concepts, mask, return_weights=True
        )
        torch.testing.assert_close(weights.double(), expected, **FP32_TOL)


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_transformers_4x_signature(ref, make_text_encoder, attn_implementation):
    """(hidden_states, attention_mask, causal_attention_mask, output_attentions) with additive float masks."""
    te = make_text_encoder(attn_implementation)
    residuals = ref.random_residuals(ref.HIDDEN, [4], 1, seed=7)
    add_catversion_adapter(te, "concept", residuals, logit_bias=1.0)
    module = ref.attention_modules(te)[4]
    b, l = 2, 6
    x = torch.randn(b, l, ref.HIDDEN, generator=torch.Generator().manual_seed(1))
    minimum = torch.finfo(torch.float32).min
    causal = torch.full((l, l), minimum).triu(1).view(1, 1, l, l).expand(b, 1, l, l)
    padding = torch.ones(b, l, dtype=torch.long)
    padding[1, 4:] = 0
    padding_additive = ((1 - padding[:, None, None, :].float()) * minimum).expand(b, 1, l, l)
    with torch.no_grad():
        out, _ = module(x, padding_additive, causal, False)
    expected = ref.attention(module, x, [(residuals[4][0], residuals[4][1], 1.0)], padding)
    torch.testing.assert_close(out.double(), expected, **FP32_TOL)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_low_precision_stays_close_to_reference(ref, make_text_encoder, tokenizer, dtype, attn_implementation):
    te = make_text_encoder(attn_implementation)
    input_ids, mask = ref.tokenize(tokenizer, ref.PROMPTS)
    residuals = ref.random_residuals(ref.HIDDEN, LAYERS, 1, seed=8)
    add_catversion_adapter(te, "concept", residuals, logit_bias=1.0)
    with torch.no_grad():
        full = te(input_ids).last_hidden_state
    expected_full = ref.text_encoder(te, input_ids, {i: [(k, v, 1.0)] for i, (k, v) in residuals.items()})
    torch.testing.assert_close(full.double(), expected_full.last_hidden_state, **FP32_TOL)

    te.to(dtype)
    # the residuals keep their fp32 masters; they are cast on the fly
    module = ref.attention_modules(te)[4]
    assert isinstance(module, CatVersionAttention) and module.residuals["concept"].key.dtype == torch.float32
    recorder = ref.AttentionRecorder(ref.attention_modules(te))
    with torch.no_grad():
        low = te(input_ids).last_hidden_state
    recorder.remove()
    assert low.dtype == dtype and torch.isfinite(low).all()
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.float16 else dict(rtol=5e-2, atol=8e-2)
    for index in LAYERS:  # each CatVersion layer against the reference on the same (low precision) input
        expected = ref.attention(
            ref.attention_modules(te)[index], recorder.inputs[index], [(residuals[index][0], residuals[index][1], 1.0)]
        )
        torch.testing.assert_close(recorder.outputs[index].double(), expected, **tol)
    # and the whole encoder stays near the fp32 reference
    torch.testing.assert_close(low.double(), expected_full.last_hidden_state, rtol=0.1, atol=0.15)


def test_residual_gradients_match_reference(ref, make_text_encoder):
    """Trainable residuals (nn.Parameter) get the gradients of the float64 reference."""
    te = make_text_encoder("sdpa").requires_grad_(False)
    generator = torch.Generator().manual_seed(9)
    key = torch.nn.Parameter(torch.randn(1, ref.HIDDEN, generator=generator))
    value = torch.nn.Parameter(torch.randn(1, ref.HIDDEN, generator=generator))
    add_catversion_adapter(te, "concept", {4: (key, value)}, logit_bias=1.0)
    module = ref.attention_modules(te)[4]
    assert isinstance(module, CatVersionAttention)
    x = torch.randn(2, 7, ref.HIDDEN, generator=generator)
    target = torch.randn(2, 7, ref.HIDDEN, generator=generator)
    out, _ = module(x, attention_mask=None, is_causal=True)
    ((out - target) ** 2).sum().backward()

    key64 = key.detach().double().requires_grad_(True)
    value64 = value.detach().double().requires_grad_(True)
    expected = ref.attention(module, x, [(key64, value64, 1.0)])
    ((expected - target.double()) ** 2).sum().backward()
    torch.testing.assert_close(key.grad.double(), key64.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(value.grad.double(), value64.grad, rtol=1e-4, atol=1e-5)
    assert all(p.grad is None for p in te.parameters())  # only the residuals train
