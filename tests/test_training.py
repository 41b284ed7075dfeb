"""The CatVersion trainer as a library: learning, frozen weights, caches, resume, mixed precision, SDXL, bad inputs.

Everything runs offline on CPU with the tiny pipelines of ``catversion_diffusers.testing`` (resolution 32).
"""

import json
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

import catversion_diffusers  # noqa: F401  (adds load_catversion to pipelines)
from catversion_diffusers import load_state_file
from catversion_diffusers.testing import tiny_stable_diffusion_pipeline, tiny_stable_diffusion_xl_pipeline
from catversion_diffusers.training import (
    CatVersionDataError,
    CatVersionTrainer,
    CatVersionTrainingConfig,
    CatVersionTrainingError,
    list_checkpoints,
    load_training_images,
    parse_residual_layers,
    training_prompts,
)
from catversion_diffusers.training.data import to_rgb

torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------------- fixtures
def write_images(folder, n=4, size=(48, 40), seed=0):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        array = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(array).save(os.path.join(folder, f"{i}.png"))
    return folder


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_images(str(tmp_path_factory.mktemp("data")))


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture
def pipe(tokenizer_dir):
    return tiny_stable_diffusion_pipeline(tokenizer_dir)


def config(tmp_path, **kwargs):
    defaults = dict(
        class_word="dog",
        output_dir=str(tmp_path / "out"),
        resolution=32,
        max_train_steps=4,
        checkpointing_steps=None,
        report_to=None,
        seed=0,
    )
    defaults.update(kwargs)
    return CatVersionTrainingConfig(**defaults)


def generate(pipe, prompt="a photo of a dog"):
    out = pipe(prompt, num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0), height=32, width=32)
    return out.images


def weights(pipe):
    return {
        f"{name}.{key}": value.detach().clone()
        for name in ("unet", "vae", "text_encoder")
        for key, value in getattr(pipe, name).state_dict().items()
    }


# ---------------------------------------------------------------------------------------------------- learning
def test_train_returns_a_loadable_state_that_changes_the_output(pipe, data_dir, tmp_path):
    before = generate(pipe)
    result = CatVersionTrainer(pipe, config(tmp_path, max_train_steps=3)).train(data_dir)
    assert result.global_step == 3 and len(result.losses) == 3
    assert os.path.isfile(result.path) and result.path.endswith("catversion.safetensors")
    # The pipeline is left as it was (stock modules, nothing loaded) and still gives the same images.
    assert pipe.get_catversion_adapters() == {}
    np.testing.assert_array_equal(generate(pipe), before)
    state = load_state_file(result.path)
    assert state.metadata["class_word"] == "dog" and state.num_tokens == 1
    assert sorted(state.residuals["text_encoder"]) == [2, 3, 4]  # the last three of 5 layers
    pipe.load_catversion(result.path)
    assert np.abs(generate(pipe) - before).max() > 1e-4
    summary = json.load(open(os.path.join(tmp_path, "out", "training_summary.json")))
    assert summary["text_encoder_cache"] and summary["latent_cache"] and summary["peak_memory_bytes"] > 0


def test_loss_falls_on_a_fixed_batch(pipe, data_dir, tmp_path):
    trainer = CatVersionTrainer(pipe, config(tmp_path, learning_rate=0.1, train_batch_size=2))
    trainer.setup(data_dir)
    batch = trainer.sample_batch(0)
    losses = [trainer.optimizer_step([batch]) for _ in range(30)]
    # Deterministic (fixed batch, fp32): every window of 5 steps is lower than the previous one.
    windows = [np.mean(losses[i : i + 5]) for i in range(0, 30, 5)]
    assert all(b < a for a, b in zip(windows, windows[1:])), losses
    assert losses[-1] < 0.96 * losses[0], losses
    # ... and it is the residuals that lower it: switching them off gives the initial loss back.
    with torch.no_grad():
        for te in trainer.text_encoders.values():
            catversion_diffusers.set_catversion_scale(te, 0.0)
        base = float(trainer.compute_loss(batch))
    assert base > losses[-1] + 0.01


def test_only_residuals_get_gradients_and_model_weights_stay_bit_identical(pipe, data_dir, tmp_path):
    original = weights(pipe)
    trainer = CatVersionTrainer(pipe, config(tmp_path, max_train_steps=3))
    trainer.setup(data_dir)
    for name in ("unet", "vae", "text_encoder"):
        assert not any(p.requires_grad for p in getattr(pipe, name).parameters())
    loss = trainer.compute_loss(trainer.sample_batch(0))
    loss.backward()
    for name in ("unet", "vae", "text_encoder"):
        assert all(p.grad is None for p in getattr(pipe, name).parameters())
    grads = [p.grad for p in trainer.parameters()]
    assert len(grads) == 6 and all(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.dtype == torch.float32 and p.requires_grad for p in trainer.parameters())
    trainer.optimizer.zero_grad()
    trainer.train()
    after = weights(pipe)
    assert original.keys() == after.keys()
    assert all(torch.equal(original[k], after[k]) for k in original)


