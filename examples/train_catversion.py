#!/usr/bin/env python
"""Train a CatVersion concept from a few images: residual Keys/Values in the CLIP text encoder.

    accelerate launch examples/train_catversion.py \\
        --pretrained_model_name_or_path stable-diffusion-v1-5/stable-diffusion-v1-5 \\
        --train_data_dir ./my_dog --class_word dog --output_dir my-dog \\
        --validation_prompt "a dog in the snow" --mixed_precision fp16

The command line follows diffusers' ``examples/textual_inversion/textual_inversion.py`` (same option names and
meanings), with CatVersion's own options instead of ``--placeholder_token``/``--initializer_token``. The output is
``<output_dir>/catversion.safetensors``, which ``pipe.load_catversion(output_dir)`` reads. Plain ``python`` works too.
The training loop lives in ``catversion_diffusers.training``; this file parses arguments and wires accelerate.
See docs/training.md.
"""

import argparse
import logging
import os
import sys

from catversion_diffusers.training import (
    AUTHORS_EFFECTIVE_LEARNING_RATE,
    PAPER_LEARNING_RATE,
    CatVersionTrainer,
    CatVersionTrainingConfig,
    create_accelerator,
    parse_residual_layers,
)
from catversion_diffusers.training.config import LR_SCHEDULERS


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train a CatVersion concept (residual K/V embeddings).")
    add = parser.add_argument
    # --- model
    add("--pretrained_model_name_or_path", type=str, required=True, help="Base model: Hub id or local folder (SD 1.x/2.x or SDXL).")
    add("--revision", type=str, default=None, help="Revision of the base model on the Hub.")
    add("--variant", type=str, default=None, help="Variant of the model files, e.g. fp16.")
    # --- CatVersion
    add("--class_word", type=str, required=True, help="The concept's base class, e.g. 'dog'. Training captions and your prompts use it.")
    add("--num_residual_tokens", type=int, default=1, help="Residual Key/Value tokens per layer (paper: 1).")
    add("--residual_layers", type=str, default=None,
        help="Layers that get residuals: '9,10,11' (negative counts from the end: write --residual_layers=-3,-2,-1) or per encoder "
             "'text_encoder:9,10,11;text_encoder_2:28,29,30'. Default: the last three layers feeding the conditioning (paper).")
    add("--logit_bias", type=float, default=0.0, help="Added to the residual tokens' attention logits (paper 0; authors' code 1).")
    add("--residual_init", type=str, default="class", choices=["class", "normal"],
        help="'class' (default): start from the class word's own Key/Value in each layer, i.e. from the base class, at "
             "the layer's own scale; 'normal': N(0, 1) as the authors' code.")
    add("--residual_init_std", type=float, default=None,
        help="normal: standard deviation (default 1). class: relative noise (default 0 for one token, 0.02 for more).")
    add("--adapter_name", type=str, default=None, help="Concept name stored in the file (default: the output folder's name).")
    # --- data
    add("--train_data_dir", type=str, required=True, help="Folder with the 3-20 training images.")
    add("--learnable_property", type=str, default="object", choices=["object", "style"], help="Caption templates: object or style.")
    add("--prompt_template", type=str, action="append", default=None,
        help="Custom caption template with '{}' for the class word (repeat the option for several); replaces the built-in ones.")
    add("--repeats", type=int, default=100, help="How many times the images are repeated per epoch (for --num_train_epochs).")
    add("--resolution", type=int, default=512, help="Training resolution (SD 1.x: 512, SD 2.x: 768, SDXL: 1024).")
    add("--center_crop", action="store_true", help="Center-crop images to a square before resizing (else they are resized).")
    add("--flip_p", type=float, default=0.5, help="Probability of a horizontally flipped view.")
    add("--dataloader_num_workers", type=int, default=0, help="Threads decoding the images (they are decoded and encoded once).")
    # --- optimisation
    add("--train_batch_size", type=int, default=1, help="Batch size per process (paper: 1).")
    add("--max_train_steps", type=int, default=None, help="Optimizer steps (default 1000, the paper's; overrides --num_train_epochs).")
    add("--num_train_epochs", type=int, default=None, help="Epochs of --repeats passes over the images, if --max_train_steps is not given.")
    add("--gradient_accumulation_steps", type=int, default=1, help="Micro-batches per optimizer step.")
    add("--gradient_checkpointing", action="store_true", help="Recompute UNet activations in backward: less memory, slower.")
    add("--learning_rate", type=float, default=PAPER_LEARNING_RATE,
        help=f"Learning rate (paper: {PAPER_LEARNING_RATE}; the authors' config effectively used "
             f"{AUTHORS_EFFECTIVE_LEARNING_RATE}: 5e-3 x batch 2 with --scale_lr).")
    add("--scale_lr", action="store_true", default=False,
        help="Multiply the learning rate by the batch size, accumulation steps and number of processes.")
    add("--lr_scheduler", type=str, default="constant", choices=list(LR_SCHEDULERS), help="Learning-rate schedule.")
    add("--lr_warmup_steps", type=int, default=0, help="Warm-up steps of the schedule.")
    add("--lr_num_cycles", type=int, default=1, help="Cycles of cosine_with_restarts.")
    add("--adam_beta1", type=float, default=0.9)
    add("--adam_beta2", type=float, default=0.999)
    add("--adam_weight_decay", type=float, default=1e-2)
    add("--adam_epsilon", type=float, default=1e-08)
    add("--max_grad_norm", type=float, default=None, help="Clip the residuals' gradient norm (off by default).")
    add("--seed", type=int, default=None, help="Seed (a random one is drawn, logged and checkpointed if absent).")
    # --- speed
    add("--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16"],
        help="Cast the frozen models to fp16/bf16 (residuals and optimizer stay fp32). Default: accelerate's config.")
    add("--allow_tf32", action="store_true", help="Allow TF32 matmuls on Ampere+ GPUs.")
    add("--enable_xformers_memory_efficient_attention", action="store_true", help="Use xformers in the UNet (default: PyTorch SDPA).")
    add("--latent_sampling", type=str, default="sample", choices=["sample", "mean"],
        help="Draw each step's latent from the cached VAE posterior (default) or use its mean.")
    add("--no_cache_latents", action="store_true", help="Encode with the VAE every step (slower; to measure the cache).")
    add("--no_cache_text_encoder", action="store_true", help="Run the whole text encoder every step (slower; to measure the cache).")
    # --- validation
    add("--validation_prompt", type=str, default=None, help="Prompt for validation images (use the class word).")
    add("--num_validation_images", type=int, default=4)
    add("--validation_steps", type=int, default=100, help="Validate every N steps (and at the end).")
    add("--validation_num_inference_steps", type=int, default=50, help="Sampling steps of validation (paper: 50).")
    add("--validation_guidance_scale", type=float, default=10.0, help="Guidance scale of validation (paper: 10).")
    # --- output, checkpoints
    add("--output_dir", type=str, default="catversion-model", help="Where catversion.safetensors, checkpoints and logs go.")
    add("--overwrite_output_dir", action="store_true", help="Allow replacing a different concept already in --output_dir.")
    add("--checkpointing_steps", type=int, default=500, help="Save a resumable checkpoint every N steps.")
    add("--checkpoints_total_limit", type=int, default=None, help="Keep at most this many checkpoints.")
    add("--resume_from_checkpoint", type=str, default=None, help="'latest' or a checkpoint folder to resume from.")
    # --- logging
    add("--report_to", type=str, default="tensorboard", help="tensorboard (default), wandb, comet_ml, all, or none.")
    add("--logging_dir", type=str, default="logs", help="TensorBoard folder, inside --output_dir.")
    # --- Hub
    add("--push_to_hub", action="store_true", help="Upload the residual file, a model card and the validation grid.")
    add("--hub_model_id", type=str, default=None, help="Hub repo (default: the output folder's name).")
    add("--hub_token", type=str, default=None, help="Hub token (default: your login).")
    add("--local_rank", type=int, default=-1, help="Set by launchers; ignored.")
    args = parser.parse_args(argv)

    if args.report_to == "wandb" and args.hub_token is not None:
        parser.error(
            "--report_to=wandb with --hub_token would expose the token in the wandb run: log in with `hf auth login` "
            "and drop --hub_token."
        )
    return args


