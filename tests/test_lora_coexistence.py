"""CatVersion next to peft LoRA on the text encoder, textual inversion tokens and the UNet's attention."""

import copy

import pytest
import torch
from peft import LoraConfig

import catversion_diffusers as cv
from catversion_diffusers.testing import tiny_clip_text_model, tiny_clip_tokenizer, tiny_stable_diffusion_pipeline

LAYERS = (2, 3, 4)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return tiny_clip_tokenizer(str(tmp_path_factory.mktemp("tok")))


def _residuals(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {i: (torch.randn(1, 32, generator=g), torch.randn(1, 32, generator=g)) for i in LAYERS}


def _lora(text_encoder):
    torch.manual_seed(1)
    text_encoder.add_adapter(
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "out_proj"], init_lora_weights=False),
        adapter_name="lora",
    )


def _run(text_encoder, ids):
    with torch.no_grad():
        return text_encoder(ids).last_hidden_state


def _merged_reference(tokenizer, ids):
    """LoRA folded into plain weights (an independent model with W + BA), then CatVersion on top."""
    merged = tiny_clip_text_model(tokenizer)
    _lora(merged)
    for layer in cv.get_encoder_layers(merged):
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            getattr(layer.self_attn, name).merge()
            setattr(layer.self_attn, name, getattr(layer.self_attn, name).get_base_layer())
    lora_only = _run(merged, ids)
    cv.add_catversion_adapter(merged, "c", _residuals())
    return lora_only, _run(merged, ids)


@pytest.mark.parametrize("lora_first", [True, False])
def test_lora_and_catversion_compose_in_either_order_and_unload_independently(tokenizer, lora_first):
    ids = tokenizer(["a photo of a dog", "a red cat"], padding="max_length", max_length=12, return_tensors="pt").input_ids
    lora_only_ref, both_ref = _merged_reference(tokenizer, ids)

    te = tiny_clip_text_model(tokenizer)
    stock = _run(te, ids)
    assert not torch.allclose(lora_only_ref, stock, atol=1e-3)  # the LoRA has an effect
    assert not torch.allclose(both_ref, lora_only_ref, atol=1e-3)  # and so do the residuals on top of it
    if lora_first:
        _lora(te)
        cv.add_catversion_adapter(te, "c", _residuals())
    else:
        cv.add_catversion_adapter(te, "c", _residuals())
        _lora(te)
    torch.testing.assert_close(_run(te, ids), both_ref, rtol=1e-5, atol=1e-5)

    # The text encoder's parameter names are the stock ones plus LoRA's: CatVersion adds none.
    assert not any("residual" in name for name, _ in te.named_parameters())

    te_lora_kept = copy.deepcopy(te)
    cv.delete_catversion_adapters(te_lora_kept)
    torch.testing.assert_close(_run(te_lora_kept, ids), lora_only_ref, rtol=1e-5, atol=1e-5)
    assert type(cv.get_encoder_layers(te_lora_kept)[4].self_attn).__name__ == "CLIPAttention"

    te.disable_adapters()  # LoRA off, CatVersion still on
    catversion_only = tiny_clip_text_model(tokenizer)
    cv.add_catversion_adapter(catversion_only, "c", _residuals())
    torch.testing.assert_close(_run(te, ids), _run(catversion_only, ids), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(_run(te, ids), stock)


def test_textual_inversion_and_unet_untouched(tmp_path):
    pipe = tiny_stable_diffusion_pipeline(str(tmp_path / "tok"))
    unet_state = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    processors = {k: type(v) for k, v in pipe.unet.attn_processors.items()}
    pipe.load_textual_inversion({"<sks>": torch.randn(32)}, token="<sks>")

    def image(prompt):
        g = torch.Generator().manual_seed(0)
        return pipe(prompt, num_inference_steps=2, generator=g, output_type="np", height=32, width=32).images

    before = image("a <sks> dog")
    pipe.load_catversion({f"text_encoder.layers.{i}.residual_{k}": torch.randn(1, 32) for i in LAYERS for k in ("key", "value")}, adapter_name="c")
    with_both = image("a <sks> dog")
    assert not (with_both == before).all()
    assert "<sks>" in pipe.tokenizer.get_vocab()
    pipe.unload_catversion()
    assert (image("a <sks> dog") == before).all()
    pipe.unload_textual_inversion()
    assert "<sks>" not in pipe.tokenizer.get_vocab()
    for key, value in pipe.unet.state_dict().items():
        assert torch.equal(value, unet_state[key])
    assert {k: type(v) for k, v in pipe.unet.attn_processors.items()} == processors
