"""File format v1 (save/load round trips, metadata, atomic writes) and the authors' real checkpoints."""

import os
import pickle
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import catversion_diffusers
from catversion_diffusers import (
    CatVersionFormatError,
    CatVersionState,
    CatVersionUnsafeCheckpointError,
    get_catversion_adapters,
    get_catversion_residuals,
    load_official_checkpoint,
    load_state_file,
    save_state,
    state_from_tensors,
)

OFFICIAL_DIR = "/work/shared/fixtures/official-catversion"
OFFICIAL = {name: os.path.join(OFFICIAL_DIR, f"{name}_pytorch_adapter.bin") for name in ("teddybear", "colorful_teapot")}
needs_official = pytest.mark.skipif(
    not all(os.path.isfile(p) for p in OFFICIAL.values()), reason="the authors' checkpoints are not available"
)


def _encode(pipe, prompts=("a photo of a dog", "a red teapot")):
    ids = pipe.tokenizer(list(prompts), padding="max_length", max_length=12, truncation=True, return_tensors="pt")
    with torch.no_grad():
        return pipe.text_encoder(ids.input_ids)[0]


# ------------------------------------------------------------------------------------------------ state <-> tensors
def test_state_round_trip_through_tensors_and_file(ref, tmp_path):
    residuals = ref.random_residuals(32, [2, 3, 4], 2, seed=1)
    second = ref.random_residuals(32, [1, 2, 3], 2, seed=2)
    state = CatVersionState(
        residuals={"text_encoder": residuals, "text_encoder_2": second},
        logit_bias=1.0,
        metadata={"class_word": "dog", "base_model": "tiny"},
    )
    path = save_state(state, str(tmp_path / "sub" / "concept.safetensors"))
    assert path == str(tmp_path / "sub" / "concept.safetensors")
    # the documented tensor names, nothing else
    expected_names = {
        f"{enc}.layers.{i}.residual_{kind}"
        for enc, layers in (("text_encoder", [2, 3, 4]), ("text_encoder_2", [1, 2, 3]))
        for i in layers
        for kind in ("key", "value")
    }
    raw = load_file(path)
    assert set(raw) == expected_names
    for i, (k, v) in residuals.items():
        assert torch.equal(raw[f"text_encoder.layers.{i}.residual_key"], k)
        assert torch.equal(raw[f"text_encoder.layers.{i}.residual_value"], v)
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata()
    assert metadata["format"] == "catversion"
    assert metadata["format_version"] == "1"
    assert float(metadata["logit_bias"]) == 1.0
    assert metadata["num_tokens"] == "2"
    assert metadata["class_word"] == "dog" and metadata["base_model"] == "tiny"

    loaded = load_state_file(path)
    assert loaded.logit_bias == 1.0 and loaded.num_tokens == 2
    assert loaded.metadata["class_word"] == "dog"
    for encoder, layers in state.residuals.items():
        assert sorted(loaded.residuals[encoder]) == sorted(layers)
        for i, (k, v) in layers.items():
            assert torch.equal(loaded.residuals[encoder][i][0], k)
            assert torch.equal(loaded.residuals[encoder][i][1], v)


def test_bare_state_dict_defaults(ref):
    state = state_from_tensors(ref.to_state_dict(ref.random_residuals(32, [4], 1)))
    assert state.logit_bias == 0.0 and state.num_tokens == 1 and list(state.residuals) == ["text_encoder"]


@pytest.mark.parametrize(
    "metadata",
    [{"format": "lora"}, {"format_version": "2"}, {"logit_bias": "nan"}, {"logit_bias": "one"}, {"num_tokens": "3"}],
)
def test_bad_metadata(ref, metadata):
    with pytest.raises(CatVersionFormatError):
        state_from_tensors(ref.to_state_dict(ref.random_residuals(32, [4], 1)), metadata)