def config_from_args(args: argparse.Namespace) -> CatVersionTrainingConfig:
    max_steps = args.max_train_steps
    if max_steps is None and args.num_train_epochs is None:
        max_steps = 1000
    return CatVersionTrainingConfig(
        class_word=args.class_word,
        output_dir=args.output_dir,
        pretrained_model_name_or_path=args.pretrained_model_name_or_path,
        revision=args.revision,
        variant=args.variant,
        num_residual_tokens=args.num_residual_tokens,
        residual_layers=parse_residual_layers(args.residual_layers),
        logit_bias=args.logit_bias,
        residual_init=args.residual_init,
        residual_init_std=args.residual_init_std,
        adapter_name=args.adapter_name,
        train_data_dir=args.train_data_dir,
        learnable_property=args.learnable_property,
        prompt_templates=args.prompt_template,
        resolution=args.resolution,
        center_crop=args.center_crop,
        flip_p=args.flip_p,
        repeats=args.repeats,
        dataloader_num_workers=args.dataloader_num_workers,
        train_batch_size=args.train_batch_size,
        max_train_steps=max_steps,
        num_train_epochs=args.num_train_epochs,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        gradient_checkpointing=args.gradient_checkpointing,
        learning_rate=args.learning_rate,
        scale_lr=args.scale_lr,
        lr_scheduler=args.lr_scheduler,
        lr_warmup_steps=args.lr_warmup_steps,
        lr_num_cycles=args.lr_num_cycles,
        adam_beta1=args.adam_beta1,
        adam_beta2=args.adam_beta2,
        adam_weight_decay=args.adam_weight_decay,
        adam_epsilon=args.adam_epsilon,
        max_grad_norm=args.max_grad_norm,
        seed=args.seed,
        mixed_precision=args.mixed_precision,
        allow_tf32=args.allow_tf32,
        enable_xformers_memory_efficient_attention=args.enable_xformers_memory_efficient_attention,
        latent_sampling=args.latent_sampling,
        cache_latents=not args.no_cache_latents,
        cache_text_encoder=not args.no_cache_text_encoder,
        validation_prompt=args.validation_prompt,
        num_validation_images=args.num_validation_images,
        validation_steps=args.validation_steps,
        validation_num_inference_steps=args.validation_num_inference_steps,
        validation_guidance_scale=args.validation_guidance_scale,
        checkpointing_steps=args.checkpointing_steps,
        checkpoints_total_limit=args.checkpoints_total_limit,
        resume_from_checkpoint=args.resume_from_checkpoint,
        overwrite_output_dir=args.overwrite_output_dir,
        report_to=None if args.report_to in ("none", "") else args.report_to,
        logging_dir=args.logging_dir,
        push_to_hub=args.push_to_hub,
        hub_model_id=args.hub_model_id,
        hub_token=args.hub_token,
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    accelerator = create_accelerator(config)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%H:%M:%S", level=logging.INFO)
    import diffusers
    import transformers

    if accelerator.is_local_main_process:
        transformers.utils.logging.set_verbosity_warning()
        diffusers.utils.logging.set_verbosity_info()
    else:
        transformers.utils.logging.set_verbosity_error()
        diffusers.utils.logging.set_verbosity_error()
    if accelerator.is_main_process:
        os.makedirs(config.output_dir, exist_ok=True)

    from catversion_diffusers.errors import CatVersionError

    try:
        trainer = CatVersionTrainer(config.pretrained_model_name_or_path, config, accelerator=accelerator)
        result = trainer.train()
    except CatVersionError as error:
        print(f"error: {error}", file=sys.stderr)
        accelerator.end_training()
        return 1
    except KeyboardInterrupt:
        accelerator.end_training()
        return 130
    accelerator.end_training()
    if accelerator.is_main_process:
        print(f"Saved {result.path}. Load it with: pipe.load_catversion({config.output_dir!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
