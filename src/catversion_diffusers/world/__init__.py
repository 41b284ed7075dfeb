"""The offline world: a procedural image domain and a small Stable-Diffusion-style model trained on it.

- :mod:`.generator`: deterministic renderer (shapes x colours x backgrounds, 32 px), captions, exact masks and pixel
  attribute checkers.
- :mod:`.concepts`: personal concepts (patterned objects held out of pretraining) with reference images and masks.
- :func:`load_world_pipeline`: the bundled, pretrained ``StableDiffusionPipeline`` (weights in ``world/weights``,
  produced by ``examples/world/train_world.py``).
- :func:`load_eval_clip`: the world's own CLIP (text + vision towers) for CLIP-style alignment metrics.
"""

import os
from typing import Optional

from .concepts import CONCEPTS, PersonalConcept, concept_match, get_concept
from .generator import (
    BACKGROUNDS,
    COLOURS,
    HELD_OUT_PATTERNS,
    IMAGE_SIZE,
    SHAPES,
    WORLD_WORDS,
    Scene,
    all_captions,
    analyze_image,
    caption_for,
    caption_matches_scene,
    check_image,
    make_dataset,
    make_example,
    parse_caption,
    render,
    sample_pretraining_scene,
    sample_scene,
)

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
EVAL_CLIP_DIR = os.path.join(WEIGHTS_DIR, "eval_clip")

#: Sampling settings the measured prompt-following numbers (docs/world.md) were taken with.
DEFAULT_NUM_INFERENCE_STEPS = 25
DEFAULT_GUIDANCE_SCALE = 8.0


def weights_available(weights_dir: Optional[str] = None) -> bool:
    d = weights_dir or WEIGHTS_DIR
    return os.path.exists(os.path.join(d, "model_index.json")) and os.path.isdir(os.path.join(d, "unet"))


def load_world_pipeline(weights_dir: Optional[str] = None, pipeline_class=None, torch_dtype=None, device="cpu",
                        **kwargs):
    """The bundled world model as a ``StableDiffusionPipeline`` (or ``pipeline_class``), loaded offline.

    Components: ``CLIPTextModel`` (6 layers, hidden 64), ``CLIPTokenizer``, ``AutoencoderKL`` (32 px <-> 4x16x16),
    ``UNet2DConditionModel``, ``DDIMScheduler``; no safety checker. Images are 32 x 32 (the pipeline's defaults)."""
    from diffusers import StableDiffusionPipeline

    pipeline_class = pipeline_class or StableDiffusionPipeline
    d = weights_dir or WEIGHTS_DIR
    if not weights_available(d):
        raise FileNotFoundError(f"no world weights in {d}; run examples/world/train_world.py")
    if torch_dtype is not None:
        kwargs["torch_dtype"] = torch_dtype
    pipe = pipeline_class.from_pretrained(
        d, safety_checker=None, requires_safety_checker=False, feature_extractor=None, local_files_only=True, **kwargs
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_eval_clip(eval_clip_dir: Optional[str] = None):
    """The world's CLIP (``CLIPModel``, text + vision towers trained contrastively on the world) and its tokenizer."""
    from transformers import CLIPModel, CLIPTokenizer

    d = eval_clip_dir or EVAL_CLIP_DIR
    model = CLIPModel.from_pretrained(d, local_files_only=True).eval()
    tokenizer = CLIPTokenizer.from_pretrained(d, local_files_only=True)
    return model, tokenizer


def clip_image_embeddings(model, images):
    """L2-normalised image embeddings of the world CLIP. ``images``: PIL images / arrays (H, W, 3), 32 px."""
    import numpy as np
    import torch

    from .generator import to_uint8_array

    arr = np.stack([to_uint8_array(im) for im in images])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    with torch.no_grad():
        out = model.get_image_features(pixel_values=x)
    out = out if torch.is_tensor(out) else out.pooler_output
    return torch.nn.functional.normalize(out, dim=-1)


def clip_text_embeddings(model, tokenizer, texts):
    """L2-normalised text embeddings of the world CLIP."""
    import torch

    ids = tokenizer(list(texts), padding="max_length", truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = model.get_text_features(input_ids=ids.input_ids)
    out = out if torch.is_tensor(out) else out.pooler_output
    return torch.nn.functional.normalize(out, dim=-1)


__all__ = [
    "BACKGROUNDS", "COLOURS", "CONCEPTS", "HELD_OUT_PATTERNS", "DEFAULT_GUIDANCE_SCALE", "DEFAULT_NUM_INFERENCE_STEPS", "EVAL_CLIP_DIR",
    "IMAGE_SIZE", "PersonalConcept", "SHAPES", "Scene", "WEIGHTS_DIR", "WORLD_WORDS", "all_captions",
    "analyze_image", "caption_for", "caption_matches_scene", "check_image", "clip_image_embeddings", "clip_text_embeddings", "concept_match",
    "get_concept", "load_eval_clip", "load_world_pipeline", "make_dataset", "make_example", "parse_caption", "render",
    "sample_pretraining_scene", "sample_scene", "weights_available",
]