# ------------------------------------------------------------------------------------------------ pipeline round trip
@pytest.mark.parametrize("logit_bias", [0.0, 1.0])
def test_pipeline_save_load_round_trip(ref, tokenizer_dir, tmp_path, logit_bias):
    from catversion_diffusers import testing

    pipe = testing.tiny_stable_diffusion_pipeline(tokenizer_dir)
    stock = _encode(pipe)
    residuals = ref.random_residuals(32, [2, 3, 4], 2, seed=3)
    state = CatVersionState({"text_encoder": residuals}, logit_bias=logit_bias, metadata={"class_word": "teapot"})
    pipe.load_catversion(state, adapter_name="teapot")
    loaded = _encode(pipe)
    assert not torch.allclose(loaded, stock, atol=1e-3)

    path = pipe.save_catversion(tmp_path / "out")
    assert path == os.path.join(str(tmp_path / "out"), "catversion.safetensors")
    assert os.listdir(tmp_path / "out") == ["catversion.safetensors"]  # no temporary file left
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata()
    assert metadata["format"] == "catversion" and metadata["format_version"] == "1"
    assert float(metadata["logit_bias"]) == logit_bias and metadata["num_tokens"] == "2"
    assert metadata["library_version"] == catversion_diffusers.__version__
    assert metadata["class_word"] == "teapot" and metadata["adapter_name"] == "teapot"

    sources = {
        "folder": (str(tmp_path / "out"), None, "out"),
        "file": (path, None, "out"),  # catversion.safetensors is named after its folder
        "pathlike": (tmp_path / "out" / "catversion.safetensors", "mine", "mine"),
        "state": (load_state_file(path), None, "teapot"),  # from its metadata
    }
    if logit_bias == 0.0:  # a bare state dict has no metadata: logit bias 0 (docs/file_format.md)
        sources["state dict"] = (load_file(path), "from-dict", "from-dict")
    for kind, (source, adapter_name, expected_name) in sources.items():
        fresh = testing.tiny_stable_diffusion_pipeline(tokenizer_dir)
        assert torch.equal(_encode(fresh), stock)
        name = fresh.load_catversion(source, adapter_name=adapter_name)
        assert name == expected_name, kind
        assert torch.equal(_encode(fresh), loaded), kind
        info = fresh.get_catversion_adapters()[name]
        assert info.logit_bias == logit_bias and info.layers == [2, 3, 4] and info.num_tokens == 2
        assert info.metadata["class_word"] == "teapot" if kind != "state dict" else "class_word" not in info.metadata
        for i, (k, v) in get_catversion_residuals(fresh.text_encoder, name).items():
            assert torch.equal(k, residuals[i][0]) and torch.equal(v, residuals[i][1])


def test_save_without_class_word_and_with_two_adapters(ref, sd_pipe, tmp_path):
    sd_pipe.load_catversion(ref.to_state_dict(ref.random_residuals(32, [3, 4], 1, seed=4)), adapter_name="a")
    sd_pipe.load_catversion(ref.to_state_dict(ref.random_residuals(32, [4], 1, seed=5)), adapter_name="b")
    with pytest.raises(catversion_diffusers.CatVersionAdapterNameError, match="adapter_name"):
        sd_pipe.save_catversion(tmp_path)
    path = sd_pipe.save_catversion(tmp_path, adapter_name="b", weight_name="b.safetensors")
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata()
        assert sorted(f.keys()) == ["text_encoder.layers.4.residual_key", "text_encoder.layers.4.residual_value"]
    assert "class_word" not in metadata
    assert metadata["logit_bias"] == "0.0" and metadata["adapter_name"] == "b"


