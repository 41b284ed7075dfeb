"""Tiny, offline building blocks for tests, examples and benchmarks.

Nothing here downloads anything: the tokenizer is a real ``CLIPTokenizer`` built from vocabulary and merge files
written on the spot for a small word list, and models are built from configs with random weights.
"""

import json
import os
from typing import Iterable, List, Optional, Sequence

import torch

DEFAULT_WORDS = (
    "a photo of the an in on with and dog cat teapot bear toy red blue green yellow purple white black shiny "
    "wet cube shaped santa hat wearing jungle snow beach cobblestone street pink fabric wooden floor city "
    "mountain house rug forest background top circle square triangle star sitting running sks"
).split()


def _bytes_to_unicode() -> dict:
    """GPT-2 / CLIP byte-to-unicode table (the standard reversible mapping)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, [chr(c) for c in chars]))


def write_clip_tokenizer_files(directory: str, words: Iterable[str] = DEFAULT_WORDS) -> str:
    """Write ``vocab.json`` and ``merges.txt`` for a CLIP BPE tokenizer that knows ``words`` as single tokens.

    Every byte (with and without the end-of-word marker) is in the vocabulary, so any text tokenizes; the given
    words are merged into one token each. Returns ``directory``.
    """
    os.makedirs(directory, exist_ok=True)
    base = list(_bytes_to_unicode().values())
    vocab: List[str] = base + [c + "</w>" for c in base]
    merges: List[str] = []
    seen = set(vocab)
    for word in dict.fromkeys(w.lower() for w in words):
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        current = symbols[0]
        for symbol in symbols[1:]:
            merge = f"{current} {symbol}"
            current = current + symbol
            if current not in seen:
                merges.append(merge)
                vocab.append(current)
                seen.add(current)
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    with open(os.path.join(directory, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({token: i for i, token in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(directory, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    return directory


def tiny_clip_tokenizer(directory: str, words: Iterable[str] = DEFAULT_WORDS, model_max_length: int = 77):
    """A real ``CLIPTokenizer`` over a tiny vocabulary, saved in ``directory``."""
    from transformers import CLIPTokenizer

    write_clip_tokenizer_files(directory, words)
    tokenizer = CLIPTokenizer(
        os.path.join(directory, "vocab.json"), os.path.join(directory, "merges.txt"), model_max_length=model_max_length
    )
    return tokenizer


def tiny_clip_text_config(tokenizer, hidden_size: int = 32, num_layers: int = 5, num_heads: int = 4, **kwargs):
    from transformers import CLIPTextConfig

    config = dict(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_attention_heads=num_heads,
        num_hidden_layers=num_layers,
        vocab_size=len(tokenizer),
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=hidden_size,
    )
    config.update(kwargs)
    return CLIPTextConfig(**config)


def tiny_clip_text_model(
    tokenizer, hidden_size: int = 32, num_layers: int = 5, num_heads: int = 4, seed: int = 0, with_projection=False,
    attn_implementation: Optional[str] = None,
):
    """A random CLIP text encoder (``CLIPTextModel`` or ``CLIPTextModelWithProjection``) for ``tokenizer``."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    config = tiny_clip_text_config(tokenizer, hidden_size, num_layers, num_heads)
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(config).eval()


def tiny_vae(sample_size: int = 32, seed: int = 0):
    """A random two-level ``AutoencoderKL`` (4 latent channels, downsampling by 2)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=2,
        sample_size=sample_size,
    )


def tiny_stable_diffusion_components(
    tokenizer_dir: str,
    hidden_size: int = 32,
    num_text_layers: int = 5,
    sample_size: int = 16,
    seed: int = 0,
    words: Sequence[str] = DEFAULT_WORDS,
) -> dict:
    """Components of a tiny Stable Diffusion 1.x pipeline (random weights, offline)."""
    from diffusers import DDIMScheduler, UNet2DConditionModel

    tokenizer = tiny_clip_tokenizer(tokenizer_dir, words)
    text_encoder = tiny_clip_text_model(tokenizer, hidden_size, num_text_layers, seed=seed)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=hidden_size,
        norm_num_groups=2,
        attention_head_dim=2,
    )
    vae = tiny_vae(sample_size * 2, seed)
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
        steps_offset=1,
    )
    return dict(
        unet=unet,
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )


def tiny_stable_diffusion_pipeline(tokenizer_dir: str, pipeline_class=None, **kwargs):
    """A tiny ``StableDiffusionPipeline`` (or ``pipeline_class`` taking the same components) on CPU, fp32."""
    from diffusers import StableDiffusionPipeline

    pipeline_class = pipeline_class or StableDiffusionPipeline
    components = tiny_stable_diffusion_components(tokenizer_dir, **kwargs)
    pipe = pipeline_class(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_stable_diffusion_xl_pipeline(tokenizer_dir: str, hidden_size: int = 32, num_text_layers: int = 5, seed=0):
    """A tiny ``StableDiffusionXLPipeline`` with two CLIP text encoders (random weights, offline)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    tokenizer = tiny_clip_tokenizer(tokenizer_dir)
    text_encoder = tiny_clip_text_model(tokenizer, hidden_size, num_text_layers, seed=seed)
    text_encoder_2 = tiny_clip_text_model(tokenizer, hidden_size, num_text_layers, seed=seed + 1, with_projection=True)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=hidden_size + 6 * 8,
        cross_attention_dim=2 * hidden_size,
        norm_num_groups=2,
    )
    vae = tiny_vae(32, seed)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler,
        image_encoder=None,
        feature_extractor=None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
