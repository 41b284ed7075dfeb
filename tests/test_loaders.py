"""``pipe.load_catversion`` and friends: bad inputs, the Hub code path offline, the negative prompt, pipelines."""

import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from catversion_diffusers import (
    CatVersionAdapterNameError,
    CatVersionAttention,
    CatVersionCompatibilityError,
    CatVersionFormatError,
    CatVersionNotFoundError,
    CatVersionState,
    CatVersionUnsafeCheckpointError,
    get_catversion_residuals,
    testing,
)

PROMPT = "a photo of a dog"
CALL = dict(num_inference_steps=2, height=32, width=32, output_type="np")


def _encoders(pipe):
    return {name: getattr(pipe, name) for name in ("text_encoder", "text_encoder_2") if getattr(pipe, name, None)}


def _encode(te, tokenizer, prompts=("a photo of a dog", "a red teapot on the beach")):
    ids = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        return te(ids, output_hidden_states=True).hidden_states[-1]


def _snapshot(ref, pipe):
    return {
        name: dict(
            output=_encode(te, pipe.tokenizer),
            modules=ref.attention_modules(te),
            state=ref.state_dict_snapshot(te),
            residuals={n: {i: (k.clone(), v.clone()) for i, (k, v) in get_catversion_residuals(te, n).items()}
                       for n in pipe.get_catversion_adapters() if n in getattr(te, "_catversion_adapters", {})},
            scales={n: i.scale for n, i in pipe.get_catversion_adapters().items()},
        )
        for name, te in _encoders(pipe).items()
    } | {"hook": "encode_prompt" in pipe.__dict__, "adapters": list(pipe.get_catversion_adapters())}


def _assert_unchanged(ref, pipe, snapshot):
    assert list(pipe.get_catversion_adapters()) == snapshot["adapters"]
    assert ("encode_prompt" in pipe.__dict__) == snapshot["hook"]
    for name, te in _encoders(pipe).items():
        before = snapshot[name]
        assert ref.attention_modules(te) == before["modules"]  # same objects
        ref.assert_same_state_dict(te, before["state"])
        assert torch.equal(_encode(te, pipe.tokenizer), before["output"])
        assert {n: i.scale for n, i in pipe.get_catversion_adapters().items()} == before["scales"]
        for adapter, layers in before["residuals"].items():
            live = get_catversion_residuals(te, adapter)
            assert sorted(live) == sorted(layers)
            for i, (k, v) in layers.items():
                assert torch.equal(live[i][0], k) and torch.equal(live[i][1], v)
        if not snapshot["adapters"]:
            assert ref.count_catversion_modules(te) == 0


def _save(path, tensors, metadata=None):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return str(path)