def test_atomic_write_keeps_previous_file_on_failure(ref, sd_pipe, tmp_path, monkeypatch):
    import safetensors.torch

    sd_pipe.load_catversion(ref.to_state_dict(ref.random_residuals(32, [2, 3, 4], 1, seed=6)), adapter_name="first")
    path = sd_pipe.save_catversion(tmp_path)
    with open(path, "rb") as f:
        previous = f.read()
    sd_pipe.unload_catversion()
    sd_pipe.load_catversion(ref.to_state_dict(ref.random_residuals(32, [2, 3, 4], 1, seed=7)), adapter_name="second")

    def failing_save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", failing_save_file)
    with pytest.raises(OSError, match="disk full"):
        sd_pipe.save_catversion(tmp_path)
    with open(path, "rb") as f:
        assert f.read() == previous
    assert os.listdir(tmp_path) == ["catversion.safetensors"]
    monkeypatch.undo()
    # and a successful save replaces it
    sd_pipe.save_catversion(tmp_path)
    assert os.listdir(tmp_path) == ["catversion.safetensors"]
    assert load_state_file(path).metadata["adapter_name"] == "second"


# ------------------------------------------------------------------------------------------------ authors' checkpoints
@pytest.fixture(scope="module")
def sd15_text_encoder():
    """A CLIPTextModel with the SD1.5 text config (random weights, small vocabulary)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12, vocab_size=1000,
        max_position_embeddings=77, projection_dim=768, bos_token_id=0, eos_token_id=2, pad_token_id=1,
    )
    torch.manual_seed(0)
    return CLIPTextModel(config).eval()


@pytest.fixture
def sd15_pipe(sd15_text_encoder, tokenizer):
    """A DiffusionPipeline holding only a tokenizer and the SD1.5-sized text encoder."""
    from diffusers import DiffusionPipeline

    class TextEncoderPipeline(DiffusionPipeline):
        def __init__(self, text_encoder, tokenizer):
            super().__init__()
            self.register_modules(text_encoder=text_encoder, tokenizer=tokenizer)

    pipe = TextEncoderPipeline(sd15_text_encoder, tokenizer)
    yield pipe
    if pipe.get_catversion_adapters():
        pipe.unload_catversion()
    assert catversion_diffusers.get_catversion_adapters(sd15_text_encoder) == {}


def _official_chunks(path):
    """The six 768-vectors of an authors' file, computed from the raw tensor."""
    raw = torch.load(path, map_location="cpu", weights_only=True)
    flat = [v for k, v in raw.items() if k.endswith("control_trans")][0]
    assert flat.shape == (4608,)
    return [flat[i * 768:(i + 1) * 768] for i in range(6)]


