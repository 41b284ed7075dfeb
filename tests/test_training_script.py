"""``examples/train_catversion.py`` end to end: plain python, ``accelerate launch`` with 2 processes, resume, errors.

The base model is a tiny Stable Diffusion pipeline saved with ``save_pretrained`` in a temporary folder (offline).
"""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import catversion_diffusers  # noqa: F401
from catversion_diffusers import load_state_file
from catversion_diffusers.testing import tiny_stable_diffusion_pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "examples", "train_catversion.py")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    pipe = tiny_stable_diffusion_pipeline(str(folder / "tokenizer_src"))
    pipe.save_pretrained(str(folder / "model"))
    return str(folder / "model")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return str(folder)


def env():
    out = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    out.pop("WORLD_SIZE", None)
    return out


def arguments(model_dir, data_dir, output_dir, *extra):
    return [
        "--pretrained_model_name_or_path", model_dir, "--train_data_dir", data_dir, "--class_word", "dog",
        "--output_dir", output_dir, "--resolution", "32", "--seed", "0", "--mixed_precision", "no", *extra,
    ]


def run(command, timeout=240):
    done = subprocess.run(command, env=env(), cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return done


def image(pipe):
    return pipe("a photo of a dog", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)).images


def load_script():
    spec = importlib.util.spec_from_file_location("train_catversion", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_python_end_to_end_then_resume(model_dir, data_dir, tmp_path):
    out = str(tmp_path / "out")
    run([sys.executable, SCRIPT, *arguments(
        model_dir, data_dir, out, "--max_train_steps", "4", "--checkpointing_steps", "2",
        "--validation_prompt", "a photo of a dog", "--validation_steps", "2", "--num_validation_images", "2",
        "--validation_num_inference_steps", "2",
    )])
    files = sorted(os.listdir(out))
    assert {"catversion.safetensors", "checkpoint-2", "logs", "validation", "training_summary.json"} <= set(files)
    assert sorted(os.listdir(os.path.join(out, "validation"))) == ["final.png", "step-000002.png"]
    assert Image.open(os.path.join(out, "validation", "final.png")).size == (64, 32)  # 2 images side by side
    events = [f for _, _, fs in os.walk(os.path.join(out, "logs")) for f in fs if f.startswith("events.out.tfevents")]
    assert events  # TensorBoard by default
    assert json.load(open(os.path.join(out, "training_summary.json")))["global_step"] == 4

    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model_dir, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    before = image(pipe)
    pipe.load_catversion(out)
    assert pipe.get_catversion_adapters()["out"].metadata["class_word"] == "dog"
    assert np.abs(image(pipe) - before).max() > 1e-4

    # Resume from the step-2 checkpoint to 6 steps (with a warning that max_train_steps changed).
    done = run([sys.executable, SCRIPT, *arguments(
        model_dir, data_dir, out, "--max_train_steps", "6", "--checkpointing_steps", "2", "--resume_from_checkpoint",
        "latest",
    )])
    assert "Resumed from" in done.stderr and "checkpoint-2 at step 2" in done.stderr
    assert load_state_file(os.path.join(out, "catversion.safetensors")).metadata["train_steps"] == "6"


def test_accelerate_launch_two_processes(model_dir, data_dir, tmp_path):
    out = str(tmp_path / "out")
    run([
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29533",
        SCRIPT, *arguments(model_dir, data_dir, out, "--max_train_steps", "4", "--checkpointing_steps", "2"),
    ], timeout=300)
    summary = json.load(open(os.path.join(out, "training_summary.json")))
    assert summary["num_processes"] == 2 and summary["global_step"] == 4
    assert sorted(f for f in os.listdir(os.path.join(out, "checkpoint-2")) if f.startswith("random_states")) == [
        "random_states_0.pkl", "random_states_1.pkl"
    ]
    state = load_state_file(os.path.join(out, "catversion.safetensors"))
    assert sorted(state.residuals["text_encoder"]) == [2, 3, 4]


def test_script_errors_are_clear(model_dir, data_dir, tmp_path, capsys):
    script = load_script()
    assert script.main(arguments(model_dir, str(tmp_path / "missing"), str(tmp_path / "o"))) == 1
    assert "does not exist" in capsys.readouterr().err
    assert script.main(arguments(model_dir, data_dir, str(tmp_path / "o"), "--resolution", "30")) == 2
    assert "multiple of 8" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.main(["--train_data_dir", data_dir, "--class_word", "dog"])  # no model
    with pytest.raises(SystemExit):
        script.main(arguments(model_dir, data_dir, str(tmp_path / "o"), "--report_to", "wandb", "--hub_token", "x"))
    args = script.parse_args(arguments(model_dir, data_dir, str(tmp_path / "o"), "--residual_layers=-2,-1"))
    config = script.config_from_args(args)
    assert config.residual_layers == [-2, -1] and config.max_train_steps == 1000 and config.learning_rate == 5e-3
    assert config.lr_scheduler == "constant" and config.train_batch_size == 1 and config.residual_init == "class"
    epochs = script.config_from_args(script.parse_args(arguments(model_dir, data_dir, "o", "--num_train_epochs", "2")))
    assert epochs.max_train_steps is None and epochs.num_train_epochs == 2