def test_caches_give_the_same_loss_as_the_uncached_reference(tokenizer_dir, data_dir, tmp_path):
    losses = {}
    for cache in (True, False):
        pipe = tiny_stable_diffusion_pipeline(tokenizer_dir)
        trainer = CatVersionTrainer(
            pipe, config(tmp_path / str(cache), cache_latents=cache, cache_text_encoder=cache, train_batch_size=3)
        )
        trainer.setup(data_dir)
        assert trainer.text.uses_cache is cache
        with torch.no_grad():
            losses[cache] = [float(trainer.compute_loss(trainer.sample_batch(i))) for i in range(3)]
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-5)


def test_resume_gives_the_same_residuals_as_an_uninterrupted_run(tokenizer_dir, data_dir, tmp_path):
    settings = dict(max_train_steps=6, checkpointing_steps=3, gradient_accumulation_steps=2, lr_scheduler="cosine",
                    learning_rate=0.05)
    full = CatVersionTrainer(tiny_stable_diffusion_pipeline(tokenizer_dir), config(tmp_path / "a", **settings))
    expected = full.train(data_dir).state

    def stop_after_4(trainer, step, loss):
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        CatVersionTrainer(tiny_stable_diffusion_pipeline(tokenizer_dir), config(tmp_path / "b", **settings)).train(
            data_dir, callback=stop_after_4
        )
    out = tmp_path / "b" / "out"
    assert list_checkpoints(str(out)) == [3]
    assert not (out / "catversion.safetensors").exists()  # interrupted: no (half-written) result
    assert not [f for f in os.listdir(out) if f.startswith(".")]  # no temporary files either
    # The checkpoint holds a loadable residual file too.
    pipe = tiny_stable_diffusion_pipeline(tokenizer_dir)
    pipe.load_catversion(str(out / "checkpoint-3"))

    resumed = CatVersionTrainer(
        tiny_stable_diffusion_pipeline(tokenizer_dir), config(tmp_path / "b", resume_from_checkpoint="latest", **settings)
    )
    result = resumed.train(data_dir)
    assert result.global_step == 6 and len(result.losses) == 3
    for layer, (key, value) in expected.residuals["text_encoder"].items():
        got_key, got_value = result.state.residuals["text_encoder"][layer]
        assert torch.equal(key, got_key) and torch.equal(value, got_value)


def test_resume_with_other_catversion_settings_is_refused(pipe, data_dir, tmp_path):
    CatVersionTrainer(pipe, config(tmp_path, max_train_steps=2, checkpointing_steps=1, checkpoints_total_limit=1)).train(data_dir)
    assert list_checkpoints(str(tmp_path / "out")) == [1]  # the total limit pruned the older ones
    other = config(tmp_path, max_train_steps=4, resume_from_checkpoint="latest", num_residual_tokens=2)
    with pytest.raises(CatVersionTrainingError, match="num_residual_tokens"):
        CatVersionTrainer(tiny_stable_diffusion_pipeline(str(tmp_path / "tok")), other).train(data_dir)
    missing = config(tmp_path, resume_from_checkpoint="checkpoint-99")
    with pytest.raises(CatVersionTrainingError, match="not found"):
        CatVersionTrainer(tiny_stable_diffusion_pipeline(str(tmp_path / "tok")), missing).train(data_dir)


def test_output_dir_with_another_concept_is_not_overwritten(tokenizer_dir, data_dir, tmp_path):
    CatVersionTrainer(tiny_stable_diffusion_pipeline(tokenizer_dir), config(tmp_path, max_train_steps=1)).train(data_dir)
    path = tmp_path / "out" / "catversion.safetensors"
    before = path.read_bytes()
    with pytest.raises(CatVersionTrainingError, match="different concept"):
        CatVersionTrainer(tiny_stable_diffusion_pipeline(tokenizer_dir), config(tmp_path, class_word="cat")).train(data_dir)
    other_images = write_images(str(tmp_path / "other"), seed=1)
    with pytest.raises(CatVersionTrainingError, match="data_fingerprint"):
        CatVersionTrainer(tiny_stable_diffusion_pipeline(tokenizer_dir), config(tmp_path)).train(other_images)
    assert path.read_bytes() == before
    CatVersionTrainer(
        tiny_stable_diffusion_pipeline(tokenizer_dir), config(tmp_path, class_word="cat", max_train_steps=1, overwrite_output_dir=True)
    ).train(data_dir)
    assert load_state_file(str(path)).metadata["class_word"] == "cat"


