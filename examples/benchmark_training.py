#!/usr/bin/env python
"""Measure what each speed-up of the CatVersion trainer buys, on a full-size Stable Diffusion 1.5-shaped model.

The model has SD 1.5's exact architecture (UNet 860M, VAE 84M, CLIP ViT-L/14 text encoder 123M) with random
weights, built offline from configs: step time and memory do not depend on the weights' values.

    python examples/benchmark_training.py --mode time --resolution 256 --steps 4      # CPU: ~10 minutes
    python examples/benchmark_training.py --mode memory --resolution 256 --steps 2
    python examples/benchmark_training.py --mode time --resolution 512 --steps 20 --mixed_precision fp16   # GPU

Variants: ``default`` (every speed-up on), ``no_latent_cache`` (VAE encode every step), ``no_text_cache`` (the full
text encoder every step), ``unfrozen_unet`` (UNet weights with requires_grad=True, as when only the optimizer is
restricted), ``gradient_checkpointing`` (less memory, more time).

``--mode time`` times one optimizer step of every variant in turn, on the same trainer and batch, round after round
(min and median; robust to a busy machine). ``--mode memory`` runs each variant in its own process and reports its
peak memory (GPU: torch's max allocated; CPU: the process's max RSS, which includes the ~4 GiB of fp32 weights).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

VARIANTS = ("default", "no_latent_cache", "no_text_cache", "unfrozen_unet", "gradient_checkpointing")


def sd15_shaped_pipeline(tokenizer_dir: str):
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from catversion_diffusers.testing import tiny_clip_tokenizer

    torch.manual_seed(0)
    tokenizer = tiny_clip_tokenizer(tokenizer_dir)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
            max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu", projection_dim=768,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
    ).eval()
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False
    )
    return StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def make_images(folder: str, resolution: int) -> str:
    import numpy as np
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (resolution, resolution, 3), dtype=np.uint8)).save(f"{folder}/{i}.png")
    return folder


def make_trainer(args, work: str, **overrides):
    from catversion_diffusers.training import CatVersionTrainer, CatVersionTrainingConfig

    pipe = sd15_shaped_pipeline(os.path.join(work, "tokenizer"))
    settings = dict(
        class_word="dog", output_dir=os.path.join(work, "out"), resolution=args.resolution, max_train_steps=args.steps,
        checkpointing_steps=None, report_to=None, seed=0, mixed_precision=args.mixed_precision,
    )
    settings.update(overrides)
    return CatVersionTrainer(pipe, CatVersionTrainingConfig(**settings))


class Toggle:
    """Switch one speed-up off on a set-up trainer (and back on)."""

    def __init__(self, trainer, variant: str):
        self.trainer, self.variant = trainer, variant

    def __enter__(self):
        t, v = self.trainer, self.variant
        if v == "no_latent_cache":
            import torch

            from catversion_diffusers.training.data import prepare_view

            if not hasattr(t, "pixels"):
                views = [prepare_view(im, t.config.resolution, t.config.center_crop, flip)[0]
                         for im in t.images.images for flip in t.view_flips]
                t.pixels = torch.stack([torch.from_numpy(a) for a in views]).to(t.device)
            t.vae.to(t.device)
            t.config.cache_latents = False
        elif v == "no_text_cache":
            self.saved, t.text.cached = t.text.cached, None
        elif v == "unfrozen_unet":
            t.unet.requires_grad_(True)
        elif v == "gradient_checkpointing":
            t.unet.enable_gradient_checkpointing()
            t.unet.train()
        return self

    def after_step(self):
        if self.variant == "unfrozen_unet":  # a loop that only restricts the optimizer drops these each step
            self.trainer.unet.zero_grad(set_to_none=True)

    def __exit__(self, *exc):
        t, v = self.trainer, self.variant
        if v == "no_latent_cache":
            t.config.cache_latents = True
        elif v == "no_text_cache":
            t.text.cached = self.saved
        elif v == "unfrozen_unet":
            t.unet.requires_grad_(False)
            t.unet.zero_grad(set_to_none=True)
        elif v == "gradient_checkpointing":
            t.unet.disable_gradient_checkpointing()
            t.unet.eval()


def time_variants(args) -> dict:
    """Interleaved timing in one process (min and median over rounds), robust to a busy machine."""
    import numpy as np
    import torch

    work = tempfile.mkdtemp(prefix="catversion-bench-")
    trainer = make_trainer(args, work)
    trainer.setup(make_images(os.path.join(work, "data"), args.resolution))
    variants = [v for v in VARIANTS if v != "components"]
    times = {v: [] for v in variants}
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    for round_ in range(args.steps + 1):
        batch = trainer.sample_batch(round_)
        for v in variants:
            with Toggle(trainer, v) as toggle:
                sync()
                started = time.perf_counter()
                trainer.optimizer_step([batch])
                toggle.after_step()
                sync()
                if round_:  # round 0 warms up every variant
                    times[v].append(time.perf_counter() - started)
    base = float(np.min(times["default"]))
    return {
        "mode": "time",
        "device": str(trainer.device),
        "resolution": args.resolution,
        "mixed_precision": trainer.accelerator.mixed_precision,
        "rounds": args.steps,
        "threads": torch.get_num_threads(),
        **{f"{v}_min_s": round(float(np.min(t)), 4) for v, t in times.items()},
        **{f"{v}_median_s": round(float(np.median(t)), 4) for v, t in times.items()},
        **{f"{v}_vs_default": round(float(np.min(t)) / base, 3) for v, t in times.items()},
    }


def memory_variant(args) -> dict:
    """Peak memory of a short run of one variant (its own process)."""
    import torch

    work = tempfile.mkdtemp(prefix="catversion-bench-")
    v = args.variant
    trainer = make_trainer(
        args, work, cache_latents=v != "no_latent_cache", cache_text_encoder=v != "no_text_cache",
        gradient_checkpointing=v == "gradient_checkpointing",
    )
    data = make_images(os.path.join(work, "data"), args.resolution)
    callback = None
    if v == "unfrozen_unet":
        trainer.setup(data)
        trainer.unet.requires_grad_(True)

        def callback(t, step, loss):
            t.unet.zero_grad(set_to_none=True)

    result = trainer.train(data, callback=callback)
    return {
        "mode": "memory",
        "variant": v,
        "device": str(trainer.device),
        "resolution": args.resolution,
        "mixed_precision": trainer.accelerator.mixed_precision,
        "steps": result.global_step,
        "seconds_per_step": None if result.seconds_per_step is None else round(result.seconds_per_step, 4),
        "peak_memory_MiB": round(result.peak_memory_bytes / 2**20),
        "threads": torch.get_num_threads(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", default="time", choices=("time", "memory"))
    parser.add_argument("--variant", default="all", choices=("all",) + VARIANTS)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4, help="time: measured rounds; memory: training steps")
    parser.add_argument("--mixed_precision", default="no", choices=("no", "fp16", "bf16"))
    args = parser.parse_args()
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    if args.mode == "time":
        print(json.dumps(time_variants(args)), flush=True)
        return 0
    if args.variant == "all":
        for variant in VARIANTS:
            command = [sys.executable, __file__, "--mode", "memory", "--variant", variant, "--resolution",
                       str(args.resolution), "--steps", str(args.steps), "--mixed_precision", args.mixed_precision]
            subprocess.run(command, check=True)
        return 0
    print(json.dumps(memory_variant(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
