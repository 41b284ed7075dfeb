"""The models the benchmarks run on, all offline: ``tiny``, ``world`` (the bundled world model) and ``sd15``.

``sd15`` is the full Stable Diffusion 1.5 architecture with random weights built from the standard configs: the same
parameter counts, shapes and FLOPs as the real model, so its timings and memory stand for the real one (random
weights do not change the work done). Its tokenizer is the tiny offline BPE tokenizer of
``catversion_diffusers.testing``, padded with synthetic words to the real vocabulary size (49408), so that the token
embedding table (what textual inversion trains and resizes) has its real size; the vocabulary only affects that
table and tokenization, never the FLOPs of the encoder.
"""

import json
import os
from typing import Dict, Optional

import torch

from catversion_diffusers.testing import DEFAULT_WORDS, tiny_clip_tokenizer, tiny_stable_diffusion_components

MODELS = ("tiny", "world", "sd15")
SD15_VOCAB_SIZE = 49408
WORLD_WEIGHTS = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "src", "catversion_diffusers", "world", "weights"
)


def default_resolution(model: str, device: str, components: Optional[dict] = None) -> int:
    """256 px for sd15 on CPU, 512 on GPU; the native size of the tiny and world models."""
    if model == "sd15":
        return 512 if device == "cuda" else 256
    if components is not None:
        unet, vae = components["unet"], components["vae"]
        return int(unet.config.sample_size) * 2 ** (len(vae.config.block_out_channels) - 1)
    return 32


# -------------------------------------------------------------------------------------------------------- sd15
def _padded_words(target_vocab: int):
    """DEFAULT_WORDS plus synthetic words so that ``write_clip_tokenizer_files`` makes exactly ``target_vocab`` tokens.

    Replays the vocabulary construction of ``catversion_diffusers.testing.write_clip_tokenizer_files`` (256 bytes, the
    same with the end-of-word marker, one entry per new merge, two special tokens) to count the entries.
    """
    from catversion_diffusers.testing import _bytes_to_unicode

    base = list(_bytes_to_unicode().values())
    seen = set(base) | {c + "</w>" for c in base}
    count = len(seen) + 2  # + <|startoftext|>, <|endoftext|>

    def new_entries(word):
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        current, added = symbols[0], []
        for symbol in symbols[1:]:
            current = current + symbol
            if current not in seen and current not in added:
                added.append(current)
        return added

    words = []
    for word in dict.fromkeys(w.lower() for w in DEFAULT_WORDS):
        added = new_entries(word)
        seen.update(added)
        count += len(added)
        words.append(word)
    letters = "abcdefghijklmnopqrstuvwxyz"
    index = 0
    while count < target_vocab:
        # synthetic 5-letter words "zaaaa", "zaaab", ... (the default words never start with z)
        n, chars = index, []
        for _ in range(4):
            n, r = divmod(n, 26)
            chars.append(letters[r])
        word = "z" + "".join(reversed(chars))
        index += 1
        added = new_entries(word)
        if not added or count + len(added) > target_vocab:
            continue
        seen.update(added)
        count += len(added)
        words.append(word)
    if count != target_vocab:
        raise RuntimeError(f"could not pad the tokenizer to {target_vocab} tokens (got {count})")
    return words


def sd15_tokenizer(directory: str, vocab_size: int = SD15_VOCAB_SIZE):
    """The offline tiny CLIP tokenizer padded to SD1.5's vocabulary size (49408; specials are 49406 and 49407)."""
    tokenizer = tiny_clip_tokenizer(directory, _padded_words(vocab_size))
    assert len(tokenizer) == vocab_size, len(tokenizer)
    return tokenizer


def sd15_components(workdir: str, seed: int = 0) -> Dict[str, object]:
    """SD1.5 UNet, VAE and CLIP ViT-L/14 text encoder with random weights (standard configs), offline."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = sd15_tokenizer(os.path.join(workdir, "sd15-tokenizer"))
    config = CLIPTextConfig(
        hidden_size=768,
        intermediate_size=3072,
        num_attention_heads=12,
        num_hidden_layers=12,
        max_position_embeddings=77,
        vocab_size=len(tokenizer),
        hidden_act="quick_gelu",
        projection_dim=768,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(config).eval()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        cross_attention_dim=768,
        attention_head_dim=8,
    ).eval()
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    ).eval()
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
        steps_offset=1,
    )
    return dict(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler, safety_checker=None,
        feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    )


# -------------------------------------------------------------------------------------------------------- world
def world_components(path: Optional[str] = None) -> Dict[str, object]:
    from diffusers import StableDiffusionPipeline

    path = os.path.abspath(path or WORLD_WEIGHTS)
    if not os.path.isfile(os.path.join(path, "model_index.json")):
        raise SystemExit(
            f"--model world: no bundled world model at {path} (no model_index.json). Train it with "
            "`python examples/world/train_world.py`, or pass --model_path."
        )
    pipe = StableDiffusionPipeline.from_pretrained(path, safety_checker=None, requires_safety_checker=False)
    components = dict(pipe.components)
    components.setdefault("image_encoder", None)
    return components


# -------------------------------------------------------------------------------------------------------- entry
def build_components(model: str, workdir: str, seed: int = 0, model_path: Optional[str] = None,
                     weights_cache: Optional[str] = None) -> Dict[str, object]:
    """Pipeline components of ``model`` (fp32, CPU, eval mode).

    ``weights_cache``: for ``sd15``, a folder where the random weights are saved on first use and loaded from
    afterwards (building them takes tens of seconds on a small CPU; loading is seconds), so that every process of a
    run uses exactly the same weights.
    """
    if model == "tiny":
        return tiny_stable_diffusion_components(os.path.join(workdir, "tiny-tokenizer"), seed=seed)
    if model == "world":
        return world_components(model_path)
    if model != "sd15":
        raise ValueError(f"unknown model {model!r}; one of {MODELS}")
    if weights_cache is None:
        return sd15_components(workdir, seed)
    from safetensors.torch import load_file, save_file

    marker = os.path.join(weights_cache, "done.json")
    if not os.path.isfile(marker):
        components = sd15_components(workdir, seed)
        os.makedirs(weights_cache, exist_ok=True)
        for name in ("unet", "vae", "text_encoder"):
            state = {k: v.contiguous() for k, v in components[name].state_dict().items()}
            save_file(state, os.path.join(weights_cache, f"{name}.safetensors"))
        with open(marker, "w") as f:
            json.dump({"model": "sd15", "seed": seed}, f)
        return components
    components = _sd15_skeleton(workdir)
    for name in ("unet", "vae", "text_encoder"):
        state = load_file(os.path.join(weights_cache, f"{name}.safetensors"))
        missing, unexpected = components[name].load_state_dict(state, strict=False, assign=True)
        if unexpected or any(m for m in missing if "position_ids" not in m):
            raise RuntimeError(f"weights cache {weights_cache}: {name} missing {missing}, unexpected {unexpected}")
        del state
        # load_file maps the file: copy every tensor into ordinary memory (one at a time), so that the weights are
        # resident from the start and the pages of the mapping are not counted as a step's memory when first touched
        with torch.no_grad():
            for tensor in list(components[name].parameters()) + list(components[name].buffers()):
                tensor.data = tensor.data.clone()
        components[name].eval()
    return components


def _sd15_skeleton(workdir: str) -> Dict[str, object]:
    """sd15 components with weights allocated but not initialised (to be filled from the weights cache)."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        components = sd15_components(workdir)
    return components