def test_a_failing_final_save_leaves_no_file(pipe, data_dir, tmp_path, monkeypatch):
    import safetensors.torch

    def broken_save(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        CatVersionTrainer(pipe, config(tmp_path, max_train_steps=1)).train(data_dir)
    assert os.listdir(tmp_path / "out") == [] or "catversion.safetensors" not in os.listdir(tmp_path / "out")
    assert not [f for f in os.listdir(tmp_path / "out") if f.endswith(".tmp")]
    assert pipe.get_catversion_adapters() == {}


def test_mixed_precision_casts_frozen_models_only(pipe, data_dir, tmp_path):
    trainer = CatVersionTrainer(pipe, config(tmp_path, max_train_steps=2, mixed_precision="bf16"))
    result = trainer.train(data_dir)
    assert pipe.unet.dtype == torch.bfloat16 and pipe.text_encoder.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in trainer.parameters())
    states = [v for s in trainer.optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim()]
    assert states and all(v.dtype == torch.float32 for v in states)
    assert all(np.isfinite(result.losses))


def test_settings_several_tokens_custom_layers_normal_init_and_templates(pipe, data_dir, tmp_path, caplog):
    trainer = CatVersionTrainer(
        pipe,
        config(
            tmp_path,
            class_word="sksdog",  # not one token of the tiny vocabulary: split into several
            num_residual_tokens=2,
            residual_layers=[-2, -1],
            residual_init="normal",
            logit_bias=1.0,
            prompt_templates=["a {} on the beach", "a red {}"],
            max_train_steps=2,
        ),
    )
    with caplog.at_level(logging.WARNING):
        state = trainer.train(data_dir).state
    assert "tokens for this tokenizer" in caplog.text
    assert sorted(state.residuals["text_encoder"]) == [3, 4] and state.num_tokens == 2 and state.logit_bias == 1.0
    assert trainer.prompts == ["a sksdog on the beach", "a red sksdog"]
    key = state.residuals["text_encoder"][3][0]
    assert 0.5 < float(key.std()) < 1.5  # N(0, 1) start, as the authors


def test_class_init_starts_from_the_class_words_keys(pipe, data_dir, tmp_path):
    trainer = CatVersionTrainer(pipe, config(tmp_path, num_residual_tokens=2))
    trainer.setup(data_dir)
    key, value = trainer.residuals["text_encoder"][2]
    expected_key, expected_value = trainer._class_token_kv(pipe.text_encoder, pipe.tokenizer, [2])[2]
    # two tokens: the class word's key/value plus 2 % noise that breaks their symmetry
    assert not torch.equal(key[0], key[1])
    assert torch.allclose(key.mean(0), expected_key, atol=0.05 * float(expected_key.norm()))
    assert torch.allclose(value[0], expected_value, atol=0.1 * float(expected_value.abs().max()))


def test_sdxl_trains_both_text_encoders(tokenizer_dir, data_dir, tmp_path):
    pipe = tiny_stable_diffusion_xl_pipeline(str(tmp_path / "tok"))
    before = generate(pipe, "a dog")
    trainer = CatVersionTrainer(pipe, config(tmp_path, max_train_steps=2))
    result = trainer.train(data_dir)
    assert trainer.text.uses_cache  # the cached path matched the full encoders (self-check)
    assert {k: sorted(v) for k, v in result.state.residuals.items()} == {"text_encoder": [1, 2, 3], "text_encoder_2": [1, 2, 3]}
    pipe.load_catversion(result.path)
    assert np.abs(generate(pipe, "a dog") - before).max() > 1e-5