@needs_official
@pytest.mark.parametrize("concept", ["teddybear", "colorful_teapot"])
def test_official_checkpoint_is_imported_exactly(ref, sd15_pipe, concept, tmp_path):
    path = OFFICIAL[concept]
    chunks = _official_chunks(path)
    te = sd15_pipe.text_encoder
    originals = ref.attention_modules(te)
    snapshot_keys = list(te.state_dict())

    name = sd15_pipe.load_catversion(path, adapter_name=concept)
    info = sd15_pipe.get_catversion_adapters()[name]
    assert info.layers == [9, 10, 11] and info.num_tokens == 1 and info.logit_bias == 1.0
    live = get_catversion_residuals(te, name)
    for j, layer in enumerate((9, 10, 11)):
        key, value = live[layer]
        assert key.shape == (1, 768) and value.shape == (1, 768)
        assert torch.equal(key[0], chunks[2 * j])  # 1st, 3rd, 5th chunk
        assert torch.equal(value[0], chunks[2 * j + 1])  # 2nd, 4th, 6th chunk
    assert list(te.state_dict()) == snapshot_keys
    for index in range(9):
        assert ref.attention_modules(te)[index] is originals[index]

    # SD1.5-sized attention with the +1 logit bias against the float64 reference, layer by layer and in whole
    input_ids = torch.tensor([[0, 17, 230, 5, 871, 9, 2, 2]])
    recorder = ref.AttentionRecorder(ref.attention_modules(te))
    with torch.no_grad():
        output = te(input_ids)
    recorder.remove()
    for layer in (9, 10, 11):
        expected = ref.attention(ref.attention_modules(te)[layer], recorder.inputs[layer], [(*live[layer], 1.0)])
        torch.testing.assert_close(recorder.outputs[layer].double(), expected, rtol=1e-4, atol=1e-5)
    concepts = {layer: [(*live[layer], 1.0)] for layer in (9, 10, 11)}
    expected = ref.text_encoder(te, input_ids, concepts)
    torch.testing.assert_close(output.last_hidden_state.double(), expected.last_hidden_state, rtol=1e-4, atol=1e-4)

    # the functional importer gives the same, and a folder with the original file names too
    state = load_official_checkpoint(path)
    assert state.logit_bias == 1.0 and sorted(state.residuals["text_encoder"]) == [9, 10, 11]
    folder = tmp_path / concept
    folder.mkdir()
    shutil.copy(path, folder / "pytorch_adapter.bin")
    shutil.copy(os.path.join(OFFICIAL_DIR, f"{concept}_adapter_config.json"), folder / "adapter_config.json")
    sd15_pipe.unload_catversion()
    assert sd15_pipe.load_catversion(str(folder)) == concept
    with torch.no_grad():
        assert torch.equal(te(input_ids).last_hidden_state, output.last_hidden_state)
    # and save -> load in format v1 keeps the +1 bias
    saved = sd15_pipe.save_catversion(tmp_path / "converted")
    sd15_pipe.unload_catversion()
    sd15_pipe.load_catversion(saved, adapter_name="converted")
    assert sd15_pipe.get_catversion_adapters()["converted"].logit_bias == 1.0
    with torch.no_grad():
        assert torch.equal(te(input_ids).last_hidden_state, output.last_hidden_state)


@needs_official
def test_official_checkpoint_state_dict_into_tiny_model_is_refused(ref, sd_pipe):
    raw = torch.load(OFFICIAL["teddybear"], map_location="cpu", weights_only=True)
    with pytest.raises(catversion_diffusers.CatVersionCompatibilityError):
        sd_pipe.load_catversion(raw)
    with pytest.raises(catversion_diffusers.CatVersionCompatibilityError):
        sd_pipe.load_catversion(OFFICIAL["teddybear"])
    assert sd_pipe.get_catversion_adapters() == {} and ref.count_catversion_modules(sd_pipe.text_encoder) == 0


@needs_official
def test_plain_named_pickle_needs_allow_pickle(sd15_pipe, tmp_path):
    plain = tmp_path / "model.bin"
    shutil.copy(OFFICIAL["teddybear"], plain)
    with pytest.raises(CatVersionUnsafeCheckpointError, match="allow_pickle"):
        sd15_pipe.load_catversion(str(plain))
    assert sd15_pipe.get_catversion_adapters() == {}
    name = sd15_pipe.load_catversion(str(plain), allow_pickle=True)
    assert name == "model"
    chunks = _official_chunks(OFFICIAL["teddybear"])
    assert torch.equal(get_catversion_residuals(sd15_pipe.text_encoder, name)[11][1][0], chunks[5])


class _Evil:
    marker = None

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
@pytest.mark.parametrize("file_name", ["pytorch_adapter.bin", "evil.bin"])
def test_malicious_pickle_never_runs(sd_pipe, tmp_path, writer, file_name):
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = str(marker)
    path = tmp_path / file_name
    payload = {"text_model.encoder.layers.9.self_attn.prefix_tuning.x.control_trans": evil}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    assert not marker.exists()
    for kwargs in ({}, {"allow_pickle": True}):
        with pytest.raises(CatVersionUnsafeCheckpointError):
            sd_pipe.load_catversion(str(path), **kwargs)
        assert not marker.exists()
    with pytest.raises(CatVersionUnsafeCheckpointError):
        load_official_checkpoint(str(path))
    assert not marker.exists()
    assert sd_pipe.get_catversion_adapters() == {}
