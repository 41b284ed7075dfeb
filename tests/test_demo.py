"""The README's main job and the evidence script, in reduced form (few steps) on the bundled world."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from catversion_diffusers import world

pytestmark = pytest.mark.skipif(not world.weights_available(), reason="bundled world weights missing")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_main_job_writes_grid_metrics_and_a_loadable_file(tmp_path):
    from PIL import Image

    from catversion_diffusers.demo import main

    out = tmp_path / "demo"
    metrics = main(
        ["--output_dir", str(out), "--max_train_steps", "3", "--num_seeds", "1", "--num_inference_steps", "4"]
    )
    grid = Image.open(out / "grid.png")
    prompts = 1 + len(world.BACKGROUNDS)
    assert grid.size[1] > prompts * 32  # one row per prompt, upscaled tiles
    assert (out / "references.png").exists()
    written = json.loads((out / "metrics.json").read_text())
    assert written["train_steps"] == 3
    for branch in ("base_model", "catversion"):
        scores = written[branch]
        assert 0.0 <= scores["text_alignment"] <= 1.0
        assert scores["overall"] == pytest.approx(np.sqrt(scores["text_alignment"] * max(scores["image_alignment"], 0)))
        assert len(scores["per_image"]) == prompts
    # The residual file is the real format and loads into a stock pipeline.
    pipe = world.load_world_pipeline()
    name = pipe.load_catversion(metrics["residual_file"])
    assert pipe.get_catversion_adapters()[name].metadata["class_word"] == "circle"


def test_score_concept_images_rewards_the_concept_itself():
    """References of the concept score full concept match and image alignment 1 against themselves; a plain shape of
    another colour does not match."""
    from catversion_diffusers.demo import score_concept_images

    concept = world.get_concept("two_tone_triangle")
    references = [image for image, _ in concept.references()]
    prompts = [f"a triangle on a {scene.background} background" for scene in concept.reference_scenes()]
    scores = score_concept_images(references, prompts, concept)
    assert scores["concept_match"] == 1.0
    assert scores["text_alignment"] == 1.0
    plain, _ = world.render(world.Scene("triangle", "blue", "white", 16.0, 16.0, 10.0))
    other = score_concept_images([plain], ["a triangle on a white background"], concept)
    assert other["concept_match"] == 0.0
    assert other["image_alignment"] < scores["image_alignment"]


@pytest.mark.slow
def test_evidence_script_smoke(tmp_path):
    out = tmp_path / "evidence"
    cmd = [sys.executable, os.path.join(ROOT, "examples", "world", "evidence.py"), "--output_dir", str(out),
           "--steps", "2", "--seeds", "1", "--image_seeds", "1", "--num_inference_steps", "3", "--quick"]
    subprocess.run(cmd, check=True, timeout=600, capture_output=True)
    results = json.loads((out / "evidence.json").read_text())
    assert set(results["tables"]) == {"catversion", "catversion_all", "catversion_first", "textual_inversion", "base"}
    assert (out / "evidence.md").exists()