# ------------------------------------------------------------------------------------------------ bad inputs
def _bad_sources(ref, tmp_path):
    good = ref.to_state_dict(ref.random_residuals(32, [2, 3, 4], 1, seed=1))
    missing_value = dict(good)
    del missing_value["text_encoder.layers.3.residual_value"]
    nan = dict(good, **{"text_encoder.layers.4.residual_value": torch.full((1, 32), float("nan"))})
    inf = dict(good, **{"text_encoder.layers.2.residual_key": torch.full((1, 32), float("inf"))})
    extra = dict(good, **{"text_encoder.layers.4.residual_gate": torch.zeros(1, 32)})
    truncated = _save(tmp_path / "truncated.safetensors", good, {"format": "catversion", "format_version": "1"})
    with open(truncated, "rb") as f:
        content = f.read()
    with open(truncated, "wb") as f:
        f.write(content[: len(content) // 2])
    random_bytes = np.random.RandomState(0).bytes(4000)
    for name in ("random.safetensors", "random.bin", "random"):
        with open(tmp_path / name, "wb") as f:
            f.write(random_bytes)
    empty_folder = tmp_path / "empty"
    empty_folder.mkdir()
    return {
        "hidden-size": (ref.to_state_dict(ref.random_residuals(16, [2, 3, 4], 1)), {}, CatVersionCompatibilityError, "hidden size"),
        "layer-out-of-range": (ref.to_state_dict(ref.random_residuals(32, [3, 4, 5], 1)), {}, CatVersionCompatibilityError, "layer"),
        "missing-value": (missing_value, {}, CatVersionFormatError, "missing"),
        "nan": (nan, {}, CatVersionFormatError, "NaN"),
        "inf": (inf, {}, CatVersionFormatError, "inf"),
        "extra-tensor": (extra, {}, CatVersionFormatError, "unexpected"),
        "format-version": (_save(tmp_path / "v2.safetensors", good, {"format": "catversion", "format_version": "2"}), {}, CatVersionFormatError, "format_version"),
        "format": (_save(tmp_path / "lora.safetensors", good, {"format": "lora"}), {}, CatVersionFormatError, "format"),
        "truncated": (truncated, {}, CatVersionFormatError, "truncated"),
        "random-bytes-safetensors": (str(tmp_path / "random.safetensors"), {}, CatVersionFormatError, "safetensors"),
        "random-bytes-bin": (str(tmp_path / "random.bin"), {}, CatVersionUnsafeCheckpointError, "allow_pickle"),
        "random-bytes-allow-pickle": (str(tmp_path / "random"), {"allow_pickle": True}, CatVersionUnsafeCheckpointError, "tensor"),
        "sdxl-into-sd": (ref.to_state_dict(ref.random_residuals(32, [1, 2, 3], 1), "text_encoder_2"), {}, CatVersionCompatibilityError, "text_encoder_2"),
        "empty-folder": (str(empty_folder), {}, CatVersionNotFoundError, "weight_name"),
        "missing-weight-name": (str(empty_folder), {"weight_name": "x.safetensors"}, CatVersionNotFoundError, "x.safetensors"),
        "missing-file": (str(tmp_path / "nope" / "nope" / "catversion.safetensors"), {}, CatVersionNotFoundError, "path"),
        "missing-hub-repo": ("user/does-not-exist", {}, CatVersionNotFoundError, "does-not-exist"),
        "missing-hub-repo-local-only": ("user/does-not-exist", {"local_files_only": True}, CatVersionNotFoundError, "cache"),
        "negative-scale": (good, {"scale": -1.0}, ValueError, "scale"),
        "nan-scale": (good, {"scale": float("nan")}, ValueError, "scale"),
    }


BAD_CASES = [
    "hidden-size", "layer-out-of-range", "missing-value", "nan", "inf", "extra-tensor", "format-version", "format",
    "truncated", "random-bytes-safetensors", "random-bytes-bin", "random-bytes-allow-pickle", "sdxl-into-sd",
    "empty-folder", "missing-weight-name", "missing-file", "missing-hub-repo", "missing-hub-repo-local-only",
    "negative-scale", "nan-scale",
]


@pytest.mark.parametrize("with_other_adapter", [False, True], ids=["empty-pipe", "one-loaded"])
def test_bad_inputs_leave_the_pipeline_as_it_was(ref, sd_pipe, tmp_path, with_other_adapter):
    if with_other_adapter:
        sd_pipe.load_catversion(ref.to_state_dict(ref.random_residuals(32, [3, 4], 2, seed=9)), adapter_name="other")
    sources = _bad_sources(ref, tmp_path)
    assert sorted(sources) == sorted(BAD_CASES)
    snapshot = _snapshot(ref, sd_pipe)
    for case in BAD_CASES:
        source, kwargs, error, message = sources[case]
        with pytest.raises(error, match=message) as info:
            sd_pipe.load_catversion(source, adapter_name="bad", **kwargs)
        assert len(str(info.value)) > 30, case  # a helpful message, not a bare key
        _assert_unchanged(ref, sd_pipe, snapshot)


def test_missing_hub_repo_with_offline_env_and_empty_default_cache(sd_pipe, monkeypatch, tmp_path):
    """HF_HUB_OFFLINE=1 (set for every test by conftest) and a temporary HF cache: not found, quickly."""
    import huggingface_hub.constants

    assert os.environ["HF_HUB_OFFLINE"] == "1" and huggingface_hub.constants.HF_HUB_OFFLINE
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(CatVersionNotFoundError, match="user/concept"):
        sd_pipe.load_catversion("user/concept")
    with pytest.raises(CatVersionNotFoundError):
        sd_pipe.load_catversion("user/concept", cache_dir=str(tmp_path / "cache"), revision="v1", subfolder="a")
    assert sd_pipe.get_catversion_adapters() == {}


def test_same_name_twice_keeps_the_first(ref, sd_pipe):
    first = ref.to_state_dict(ref.random_residuals(32, [2, 3, 4], 1, seed=2))
    sd_pipe.load_catversion(first, adapter_name="dog", scale=0.8)
    snapshot = _snapshot(ref, sd_pipe)
    with pytest.raises(CatVersionAdapterNameError, match="already loaded"):
        sd_pipe.load_catversion(ref.to_state_dict(ref.random_residuals(32, [1, 4], 1, seed=3)), adapter_name="dog")
    _assert_unchanged(ref, sd_pipe, snapshot)


def test_scale_and_unload_errors_change_nothing(ref, sd_pipe):
    sd_pipe.load_catversion(ref.to_state_dict(ref.random_residuals(32, [2, 3, 4], 1, seed=4)), adapter_name="a")
    sd_pipe.load_catversion(ref.to_state_dict(ref.random_residuals(32, [4], 1, seed=5)), adapter_name="b", scale=0.5)
    snapshot = _snapshot(ref, sd_pipe)
    for bad in (-0.1, float("nan"), float("inf"), {"a": 1.0, "b": -1.0}, {"a": float("nan")}):
        with pytest.raises(ValueError, match="scale"):
            sd_pipe.set_catversion_scale(bad)
        _assert_unchanged(ref, sd_pipe, snapshot)
    with pytest.raises(CatVersionAdapterNameError, match="'c'"):
        sd_pipe.set_catversion_scale({"a": 0.3, "c": 1.0})
    for names in ("c", ["a", "c"]):
        with pytest.raises(CatVersionAdapterNameError, match="unloaded"):
            sd_pipe.unload_catversion(names)
    _assert_unchanged(ref, sd_pipe, snapshot)


def test_sdxl_invalid_second_encoder_changes_neither(ref, sdxl_pipe):
    tensors = ref.to_state_dict(ref.random_residuals(32, [1, 2, 3], 1, seed=6), "text_encoder")
    tensors.update(ref.to_state_dict(ref.random_residuals(32, [1, 2, 7], 1, seed=7), "text_encoder_2"))
    snapshot = _snapshot(ref, sdxl_pipe)
    with pytest.raises(CatVersionCompatibilityError, match="text_encoder_2"):
        sdxl_pipe.load_catversion(tensors, adapter_name="bad")
    _assert_unchanged(ref, sdxl_pipe, snapshot)


def test_pipeline_without_text_encoder():
    from diffusers import DiffusionPipeline

    class NoTextPipeline(DiffusionPipeline):
        def __init__(self):
            super().__init__()

    with pytest.raises(CatVersionCompatibilityError, match="text_encoder"):
        NoTextPipeline().load_catversion({})


# ------------------------------------------------------------------------------------------------ Hub, offline
def _fake_cache(cache_dir, repo_id, files, ref_name="main", commit="0123456789abcdef0123456789abcdef01234567"):
    """The huggingface_hub cache layout: refs/<ref> -> commit, snapshots/<commit>/<files>."""
    base = os.path.join(cache_dir, "models--" + repo_id.replace("/", "--"))
    os.makedirs(os.path.join(base, "refs"), exist_ok=True)
    with open(os.path.join(base, "refs", ref_name), "w") as f:
        f.write(commit)
    for relative, source in files.items():
        target = os.path.join(base, "snapshots", commit, relative)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy(source, target)
    return commit


def test_hub_cache_resolution(ref, tokenizer_dir, tmp_path):
    cache = str(tmp_path / "hf")
    files = {}
    for seed in (1, 2, 3, 4):
        files[seed] = _save(tmp_path / f"c{seed}.safetensors", ref.to_state_dict(ref.random_residuals(32, [2, 3, 4], 1, seed=seed)))
    main = _fake_cache(cache, "user/concept", {"catversion.safetensors": files[1], "other.safetensors": files[2],
                                                "concepts/dog/catversion.safetensors": files[3]})
    _fake_cache(cache, "user/concept", {"catversion.safetensors": files[4]}, ref_name="v2", commit="f" * 40)

    def expected(path):
        pipe = testing.tiny_stable_diffusion_pipeline(tokenizer_dir)
        pipe.load_catversion(path, adapter_name="x")
        return _encode(pipe.text_encoder, pipe.tokenizer)

    cases = [
        (dict(), files[1], "concept"),
        (dict(local_files_only=None), files[1], "concept"),  # HF_HUB_OFFLINE=1 alone also reads the cache
        (dict(weight_name="other.safetensors"), files[2], "concept"),
        (dict(subfolder="concepts/dog"), files[3], "concept"),
        (dict(revision="v2"), files[4], "concept"),
        (dict(revision="f" * 40), files[4], "concept"),
        (dict(revision=main), files[1], "concept"),
    ]
    for kwargs, source, name in cases:
        pipe = testing.tiny_stable_diffusion_pipeline(tokenizer_dir)
        kwargs = dict(dict(cache_dir=cache, local_files_only=True), **kwargs)
        assert pipe.load_catversion("user/concept", **kwargs) == name
        assert torch.equal(_encode(pipe.text_encoder, pipe.tokenizer), expected(source)), kwargs
    pipe = testing.tiny_stable_diffusion_pipeline(tokenizer_dir)
    for bad in (dict(revision="v3"), dict(weight_name="missing.safetensors"), dict(subfolder="concepts/cat")):
        with pytest.raises(CatVersionNotFoundError):
            pipe.load_catversion("user/concept", cache_dir=cache, local_files_only=True, **bad)
    assert pipe.get_catversion_adapters() == {}


def test_hub_default_cache(ref, sd_pipe, tmp_path):
    """Without cache_dir, the default HF cache (a temporary folder here, see conftest) is used."""
    import huggingface_hub.constants

    path = _save(tmp_path / "c.safetensors", ref.to_state_dict(ref.random_residuals(32, [4], 1, seed=5)))
    _fake_cache(huggingface_hub.constants.HF_HUB_CACHE, "someone/my-dog", {"catversion.safetensors": path})
    assert sd_pipe.load_catversion("someone/my-dog") == "my-dog"
    assert sd_pipe.get_catversion_adapters()["my-dog"].layers == [4]


# ------------------------------------------------------------------------------------------------ negative prompt
def _stock_embedding(te, tokenizer, text, hidden_state=-1):
    ids = tokenizer([text], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        out = te(ids, output_hidden_states=True)
    return out.last_hidden_state if hidden_state == -1 else out.hidden_states[hidden_state]


@pytest.mark.parametrize("negative_prompt", [None, "a red cat"])
def test_negative_prompt_sd(ref, sd_pipe, negative_prompt):
    te, tok = sd_pipe.text_encoder, sd_pipe.tokenizer
    stock_negative = _stock_embedding(te, tok, negative_prompt or "")
    stock_positive = _stock_embedding(te, tok, PROMPT)
    stock_outputs = sd_pipe.encode_prompt(PROMPT, "cpu", 1, True, negative_prompt=negative_prompt)
    assert torch.equal(stock_outputs[1], stock_negative) and torch.equal(stock_outputs[0], stock_positive)

    sd_pipe.load_catversion(ref.to_state_dict(ref.random_residuals(32, [2, 3, 4], 1, seed=1)), adapter_name="c")
    positive, negative = sd_pipe.encode_prompt(PROMPT, "cpu", 1, True, negative_prompt=negative_prompt)
    assert not torch.allclose(positive, stock_positive, atol=1e-3)
    assert torch.equal(negative, stock_negative)  # by default the unconditional branch has no residuals
    # the residual version of the negative text, encoded as a prompt
    with_residuals = sd_pipe.encode_prompt(negative_prompt or "", "cpu", 1, False)[0]
    assert not torch.allclose(with_residuals, stock_negative, atol=1e-3)

    sd_pipe.apply_catversion_to_negative_prompt(True)
    positive_2, negative_2 = sd_pipe.encode_prompt(PROMPT, "cpu", 1, True, negative_prompt=negative_prompt)
    assert torch.equal(positive_2, positive)
    assert torch.equal(negative_2, with_residuals)
    sd_pipe.apply_catversion_to_negative_prompt(False)
    assert torch.equal(sd_pipe.encode_prompt(PROMPT, "cpu", 1, True, negative_prompt=negative_prompt)[1], stock_negative)

    sd_pipe.unload_catversion()
    assert "encode_prompt" not in sd_pipe.__dict__
    positive_3, negative_3 = sd_pipe.encode_prompt(PROMPT, "cpu", 1, True, negative_prompt=negative_prompt)
    assert torch.equal(positive_3, stock_positive) and torch.equal(negative_3, stock_negative)


def test_negative_prompt_sdxl(ref, sdxl_pipe):
    pipe = sdxl_pipe
    negative_prompt = "a red cat"
    kwargs = dict(device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True)
    stock = pipe.encode_prompt(PROMPT, negative_prompt=negative_prompt, **kwargs)
    assert len(stock) == 4
    # independent: SDXL conditions on hidden_states[-2] of both encoders, concatenated
    expected_negative = torch.cat(
        [_stock_embedding(pipe.text_encoder, pipe.tokenizer, negative_prompt, -2),
         _stock_embedding(pipe.text_encoder_2, pipe.tokenizer_2, negative_prompt, -2)], dim=-1)
    assert torch.equal(stock[1], expected_negative)
    stock_zero_negative = pipe.encode_prompt(PROMPT, **kwargs)[1]

    tensors = ref.to_state_dict(ref.random_residuals(32, [1, 2, 3], 1, seed=2), "text_encoder")
    tensors.update(ref.to_state_dict(ref.random_residuals(32, [1, 2, 3], 1, seed=3), "text_encoder_2"))
    pipe.load_catversion(tensors, adapter_name="c")
    loaded = pipe.encode_prompt(PROMPT, negative_prompt=negative_prompt, **kwargs)
    assert not torch.allclose(loaded[0], stock[0], atol=1e-3)
    assert not torch.allclose(loaded[2], stock[2], atol=1e-3)  # pooled: text_encoder_2 has residuals
    assert torch.equal(loaded[1], stock[1]) and torch.equal(loaded[3], stock[3])
    assert torch.equal(pipe.encode_prompt(PROMPT, **kwargs)[1], stock_zero_negative)

    as_prompt = pipe.encode_prompt(negative_prompt, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)
    pipe.apply_catversion_to_negative_prompt(True)
    both = pipe.encode_prompt(PROMPT, negative_prompt=negative_prompt, **kwargs)
    assert torch.equal(both[0], loaded[0]) and torch.equal(both[2], loaded[2])
    assert torch.equal(both[1], as_prompt[0]) and torch.equal(both[3], as_prompt[2])
    assert not torch.allclose(both[1], stock[1], atol=1e-3)


# ------------------------------------------------------------------------------------------------ pipelines
def _call(pipe, **kwargs):
    return pipe(PROMPT, generator=torch.manual_seed(0), **dict(CALL, **kwargs)).images


def _check_changes_and_restores(ref, pipe, tensors, **kwargs):
    stock = _call(pipe, **kwargs)
    assert np.isfinite(stock).all()
    pipe.load_catversion(tensors, adapter_name="concept")
    with_concept = _call(pipe, **kwargs)
    assert np.abs(with_concept - stock).max() > 1e-4
    pipe.unload_catversion()
    assert ref.count_catversion_modules(pipe.text_encoder) == 0
    np.testing.assert_array_equal(_call(pipe, **kwargs), stock)


def test_stable_diffusion_pipeline_end_to_end(ref, sd_pipe):
    assert sd_pipe.catversion_default_layers() == {"text_encoder": [2, 3, 4]}
    assert sd_pipe.catversion_default_layers(clip_skip=1) == {"text_encoder": [1, 2, 3]}
    _check_changes_and_restores(ref, sd_pipe, ref.to_state_dict(ref.random_residuals(32, [2, 3, 4], 1, seed=1)))


def _image():
    return torch.from_numpy(np.random.RandomState(0).rand(1, 3, 32, 32).astype(np.float32))


def test_img2img_pipeline(ref, tokenizer_dir):
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = testing.tiny_stable_diffusion_pipeline(tokenizer_dir, pipeline_class=StableDiffusionImg2ImgPipeline)
    tensors = ref.to_state_dict(ref.random_residuals(32, [2, 3, 4], 1, seed=2))
    _check_changes_and_restores(ref, pipe, tensors, image=_image(), strength=0.75, num_inference_steps=4,
                                height=None, width=None)


def test_inpaint_pipeline(ref, tokenizer_dir):
    from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel

    components = testing.tiny_stable_diffusion_components(tokenizer_dir)
    torch.manual_seed(0)
    components["unet"] = UNet2DConditionModel(  # latents + mask + masked-image latents
        block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=9, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, norm_num_groups=2, attention_head_dim=2,
    )
    pipe = StableDiffusionInpaintPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1
    tensors = ref.to_state_dict(ref.random_residuals(32, [2, 3, 4], 1, seed=3))
    _check_changes_and_restores(ref, pipe, tensors, image=_image(), mask_image=mask)


def test_controlnet_pipeline(ref, tokenizer_dir):
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    components = testing.tiny_stable_diffusion_components(tokenizer_dir)
    torch.manual_seed(0)
    controlnet = ControlNetModel(
        block_out_channels=(8, 16), layers_per_block=1, in_channels=4, cross_attention_dim=32, norm_num_groups=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), conditioning_embedding_out_channels=(4, 8),
        attention_head_dim=2,
    )
    pipe = StableDiffusionControlNetPipeline(controlnet=controlnet, **components)
    pipe.set_progress_bar_config(disable=True)
    controlnet_state = ref.state_dict_snapshot(controlnet)
    tensors = ref.to_state_dict(ref.random_residuals(32, [2, 3, 4], 1, seed=4))
    _check_changes_and_restores(ref, pipe, tensors, image=_image())
    ref.assert_same_state_dict(controlnet, controlnet_state)


def test_sdxl_pipeline_end_to_end(ref, sdxl_pipe):
    pipe = sdxl_pipe
    assert pipe.catversion_default_layers() == {"text_encoder": [1, 2, 3], "text_encoder_2": [1, 2, 3]}
    tensors = ref.to_state_dict(ref.random_residuals(32, [1, 2, 3], 1, seed=5), "text_encoder")
    tensors.update(ref.to_state_dict(ref.random_residuals(32, [1, 2, 3], 1, seed=6), "text_encoder_2"))
    _check_changes_and_restores(ref, pipe, tensors)
    assert ref.count_catversion_modules(pipe.text_encoder_2) == 0
    # a concept for the second encoder only also loads
    pipe.load_catversion(ref.to_state_dict(ref.random_residuals(32, [3], 1, seed=7), "text_encoder_2"), adapter_name="te2")
    assert ref.count_catversion_modules(pipe.text_encoder) == 0 and ref.count_catversion_modules(pipe.text_encoder_2) == 1
    assert pipe.get_catversion_adapters()["te2"].layers == [3]


def test_multiple_concepts_with_scales(ref, sd_pipe):
    te = sd_pipe.text_encoder
    a = ref.random_residuals(32, [2, 3, 4], 1, seed=8)
    b = ref.random_residuals(32, [3, 4], 2, seed=9)
    assert sd_pipe.load_catversion(ref.to_state_dict(a), adapter_name="a") == "a"
    assert sd_pipe.load_catversion(CatVersionState({"text_encoder": b}, logit_bias=1.0), adapter_name="b", scale=0.5) == "b"
    infos = sd_pipe.get_catversion_adapters()
    assert list(infos) == ["a", "b"]
    assert (infos["a"].layers, infos["a"].num_tokens, infos["a"].scale, infos["a"].logit_bias) == ([2, 3, 4], 1, 1.0, 0.0)
    assert (infos["b"].layers, infos["b"].num_tokens, infos["b"].scale, infos["b"].logit_bias) == ([3, 4], 2, 0.5, 1.0)
    assert sd_pipe.get_active_catversion_adapters() == ["a", "b"]

    sd_pipe.set_catversion_scale({"a": 0.25, "b": 2.0})
    assert {n: i.scale for n, i in sd_pipe.get_catversion_adapters().items()} == {"a": 0.25, "b": 2.0}
    ids, _ = ref.tokenize(sd_pipe.tokenizer, ref.PROMPTS)
    with torch.no_grad():
        got = te(ids).last_hidden_state
    concepts = {i: [(k, v, np.log(0.25))] for i, (k, v) in a.items()}
    for i, (k, v) in b.items():
        concepts[i].append((k, v, 1.0 + np.log(2.0)))
    torch.testing.assert_close(got.double(), ref.text_encoder(te, ids, concepts).last_hidden_state, rtol=1e-5, atol=1e-5)

    sd_pipe.set_catversion_scale({"a": 0.0})
    assert sd_pipe.get_active_catversion_adapters() == ["b"]
    sd_pipe.set_catversion_scale(1.0)
    assert {n: i.scale for n, i in sd_pipe.get_catversion_adapters().items()} == {"a": 1.0, "b": 1.0}
    sd_pipe.unload_catversion("a")
    assert list(sd_pipe.get_catversion_adapters()) == ["b"]
    assert "encode_prompt" in sd_pipe.__dict__
    sd_pipe.unload_catversion()
    assert sd_pipe.get_catversion_adapters() == {} and "encode_prompt" not in sd_pipe.__dict__


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_after_loading(ref, sd_pipe, dtype):
    residuals = ref.random_residuals(32, [2, 3, 4], 1, seed=10)
    sd_pipe.load_catversion(ref.to_state_dict(residuals), adapter_name="c")
    fp32 = _call(sd_pipe)
    sd_pipe.to(dtype)
    assert sd_pipe.text_encoder.dtype == dtype
    images = _call(sd_pipe)
    assert np.isfinite(images).all() and images.shape == (1, 32, 32, 3)
    assert np.abs(images - fp32).max() < 0.1
    prompt_embeds, negative = sd_pipe.encode_prompt(PROMPT, "cpu", 1, True)
    assert prompt_embeds.dtype == dtype and torch.isfinite(prompt_embeds).all()
    for index, (k, v) in get_catversion_residuals(sd_pipe.text_encoder, "c").items():
        assert k.dtype == torch.float32 and torch.equal(k, residuals[index][0])  # fp32 masters kept
    sd_pipe.unload_catversion()
    assert ref.count_catversion_modules(sd_pipe.text_encoder) == 0


def test_unet_is_never_touched(ref, sd_pipe):
    unet = sd_pipe.unet
    state = ref.state_dict_snapshot(unet)
    processors = dict(unet.attn_processors)
    modules = list(unet.modules())
    sd_pipe.load_catversion(ref.to_state_dict(ref.random_residuals(32, [2, 3, 4], 1, seed=11)), adapter_name="c")
    _call(sd_pipe)
    ref.assert_same_state_dict(unet, state)
    assert unet.attn_processors == processors
    assert list(unet.modules()) == modules
    assert not any(isinstance(m, CatVersionAttention) for m in modules)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="enable_model_cpu_offload needs an accelerator")
def test_model_cpu_offload(ref, sd_pipe):
    stock = None
    sd_pipe.load_catversion(ref.to_state_dict(ref.random_residuals(32, [2, 3, 4], 1, seed=12)), adapter_name="c")
    sd_pipe.to("cuda")
    on_gpu = _call(sd_pipe)
    sd_pipe.to("cpu")
    sd_pipe.enable_model_cpu_offload()
    offloaded = _call(sd_pipe)
    np.testing.assert_allclose(offloaded, on_gpu, atol=1e-3)
    sd_pipe.unload_catversion()
    stock = _call(sd_pipe)
    assert np.abs(stock - offloaded).max() > 1e-4