def test_push_to_hub_uploads_residuals_card_and_grid(pipe, data_dir, tmp_path, monkeypatch):
    import huggingface_hub

    uploaded = {}

    class FakeApi:
        def __init__(self, token=None):
            uploaded["token"] = token

        def create_repo(self, repo_id, private=None, exist_ok=False):
            return type("Repo", (), {"repo_id": f"user/{repo_id}"})()

        def upload_folder(self, repo_id, folder_path, commit_message):
            uploaded["repo_id"] = repo_id
            uploaded["files"] = {name: open(os.path.join(folder_path, name), "rb").read() for name in os.listdir(folder_path)}
            return type("Commit", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    result = CatVersionTrainer(
        pipe,
        config(tmp_path, max_train_steps=2, push_to_hub=True, hub_model_id="my-dog", hub_token="secret",
               validation_prompt="a dog in the snow", num_validation_images=2, validation_num_inference_steps=2),
    ).train(data_dir)
    assert result.hub_commit_url.endswith("/commit/1") and uploaded["repo_id"] == "user/my-dog"
    assert sorted(uploaded["files"]) == ["README.md", "catversion.safetensors", "final.png"]
    card = uploaded["files"]["README.md"].decode()
    assert "dog" in card and "load_catversion" in card and "final.png" in card and "a dog in the snow" in card
    assert uploaded["token"] == "secret"


# ---------------------------------------------------------------------------------------------------- bad input
def test_missing_empty_and_unusable_data_dirs(tmp_path):
    with pytest.raises(CatVersionDataError, match="does not exist"):
        load_training_images(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CatVersionDataError, match="is empty"):
        load_training_images(str(tmp_path / "empty"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "notes.txt").write_text("hello")
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with pytest.raises(CatVersionDataError) as error:
        load_training_images(str(bad))
    assert "notes.txt" in str(error.value) and "broken.png" in str(error.value)


def test_bad_files_are_skipped_with_one_warning_listing_them(tmp_path, caplog):
    folder = write_images(str(tmp_path / "data"), n=3)
    (tmp_path / "data" / "notes.txt").write_text("not an image")
    good = (tmp_path / "data" / "0.png").read_bytes()
    (tmp_path / "data" / "truncated.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "data" / ".DS_Store").write_bytes(b"\x00\x01")
    Image.new("RGB", (4, 4)).save(tmp_path / "data" / "tiny.png")
    with caplog.at_level(logging.WARNING):
        found = load_training_images(folder, resolution=32)
    assert len(found) == 3
    skipped = dict(found.skipped)
    assert set(skipped) == {"notes.txt", "truncated.png", "tiny.png"}
    assert "not an image" in skipped["notes.txt"] and "corrupt" in skipped["truncated.png"]
    assert "too small" in skipped["tiny.png"]
    assert "notes.txt" in caplog.text and "truncated.png" in caplog.text


def test_image_modes_are_converted_to_rgb(tmp_path):
    folder = tmp_path / "modes"
    folder.mkdir()
    Image.new("L", (40, 40), 128).save(folder / "gray.png")
    Image.new("RGBA", (40, 40), (255, 0, 0, 0)).save(folder / "transparent.png")
    Image.new("P", (40, 40), 3).save(folder / "palette.png")
    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(folder / "cmyk.jpg")
    Image.fromarray(np.full((40, 40), 65535, dtype=np.uint16)).save(folder / "white16.png")
    Image.fromarray(np.full((40, 40), 32896, dtype=np.uint16)).save(folder / "mid16.png")
    found = {i.source: i.image for i in load_training_images(str(folder), resolution=32).images}
    assert all(image.mode == "RGB" for image in found.values())
    assert found["gray.png"].getpixel((0, 0)) == (128, 128, 128)
    assert found["transparent.png"].getpixel((0, 0)) == (255, 255, 255)  # alpha over white
    assert found["white16.png"].getpixel((0, 0)) == (255, 255, 255)
    assert found["mid16.png"].getpixel((0, 0)) == (128, 128, 128)  # scaled, not clipped to white
    assert to_rgb(Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32))).getpixel((0, 0)) == (128, 128, 128)


def test_huge_images_are_refused_before_decoding_and_arrays_accepted(tmp_path):
    Image.new("RGB", (300, 200)).save(tmp_path / "big.png")
    with pytest.raises(CatVersionDataError, match="too large"):
        load_training_images([str(tmp_path / "big.png")], resolution=32, max_image_pixels=10_000)
    found = load_training_images([np.zeros((40, 40, 3), np.uint8), Image.new("LA", (40, 40))], resolution=32)
    assert [i.image.mode for i in found.images] == ["RGB", "RGB"]


def test_trainer_reports_bad_data_and_bad_settings(pipe, tmp_path):
    with pytest.raises(CatVersionDataError, match="does not exist"):
        CatVersionTrainer(pipe, config(tmp_path)).train(str(tmp_path / "missing"))
    assert pipe.get_catversion_adapters() == {}
    with pytest.raises(ValueError, match="class_word"):
        config(tmp_path, class_word="  ")
    with pytest.raises(ValueError, match="resolution"):
        config(tmp_path, resolution=30)
    with pytest.raises(CatVersionDataError, match="exactly one"):
        config(tmp_path, prompt_templates=["a photo"])
    with pytest.raises(CatVersionTrainingError, match="do not exist"):
        CatVersionTrainer(pipe, config(tmp_path, residual_layers=[7])).train(write_images(str(tmp_path / "d")))


def test_helpers():
    assert parse_residual_layers("9,10,11") == [9, 10, 11]
    assert parse_residual_layers("text_encoder:9,10;text_encoder_2:-3,-2") == {"text_encoder": [9, 10], "text_encoder_2": [-3, -2]}
    assert parse_residual_layers(None) is None
    with pytest.raises(ValueError):
        parse_residual_layers("a,b")
    assert training_prompts("dog")[0] == "a photo of a dog"
    assert "in the style of watercolor" in training_prompts("watercolor", "style")[0]
