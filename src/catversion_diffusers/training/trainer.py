"""``CatVersionTrainer``: learn a concept's residual Keys/Values from a few images.

    from catversion_diffusers.training import CatVersionTrainer, CatVersionTrainingConfig

    config = CatVersionTrainingConfig(class_word="dog", output_dir="my-dog", max_train_steps=1000)
    result = CatVersionTrainer("stable-diffusion-v1-5/stable-diffusion-v1-5", config).train("./dog_photos")
    pipe.load_catversion(result.path)          # or pipe.load_catversion(result.state)

What makes it fast (each measured, see docs/training.md):

- Only the residuals are trainable. Every weight of the UNet, VAE and text encoders has ``requires_grad=False``, so
  the UNet backward computes input gradients only, and nothing is wrapped in DDP.
- The VAE runs once: the posterior (mean, std) of every view (each image, flipped and not) is cached and a latent is
  drawn from it each step (the same distribution as encoding each step); the VAE then leaves the accelerator.
- The text encoder layers before the first residual layer run once for the fixed set of captions
  (`TrainingTextEncoder`).
- Mixed precision casts the frozen models only; residuals and optimizer state stay fp32.

Runs on one or several processes (``accelerate launch``): gradients of the residuals are averaged across processes
explicitly, every process draws its own samples, and all start from the same residuals. Every random draw of a step
comes from a generator seeded by (seed, process, step), so a resumed run continues exactly as an uninterrupted one.
"""

import hashlib
import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CatVersionError
from ..format import DEFAULT_WEIGHT_NAME, CatVersionState, load_state_file, save_state
from ..text_encoder import (
    add_catversion_adapter,
    default_catversion_layers,
    delete_catversion_adapters,
    get_catversion_adapters,
    get_encoder_layers,
    set_catversion_scale,
    text_encoder_hidden_size,
)
from ..utils import get_logger, library_version
from .config import CatVersionTrainingConfig
from .data import TrainingImages, load_training_images, make_image_grid, prepare_view, training_prompts
from .text_cache import EncoderSpec, TrainingTextEncoder, tokenize

logger = get_logger(__name__)

SETTINGS_NAME = "catversion_training.json"
CHECKPOINT_PREFIX = "checkpoint-"
SUMMARY_NAME = "training_summary.json"
TRAINING_ADAPTER = "catversion-training"


class CatVersionTrainingError(CatVersionError, ValueError):
    """A training run cannot start or resume: conflicting output folder, checkpoint of other settings..."""


@dataclass
class Batch:
    """The random draws of one micro-batch (all on CPU; indices into the cached views and captions)."""

    views: torch.Tensor
    captions: torch.Tensor
    timesteps: torch.Tensor
    noise: torch.Tensor
    latent_noise: torch.Tensor


@dataclass
class CatVersionTrainingResult:
    """What ``CatVersionTrainer.train`` returns."""

    state: CatVersionState
    path: Optional[str]
    global_step: int
    losses: List[float] = field(default_factory=list)
    seconds_per_step: Optional[float] = None
    peak_memory_bytes: Optional[int] = None
    validation_images: List[str] = field(default_factory=list)
    hub_commit_url: Optional[str] = None


# ------------------------------------------------------------------------------------------------------ helpers
def _seed_for(*parts: Any) -> int:
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _generator(*parts: Any) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(_seed_for(*parts))


def create_accelerator(config: CatVersionTrainingConfig, **kwargs: Any):
    """An ``accelerate.Accelerator`` for ``config`` (mixed precision, trackers, logging folder)."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    report_to = config.report_to
    if report_to in (None, "", "none"):
        report_to = None
    elif report_to in ("tensorboard", "all"):
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            try:
                import tensorboardX  # noqa: F401
            except ImportError:
                logger.warning("TensorBoard is not installed (pip install tensorboard): logging to it is off.")
                report_to = None if report_to == "tensorboard" else report_to
    project = ProjectConfiguration(
        project_dir=config.output_dir, logging_dir=os.path.join(config.output_dir, config.logging_dir)
    )
    world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    # None: what `accelerate launch` / `accelerate config` set (else "no"), not a previous run's leftover state.
    mixed_precision = config.mixed_precision or os.environ.get("ACCELERATE_MIXED_PRECISION") or "no"
    _allow_new_precision(mixed_precision, world_size)
    if world_size > 1 and not torch.cuda.is_available():
        # `accelerate launch --multi_gpu` / torchrun on a machine without GPUs: data-parallel on CPU (gloo).
        kwargs.setdefault("cpu", True)
    accelerator = Accelerator(mixed_precision=mixed_precision, log_with=report_to, project_config=project, **kwargs)
    _check_world(accelerator)
    return accelerator


def _allow_new_precision(mixed_precision: Optional[str], world_size: int) -> None:
    """accelerate keeps one global state per process: in a notebook, a second run with another mixed precision
    would be refused. On a single process nothing else depends on it, so it is reset."""
    from accelerate.state import AcceleratorState

    shared = AcceleratorState._shared_state
    current = shared.get("_mixed_precision") if shared else None
    if world_size == 1 and mixed_precision is not None and current is not None and current != mixed_precision:
        AcceleratorState._reset_state()


def _check_world(accelerator) -> None:
    world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world_size > 1 and accelerator.num_processes != world_size:
        raise CatVersionTrainingError(
            f"{world_size} processes were launched but the accelerator sees {accelerator.num_processes}: they would "
            "train independently and overwrite each other's files. On a machine without GPUs, create the Accelerator "
            "with cpu=True (or set ACCELERATE_USE_CPU=1)."
        )


def load_training_pipeline(pretrained_model_name_or_path: str, revision: Optional[str] = None, variant=None):
    """A Stable Diffusion (1.x/2.x) or SDXL pipeline for training, in fp32 on CPU, without its safety checker."""
    from diffusers import DiffusionPipeline

    config = DiffusionPipeline.load_config(pretrained_model_name_or_path, revision=revision)
    extra = {}
    if "safety_checker" in config:
        extra.update(safety_checker=None, requires_safety_checker=False)
    if "feature_extractor" in config:
        extra["feature_extractor"] = None
    if "image_encoder" in config:
        extra["image_encoder"] = None
    pipe = DiffusionPipeline.from_pretrained(pretrained_model_name_or_path, revision=revision, variant=variant, **extra)
    return pipe


def find_checkpoint(output_dir: str, name: str) -> Optional[str]:
    """The checkpoint folder named by ``--resume_from_checkpoint``: ``latest``, a folder name or a path."""
    if name == "latest":
        steps = list_checkpoints(output_dir)
        return os.path.join(output_dir, f"{CHECKPOINT_PREFIX}{steps[-1]}") if steps else None
    for candidate in (name, os.path.join(output_dir, name)):
        if os.path.isdir(candidate):
            return candidate
    return None


def list_checkpoints(output_dir: str) -> List[int]:
    if not os.path.isdir(output_dir):
        return []
    steps = []
    for entry in os.listdir(output_dir):
        match = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", entry)
        if match and os.path.isdir(os.path.join(output_dir, entry)):
            steps.append(int(match.group(1)))
    return sorted(steps)


def _peak_memory(device: torch.device) -> Tuple[Optional[int], str]:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "GPU memory allocated by torch"
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "process RSS"
    except (ImportError, OSError):
        return None, "unknown"


# ------------------------------------------------------------------------------------------------------ checkpoint
class _CheckpointState:
    """The trainer's state as one object registered with ``accelerator.save_state`` / ``load_state``."""

    def __init__(self, trainer: "CatVersionTrainer"):
        self.trainer = trainer

    def state_dict(self) -> Dict[str, Any]:
        t = self.trainer
        return {
            "residuals": {name: p.detach().cpu().clone() for name, p in t.named_residuals().items()},
            "optimizer": t.optimizer.state_dict(),
            "lr_scheduler": t.lr_scheduler.state_dict(),
            "global_step": t.global_step,
            "seed": t.seed,
            "settings": t.catversion_settings(),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        t = self.trainer
        t.check_settings(state["settings"], source="the checkpoint")
        params = t.named_residuals()
        missing = set(params) ^ set(state["residuals"])
        if missing:
            raise CatVersionTrainingError(f"The checkpoint's residuals do not match this run ({sorted(missing)}).")
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(state["residuals"][name].to(p.device, p.dtype))
        t.optimizer.load_state_dict(state["optimizer"])
        t.lr_scheduler.load_state_dict(state["lr_scheduler"])
        t.global_step = int(state["global_step"])
        t.seed = int(state["seed"])


# ------------------------------------------------------------------------------------------------------ trainer
class CatVersionTrainer:
    """Train CatVersion residuals for one concept on a Stable Diffusion (1.x/2.x) or SDXL pipeline.

    Args:
        pipeline (`DiffusionPipeline` or `str`): the pipeline (used in place: its frozen modules are moved to the
            accelerator and cast to the mixed-precision dtype; validation runs through it), or a local folder / Hub
            id to load one from (``config.revision``, ``config.variant``).
        config (`CatVersionTrainingConfig`, *optional*): the settings; keyword arguments override its fields (or
            build it: ``CatVersionTrainer(pipe, class_word="dog", max_train_steps=300)``).
        accelerator (`accelerate.Accelerator`, *optional*): defaults to one made from the config.
    """

    def __init__(self, pipeline, config: Optional[CatVersionTrainingConfig] = None, accelerator=None, **overrides):
        if config is None:
            config = CatVersionTrainingConfig(**overrides)
        elif overrides:
            config = config.replace(**overrides)
        self.config = config
        self._own_accelerator = accelerator is None
        self.accelerator = accelerator or create_accelerator(config)
        _check_world(self.accelerator)
        if isinstance(pipeline, (str, os.PathLike)):
            if config.pretrained_model_name_or_path is None:
                config.pretrained_model_name_or_path = os.fspath(pipeline)
            pipeline = load_training_pipeline(os.fspath(pipeline), config.revision, config.variant)
        self.pipe = pipeline
        self.base_model = str(
            config.pretrained_model_name_or_path
            or getattr(getattr(pipeline, "config", None), "_name_or_path", None)
            or getattr(pipeline, "name_or_path", None)
            or ""
        )
        self.global_step = 0
        self.seed: Optional[int] = None
        self.residuals: Dict[str, Dict[int, Tuple[nn.Parameter, nn.Parameter]]] = {}
        self.losses: List[float] = []
        self.images: Optional[TrainingImages] = None
        self._setup_done = False
        self._paused_adapters: Dict[str, Dict[str, float]] = {}
        self._registered = False
        self._epoch_order: Optional[Tuple[int, torch.Tensor]] = None

    # -------------------------------------------------------------------------------------------- properties
    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def is_main_process(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def num_processes(self) -> int:
        return self.accelerator.num_processes

    @property
    def weight_dtype(self) -> torch.dtype:
        precision = self.accelerator.mixed_precision
        return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)

    @property
    def text_encoders(self) -> Dict[str, nn.Module]:
        return {n: getattr(self.pipe, n) for n in ("text_encoder", "text_encoder_2") if getattr(self.pipe, n, None) is not None}

    @property
    def is_sdxl(self) -> bool:
        return getattr(self.pipe, "text_encoder_2", None) is not None

    def parameters(self) -> List[nn.Parameter]:
        return list(self.named_residuals().values())

    def named_residuals(self) -> Dict[str, nn.Parameter]:
        out = {}
        for encoder, layers in self.residuals.items():
            for index, (k, v) in sorted(layers.items()):
                out[f"{encoder}.layers.{index}.residual_key"] = k
                out[f"{encoder}.layers.{index}.residual_value"] = v
        return out

    # -------------------------------------------------------------------------------------------- settings
    def resolved_layers(self) -> Dict[str, List[int]]:
        """Residual layers per text encoder, from the config or the paper's default (last three feeding the output)."""
        wanted = self.config.residual_layers
        out = {}
        for name, te in self.text_encoders.items():
            total = len(get_encoder_layers(te))
            if wanted is None:
                out[name] = default_catversion_layers(te, -2 if self.is_sdxl else -1)
                continue
            group = wanted.get(name) if isinstance(wanted, dict) else wanted
            if group is None:
                continue
            resolved = sorted(i + total if i < 0 else i for i in group)
            bad = [i for i in resolved if not 0 <= i < total]
            if bad:
                raise CatVersionTrainingError(
                    f"`residual_layers` {group} do not exist in {name} ({total} layers: 0..{total - 1}, or -1..-{total})."
                )
            out[name] = resolved
        if not out:
            raise CatVersionTrainingError(f"`residual_layers` {wanted!r} name no text encoder of this pipeline.")
        return out

    def catversion_settings(self) -> Dict[str, Any]:
        """What a checkpoint must agree with to be resumed (the residuals' meaning and shapes)."""
        c = self.config
        return {
            "class_word": c.class_word,
            "num_residual_tokens": c.num_residual_tokens,
            "residual_layers": self.resolved_layers(),
            "logit_bias": float(c.logit_bias),
            "hidden_sizes": {n: text_encoder_hidden_size(te) for n, te in self.text_encoders.items()},
            "base_model": self.base_model,
        }

    def training_hyperparameters(self) -> Dict[str, Any]:
        c = self.config
        keys = (
            "learning_rate", "scale_lr", "train_batch_size", "gradient_accumulation_steps", "max_train_steps",
            "lr_scheduler", "lr_warmup_steps", "resolution", "center_crop", "flip_p", "learnable_property",
            "prompt_templates", "residual_init", "adam_weight_decay", "latent_sampling",
        )
        out = {k: getattr(c, k) for k in keys}
        out["num_processes"] = self.num_processes
        out["data_fingerprint"] = self.images.fingerprint() if self.images is not None else None
        return out

    def check_settings(self, saved: Dict[str, Any], source: str) -> None:
        current = json.loads(json.dumps(self.catversion_settings()))
        saved = json.loads(json.dumps(saved))
        differences = [
            f"{key}: {saved.get(key)!r} there, {current.get(key)!r} now"
            for key in current
            if key != "base_model" and saved.get(key) != current.get(key)
        ]
        if differences:
            raise CatVersionTrainingError(
                f"Cannot resume from {source}: it was trained with other CatVersion settings:\n- "
                + "\n- ".join(differences)
                + "\nResume with the same settings, or start a new run in another --output_dir (or without "
                "--resume_from_checkpoint)."
            )
        if saved.get("base_model") != current.get("base_model"):
            logger.warning(
                f"{source} was trained from {saved.get('base_model')!r}, this run loads {current.get('base_model')!r}."
            )

    # -------------------------------------------------------------------------------------------- setup
    def setup(self, images=None) -> None:
        """Everything before the first step: images and latents, models, residuals, caches, optimizer, resume."""
        if self._setup_done:
            return
        c = self.config
        self._check_pipeline()
        self._pause_other_adapters()
        started = time.perf_counter()
        source = images if images is not None else c.train_data_dir
        if source is None:
            raise CatVersionTrainingError("No training images: pass `train_data_dir` or the images to `train()`.")
        self.images = load_training_images(source, c.resolution, c.max_image_pixels, c.dataloader_num_workers)
        self._check_output_dir()
        self._set_seed()
        self._prepare_models()
        self._cache_latents()
        self.prompts = training_prompts(c.class_word, c.learnable_property, c.prompt_templates)
        self._create_residuals()
        self._build_text_encoder()
        self._create_optimizer()
        self._resume()
        self._setup_done = True
        logger.info(
            f"CatVersion setup done in {time.perf_counter() - started:.1f}s: {len(self.images)} image(s), "
            f"{self.latent_mean.shape[0]} cached view(s), {len(self.prompts)} caption(s), layers "
            f"{self.resolved_layers()}, {sum(p.numel() for p in self.parameters())} trainable values."
        )

    def _check_pipeline(self) -> None:
        pipe = self.pipe
        missing = [n for n in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if getattr(pipe, n, None) is None]
        if missing:
            raise CatVersionTrainingError(
                f"{type(pipe).__name__} lacks {missing}: CatVersion trains on Stable Diffusion 1.x/2.x or SDXL "
                "text-to-image pipelines."
            )
        latent_channels = pipe.vae.config.latent_channels
        if pipe.unet.config.in_channels != latent_channels:
            raise CatVersionTrainingError(
                f"The UNet takes {pipe.unet.config.in_channels} input channels but the VAE makes {latent_channels}: "
                "this is an inpainting or other variant. Train on the text-to-image base model."
            )
        scale = getattr(pipe, "vae_scale_factor", 8)
        if self.config.resolution % scale:
            raise CatVersionTrainingError(f"`resolution` must be a multiple of {scale} for this VAE.")

    def _pause_other_adapters(self) -> None:
        """Concepts already loaded in the pipeline would take part in training: set their scale to 0 meanwhile."""
        for name, te in self.text_encoders.items():
            infos = get_catversion_adapters(te)
            if TRAINING_ADAPTER in infos:
                delete_catversion_adapters(te, TRAINING_ADAPTER)  # left over by an interrupted run in this session
                infos.pop(TRAINING_ADAPTER)
            if infos:
                self._paused_adapters[name] = {n: i.scale for n, i in infos.items()}
                set_catversion_scale(te, 0.0)
        if self._paused_adapters:
            logger.warning(
                f"Concepts {sorted({n for d in self._paused_adapters.values() for n in d})} are loaded in the pipeline: "
                "they are switched off during training and restored afterwards."
            )

    def _restore_pipeline(self) -> None:
        for te in self.text_encoders.values():
            if TRAINING_ADAPTER in get_catversion_adapters(te):
                delete_catversion_adapters(te, TRAINING_ADAPTER)
        for name, scales in self._paused_adapters.items():
            set_catversion_scale(self.text_encoders[name], scales)
        self._paused_adapters = {}
        remove = getattr(self.pipe, "_remove_catversion_prompt_hook", None)
        if remove is not None and not self.pipe.get_catversion_adapters():
            remove()

    def _check_output_dir(self) -> None:
        """Refuse to overwrite a different concept's result (or its checkpoints) unless ``overwrite_output_dir``."""
        c = self.config
        if c.resume_from_checkpoint and find_checkpoint(c.output_dir, c.resume_from_checkpoint) is not None:
            return  # resuming: the checkpoint's settings are checked against this run instead
        path = c.weight_path
        reasons = []
        if os.path.isfile(path):
            try:
                existing = load_state_file(path).metadata
            except Exception as error:  # unreadable: still someone's file
                existing = {"class_word": f"<unreadable: {error}>"}
            mine = self._file_metadata(include_training=False)
            for key in ("class_word", "num_tokens", "data_fingerprint", "residual_layers"):
                if key in existing and str(existing.get(key)) != str(mine.get(key)):
                    reasons.append(f"{key}: {existing.get(key)!r} in the folder, {mine.get(key)!r} now")
        if c.resume_from_checkpoint is None and list_checkpoints(c.output_dir):
            settings_file = os.path.join(c.output_dir, f"{CHECKPOINT_PREFIX}{list_checkpoints(c.output_dir)[-1]}", SETTINGS_NAME)
            try:
                with open(settings_file, encoding="utf-8") as f:
                    saved = json.load(f).get("settings", {})
            except (OSError, ValueError):
                saved = {}
            if saved.get("class_word") not in (None, c.class_word):
                reasons.append(f"checkpoints of class word {saved.get('class_word')!r}")
        if not reasons:
            if os.path.isfile(path):
                logger.warning(f"{path} holds an earlier result for this concept: it will be replaced at the end.")
            return
        if not c.overwrite_output_dir:
            raise CatVersionTrainingError(
                f"The output folder {c.output_dir!r} holds a different concept ("
                + "; ".join(reasons)
                + "). Choose another --output_dir, or pass --overwrite_output_dir to replace it."
            )
        logger.warning(f"Overwriting the other concept in {c.output_dir!r} (--overwrite_output_dir): {'; '.join(reasons)}")
        self.accelerator.wait_for_everyone()
        if self.is_main_process:
            for step in list_checkpoints(c.output_dir):
                shutil.rmtree(os.path.join(c.output_dir, f"{CHECKPOINT_PREFIX}{step}"), ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def _set_seed(self) -> None:
        seed = self.config.seed
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, (1,)).item()) if self.is_main_process else 0
            if self.num_processes > 1:
                from accelerate.utils import broadcast_object_list

                seed = broadcast_object_list([seed])[0]
            logger.info(f"No --seed given: using seed {seed}.")
        self.seed = int(seed)

    def _prepare_models(self) -> None:
        c, pipe = self.config, self.pipe
        device, dtype = self.device, self.weight_dtype
        if c.allow_tf32 and torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        modules = {"unet": pipe.unet, "vae": pipe.vae, **self.text_encoders}
        for module in modules.values():
            module.requires_grad_(False)
            module.eval()
        for module in modules.values():
            module.to(device)
            if module.dtype != dtype:
                module.to(dtype=dtype)
        if c.enable_xformers_memory_efficient_attention:
            from diffusers.utils.import_utils import is_xformers_available

            if not is_xformers_available():
                raise CatVersionTrainingError("--enable_xformers_memory_efficient_attention needs xformers installed.")
            pipe.unet.enable_xformers_memory_efficient_attention()
        if c.gradient_checkpointing:
            pipe.unet.enable_gradient_checkpointing()
            pipe.unet.train()  # diffusers checkpoints only in training mode; dropout is 0 in SD UNets
        from diffusers import DDPMScheduler

        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.unet = pipe.unet
        self.vae = pipe.vae

    # -------------------------------------------------------------------------------------------- latents
    def _cache_latents(self) -> None:
        """Encode every view (image x flip) once with the VAE, in fp32; keep the posterior's mean and std."""
        c, vae = self.config, self.vae
        flips = (False, True) if c.flip_p > 0 else (False,)
        if c.flip_p >= 1.0:
            flips = (True,)
        self.view_flips = flips
        pixels, time_ids = [], []
        for image in self.images.images:
            for flip in flips:
                array, (top, left) = prepare_view(image, c.resolution, c.center_crop, flip)
                pixels.append(torch.from_numpy(array))
                time_ids.append([*image.original_size, top, left, c.resolution, c.resolution])
        pixels = torch.stack(pixels)
        self.time_ids = torch.tensor(time_ids, dtype=torch.float32)
        if not c.cache_latents:
            self.pixels = pixels.to(self.device)
            self.latent_mean = self.latent_std = torch.empty(len(pixels), 0)
            return
        dtype = vae.dtype
        if dtype != torch.float32:
            vae.to(dtype=torch.float32)  # once: fp32 avoids the fp16 overflow of some VAEs (SDXL)
        means, stds = [], []
        with torch.no_grad():
            for chunk in pixels.split(1):  # one view at a time: the VAE's activations never set the memory peak
                dist = vae.encode(chunk.to(self.device, torch.float32)).latent_dist
                means.append(dist.mean.float())
                stds.append(dist.std.float())
        if dtype != torch.float32:
            vae.to(dtype=dtype)
        self.latent_mean, self.latent_std = torch.cat(means), torch.cat(stds)
        if self.device.type == "cuda":
            vae.to("cpu")  # not needed until validation
            torch.cuda.empty_cache()

    def _latents(self, batch: Batch) -> torch.Tensor:
        vae_config = self.vae.config
        views = batch.views.to(self.device)
        if self.config.cache_latents:
            mean = self.latent_mean.index_select(0, views)
            if self.config.latent_sampling == "mean":
                latents = mean
            else:
                latents = mean + self.latent_std.index_select(0, views) * batch.latent_noise.to(self.device)
        else:  # the uncached reference: encode every step (only to measure the cache's win)
            with torch.no_grad():
                pixels = self.pixels.index_select(0, views).to(self.vae.dtype)
                dist = self.vae.encode(pixels).latent_dist
                latents = dist.mean.float() if self.config.latent_sampling == "mean" else (
                    dist.mean.float() + dist.std.float() * batch.latent_noise.to(self.device)
                )
        shift = getattr(vae_config, "shift_factor", None) or 0.0
        return (latents - shift) * vae_config.scaling_factor

    # -------------------------------------------------------------------------------------------- residuals
    def _class_token_kv(self, te: nn.Module, tokenizer, layers: List[int]) -> Dict[int, Tuple[torch.Tensor, torch.Tensor]]:
        """The class word's own Key and Value in each layer (mean over its tokens), from the first caption."""
        c = self.config
        prompt = self.prompts[0]
        ids = tokenize(tokenizer, [prompt])
        word_ids = tokenizer(c.class_word, add_special_tokens=False).input_ids
        row = ids[0].tolist()
        positions = None
        for start in range(len(row) - len(word_ids) + 1):
            if row[start : start + len(word_ids)] == word_ids:
                positions = list(range(start, start + len(word_ids)))
        if positions is None:  # tokenised differently in context: take the tokens before the end of text
            eos = row.index(tokenizer.eos_token_id) if tokenizer.eos_token_id in row else len(row)
            positions = list(range(max(1, eos - len(word_ids)), eos))
        encoder_layers = get_encoder_layers(te)
        inputs: Dict[int, torch.Tensor] = {}
        handles = []
        for index in layers:
            def hook(module, args, kwargs, index=index):
                inputs[index] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

            handles.append(encoder_layers[index].self_attn.register_forward_pre_hook(hook, with_kwargs=True))
        try:
            with torch.no_grad():
                te(ids.to(self.device))
        finally:
            for h in handles:
                h.remove()
        out = {}
        with torch.no_grad():
            for index in layers:
                attention = encoder_layers[index].self_attn
                x = inputs[index][0, positions]
                out[index] = (attention.k_proj(x).float().mean(0), attention.v_proj(x).float().mean(0))
        return out

    def _create_residuals(self) -> None:
        """Residual parameters (fp32, same on every process), added to the text encoder(s) as one adapter."""
        c = self.config
        layers = self.resolved_layers()
        tokenizers = {"text_encoder": self.pipe.tokenizer, "text_encoder_2": getattr(self.pipe, "tokenizer_2", None)}
        word_ids = self.pipe.tokenizer(c.class_word, add_special_tokens=False).input_ids
        if len(word_ids) > 1:
            logger.warning(
                f"Note: the class word {c.class_word!r} is {len(word_ids)} tokens for this tokenizer. That works: "
                "captions contain all of them"
                + (", and the residuals start from their mean Key/Value" if c.residual_init == "class" else "")
                + f". Use the same words ({c.class_word!r}) in your prompts."
            )
        generator = _generator(self.seed, "residual-init")
        n = c.num_residual_tokens
        for name, te in self.text_encoders.items():
            if name not in layers:
                continue
            hidden = text_encoder_hidden_size(te)
            if c.residual_init == "class":
                class_kv = self._class_token_kv(te, tokenizers[name] or self.pipe.tokenizer, layers[name])
                relative = c.residual_init_std if c.residual_init_std is not None else (0.0 if n == 1 else 0.02)
            params = {}
            for index in layers[name]:
                pair = []
                for kind in range(2):
                    if c.residual_init == "normal":
                        std = 1.0 if c.residual_init_std is None else c.residual_init_std
                        value = torch.randn(n, hidden, generator=generator) * std
                    else:
                        base = class_kv[index][kind].cpu().expand(n, hidden)
                        noise = torch.randn(n, hidden, generator=generator)
                        value = base + noise * relative * base.pow(2).mean().sqrt()
                    pair.append(nn.Parameter(value.to(self.device, torch.float32).contiguous()))
                params[index] = tuple(pair)
            self.residuals[name] = params
            add_catversion_adapter(
                te, TRAINING_ADAPTER, params, logit_bias=c.logit_bias, metadata=self._file_metadata(False)
            )

    def _build_text_encoder(self) -> None:
        c = self.config
        layers = self.resolved_layers()
        specs = []
        tokenizers = [self.pipe.tokenizer, getattr(self.pipe, "tokenizer_2", None)]
        for (name, te), tokenizer in zip(self.text_encoders.items(), tokenizers):
            if self.is_sdxl:
                spec = EncoderSpec(hidden_state_index=-2, pooled=(name == "text_encoder_2"))
            else:
                spec = EncoderSpec()
            ids = tokenize(tokenizer or self.pipe.tokenizer, self.prompts)
            start = min(layers.get(name, [len(get_encoder_layers(te)) - 1]))
            specs.append((te, ids.to(self.device), spec, start))
        self.text = TrainingTextEncoder(specs, use_cache=c.cache_text_encoder)
        if self.text.uses_cache:
            self.text.self_check()

    def _create_optimizer(self) -> None:
        c = self.config
        lr = c.learning_rate
        if c.scale_lr:
            lr = lr * c.gradient_accumulation_steps * c.train_batch_size * self.num_processes
        self.learning_rate = lr
        self.max_train_steps = self._max_train_steps()
        self.optimizer = torch.optim.AdamW(
            self.parameters(),
            lr=lr,
            betas=(c.adam_beta1, c.adam_beta2),
            weight_decay=c.adam_weight_decay,
            eps=c.adam_epsilon,
        )
        from diffusers.optimization import get_scheduler

        self.lr_scheduler = get_scheduler(
            c.lr_scheduler,
            optimizer=self.optimizer,
            num_warmup_steps=c.lr_warmup_steps,
            num_training_steps=self.max_train_steps,
            num_cycles=c.lr_num_cycles,
            power=c.lr_power,
        )
        if not self._registered:
            self.accelerator.register_for_checkpointing(_CheckpointState(self))
            self._registered = True

    def _max_train_steps(self) -> int:
        c = self.config
        if c.max_train_steps is not None:
            return c.max_train_steps
        per_step = c.train_batch_size * c.gradient_accumulation_steps * self.num_processes
        steps_per_epoch = math.ceil(len(self.images) * c.repeats / per_step)
        return steps_per_epoch * (c.num_train_epochs or 1) if c.num_train_epochs else 1000

    # -------------------------------------------------------------------------------------------- steps
    def sample_batch(self, micro_step: int) -> Batch:
        """The random draws of micro-batch ``micro_step`` on this process (a pure function of seed, process, step)."""
        c = self.config
        rank = self.accelerator.process_index
        generator = _generator(self.seed, rank, "step", micro_step)
        num_images = len(self.images)
        images = []
        for j in range(c.train_batch_size):
            # Every image once per epoch, in an order drawn per (seed, process, epoch).
            epoch, position = divmod(micro_step * c.train_batch_size + j, num_images)
            if self._epoch_order is None or self._epoch_order[0] != epoch:
                order = torch.randperm(num_images, generator=_generator(self.seed, rank, "epoch", epoch))
                self._epoch_order = (epoch, order)
            images.append(int(self._epoch_order[1][position]))
        images = torch.tensor(images)
        flip = torch.rand(c.train_batch_size, generator=generator) < c.flip_p
        if len(self.view_flips) == 2:
            views = images * 2 + flip.long()
        else:
            views = images
        shape = (c.train_batch_size, *self._latent_shape())
        return Batch(
            views=views,
            captions=torch.randint(0, len(self.prompts), (c.train_batch_size,), generator=generator),
            timesteps=torch.randint(
                0, self.noise_scheduler.config.num_train_timesteps, (c.train_batch_size,), generator=generator
            ),
            noise=torch.randn(shape, generator=generator),
            latent_noise=torch.randn(shape, generator=generator),
        )

    def _latent_shape(self) -> Tuple[int, int, int]:
        if self.config.cache_latents:
            return tuple(self.latent_mean.shape[1:])
        side = self.config.resolution // getattr(self.pipe, "vae_scale_factor", 8)
        return (self.vae.config.latent_channels, side, side)

    def compute_loss(self, batch: Batch) -> torch.Tensor:
        """The LDM noise-prediction loss (paper eq. 5) of one micro-batch; gradients reach the residuals only."""
        latents = self._latents(batch)
        noise = batch.noise.to(self.device)
        timesteps = batch.timesteps.to(self.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        embeds, pooled = self.text(batch.captions)
        kwargs = {}
        if self.is_sdxl:
            kwargs["added_cond_kwargs"] = {
                "text_embeds": pooled.to(self.weight_dtype),
                "time_ids": self.time_ids.index_select(0, batch.views).to(self.device, self.weight_dtype),
            }
        prediction = self.unet(
            noisy.to(self.weight_dtype), timesteps, embeds.to(self.weight_dtype), return_dict=False, **kwargs
        )[0]
        kind = self.noise_scheduler.config.prediction_type
        if kind == "epsilon":
            target = noise
        elif kind == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            raise CatVersionTrainingError(f"Unsupported prediction type {kind!r} (epsilon or v_prediction).")
        return F.mse_loss(prediction.float(), target.float(), reduction="mean")

    def optimizer_step(self, batches: Sequence[Batch]) -> float:
        """Accumulate the gradients of ``batches``, average them across processes, and take one optimizer step.

        Returns the mean loss (over the micro-batches and processes).
        """
        scaler = getattr(self.accelerator, "scaler", None)
        total = torch.zeros((), device=self.device)
        for batch in batches:
            loss = self.compute_loss(batch) / len(batches)
            (scaler.scale(loss) if scaler is not None else loss).backward()
            total += loss.detach()
        self._sync_gradients()
        if self.config.max_grad_norm is not None:
            if scaler is not None:
                scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.parameters(), self.config.max_grad_norm)
        if scaler is not None:
            scaler.step(self.optimizer)
            scaler.update()
        else:
            self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.num_processes > 1:
            total = self.accelerator.reduce(total, reduction="mean")
        return float(total)

    def _sync_gradients(self) -> None:
        """Average the residuals' gradients across processes (they are not in a DDP module)."""
        if self.num_processes == 1:
            return
        params = self.parameters()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        flat = self.accelerator.reduce(flat, reduction="mean")
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n

    # -------------------------------------------------------------------------------------------- train
    def train(
        self,
        images=None,
        callback: Optional[Callable[["CatVersionTrainer", int, float], None]] = None,
    ) -> CatVersionTrainingResult:
        """Run (or resume) training and save the result.

        Args:
            images (*optional*): a folder, or a list of paths / PIL images / arrays; defaults to
                ``config.train_data_dir``.
            callback (`Callable[[trainer, step, loss], None]`, *optional*): called after every optimizer step.

        Returns:
            `CatVersionTrainingResult`: the final ``CatVersionState`` (also loadable with ``pipe.load_catversion``),
            the file written on the main process, the losses, step time and peak memory.
        """
        c = self.config
        try:
            self.setup(images)
            if self.accelerator.log_with and not self.accelerator.trackers:
                self.accelerator.init_trackers(c.tracker_project_name, config=c.tracker_config())
            return self._train_loop(callback)
        except KeyboardInterrupt:
            steps = list_checkpoints(c.output_dir)
            logger.warning(
                f"Interrupted at step {self.global_step}: no residual file was half-written. "
                + (
                    f"Resume from {CHECKPOINT_PREFIX}{steps[-1]} with --resume_from_checkpoint latest."
                    if steps
                    else "No checkpoint was saved yet (--checkpointing_steps)."
                )
            )
            raise
        finally:
            self._restore_pipeline()
            if self._own_accelerator:
                self.accelerator.end_training()

    def _train_loop(self, callback) -> CatVersionTrainingResult:
        from tqdm.auto import tqdm

        c, acc = self.config, self.accelerator
        total_batch = c.train_batch_size * c.gradient_accumulation_steps * self.num_processes
        logger.info(
            f"***** Running CatVersion training *****\n  Images = {len(self.images)} ({self.latent_mean.shape[0]} "
            f"cached views)\n  Class word = {c.class_word!r}\n  Batch size per process = {c.train_batch_size}\n"
            f"  Total batch (x accumulation x processes) = {total_batch}\n  Optimization steps = {self.max_train_steps}"
            f"\n  Learning rate = {self.learning_rate:g}\n  Residual layers = {self.resolved_layers()}"
        )
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        progress = tqdm(
            total=self.max_train_steps,
            initial=self.global_step,
            desc="CatVersion",
            disable=not acc.is_local_main_process,
        )
        step_times: List[float] = []
        validation_files: List[str] = []
        while self.global_step < self.max_train_steps:
            started = time.perf_counter()
            first = self.global_step * c.gradient_accumulation_steps
            batches = [self.sample_batch(first + a) for a in range(c.gradient_accumulation_steps)]
            loss = self.optimizer_step(batches)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            elapsed = time.perf_counter() - started
            self.global_step += 1
            self.losses.append(loss)
            if not math.isfinite(loss):
                raise CatVersionTrainingError(
                    f"The loss became {loss} at step {self.global_step}: training diverged. Lower --learning_rate "
                    "(or use bf16 instead of fp16)."
                )
            lr = self.lr_scheduler.get_last_lr()[0]
            progress.update(1)
            progress.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            acc.log({"loss": loss, "lr": lr}, step=self.global_step)
            extra = False
            if c.checkpointing_steps and self.global_step % c.checkpointing_steps == 0 and self.global_step < self.max_train_steps:
                self.save_checkpoint()
                extra = True
            if c.validation_prompt and self.global_step % c.validation_steps == 0 and self.global_step < self.max_train_steps:
                validation_files += self.validate()
                extra = True
            if self.global_step > 1 and not extra:
                step_times.append(elapsed)
            if callback is not None:
                callback(self, self.global_step, loss)
        progress.close()
        return self._finish(step_times, validation_files)

    def _finish(self, step_times: List[float], validation_files: List[str]) -> CatVersionTrainingResult:
        c, acc = self.config, self.accelerator
        acc.wait_for_everyone()
        self._check_processes_agree()
        state = self.state()
        path = None
        if self.is_main_process:
            path = save_state(state, c.weight_path)
            logger.info(f"Saved the CatVersion residuals to {path}")
        if c.validation_prompt:
            validation_files += self.validate(final=True)
        peak, what = _peak_memory(self.device)
        seconds = float(np.mean(step_times)) if step_times else None
        summary = {
            "global_step": self.global_step,
            "final_loss": self.losses[-1] if self.losses else None,
            "mean_loss_last_50": float(np.mean(self.losses[-50:])) if self.losses else None,
            "seconds_per_step": seconds,
            "peak_memory_bytes": peak,
            "peak_memory_kind": what,
            "num_processes": self.num_processes,
            "device": str(self.device),
            "mixed_precision": acc.mixed_precision,
            "text_encoder_cache": self.text.uses_cache,
            "latent_cache": c.cache_latents,
        }
        message = (
            f"CatVersion training done: {self.global_step} steps"
            + (f", {seconds:.3f} s/step" if seconds is not None else "")
            + (f", peak {what} {peak / 2**20:.0f} MiB" if peak is not None else "")
        )
        logger.info(message)
        if self.is_main_process:
            print(message, flush=True)
            with open(os.path.join(c.output_dir, SUMMARY_NAME), "w", encoding="utf-8") as f:
                json.dump(summary, f, indent=2)
        acc.log({k: v for k, v in summary.items() if isinstance(v, (int, float)) and v is not None}, step=self.global_step)
        result = CatVersionTrainingResult(
            state=state,
            path=path,
            global_step=self.global_step,
            losses=list(self.losses),
            seconds_per_step=seconds,
            peak_memory_bytes=peak,
            validation_images=validation_files,
        )
        if c.push_to_hub and self.is_main_process:
            result.hub_commit_url = self.push_to_hub(state, validation_files[-1:] if validation_files else [])
        acc.wait_for_everyone()
        return result

    def _check_processes_agree(self) -> None:
        if self.num_processes == 1:
            return
        checksum = torch.stack([p.detach().double().sum() for p in self.parameters()]).sum().reshape(1)
        gathered = self.accelerator.gather(checksum.to(self.device))
        if not torch.allclose(gathered, gathered[0].expand_as(gathered), rtol=0, atol=0):
            raise CatVersionTrainingError(f"The processes' residuals diverged ({gathered.tolist()}): this is a bug.")

    # -------------------------------------------------------------------------------------------- results
    def _file_metadata(self, include_training: bool = True) -> Dict[str, str]:
        c = self.config
        metadata = {
            "class_word": c.class_word,
            "base_model": self.base_model or None,
            "adapter_name": c.adapter_name or os.path.basename(os.path.normpath(c.output_dir)) or "catversion",
            "learnable_property": c.learnable_property,
            "num_tokens": str(c.num_residual_tokens),
            "residual_layers": json.dumps(self.resolved_layers(), sort_keys=True),
            "data_fingerprint": self.images.fingerprint() if self.images is not None else "",
        }
        if include_training:
            metadata.update(
                num_images=str(len(self.images)),
                train_steps=str(self.global_step),
                learning_rate=repr(self.learning_rate),
                resolution=str(c.resolution),
                residual_init=c.residual_init,
                trained_with=f"catversion_diffusers {library_version()}",
            )
        return metadata

    def state(self) -> CatVersionState:
        """The current residuals as a ``CatVersionState`` (fp32 copies on CPU)."""
        residuals = {
            name: {i: (k.detach().float().cpu().clone(), v.detach().float().cpu().clone()) for i, (k, v) in layers.items()}
            for name, layers in self.residuals.items()
        }
        return CatVersionState(residuals=residuals, logit_bias=float(self.config.logit_bias), metadata=self._file_metadata())

    def save_checkpoint(self) -> str:
        """``output_dir/checkpoint-<step>``: accelerate state + our state, written to a temporary folder then renamed.

        The folder also holds ``catversion.safetensors`` (loadable as is) and the settings checked on resume.
        """
        c, acc = self.config, self.accelerator
        final = os.path.join(c.output_dir, f"{CHECKPOINT_PREFIX}{self.global_step}")
        partial = os.path.join(c.output_dir, f".{CHECKPOINT_PREFIX}{self.global_step}.partial")
        if self.is_main_process and os.path.isdir(partial):
            shutil.rmtree(partial)
        acc.wait_for_everyone()
        acc.save_state(partial)
        acc.wait_for_everyone()
        if self.is_main_process:
            save_state(self.state(), os.path.join(partial, DEFAULT_WEIGHT_NAME))
            with open(os.path.join(partial, SETTINGS_NAME), "w", encoding="utf-8") as f:
                json.dump(
                    {"settings": self.catversion_settings(), "hyperparameters": self.training_hyperparameters(),
                     "global_step": self.global_step, "seed": self.seed},
                    f,
                    indent=2,
                )
            if os.path.isdir(final):
                shutil.rmtree(final)
            os.replace(partial, final)
            limit = c.checkpoints_total_limit
            steps = list_checkpoints(c.output_dir)
            if limit is not None and len(steps) > limit:
                for step in steps[: len(steps) - limit]:
                    shutil.rmtree(os.path.join(c.output_dir, f"{CHECKPOINT_PREFIX}{step}"), ignore_errors=True)
                logger.info(f"Removed {len(steps) - limit} old checkpoint(s) (--checkpoints_total_limit {limit}).")
            logger.info(f"Saved checkpoint {final}")
        acc.wait_for_everyone()
        return final

    def _resume(self) -> None:
        c = self.config
        if not c.resume_from_checkpoint:
            return
        path = find_checkpoint(c.output_dir, c.resume_from_checkpoint)
        if path is None:
            if c.resume_from_checkpoint == "latest":
                logger.warning(f"No checkpoint in {c.output_dir!r}: starting a new training run.")
                return
            raise CatVersionTrainingError(
                f"Checkpoint {c.resume_from_checkpoint!r} not found (looked for it as a path and in {c.output_dir!r})."
            )
        settings_file = os.path.join(path, SETTINGS_NAME)
        if not os.path.isfile(settings_file):
            raise CatVersionTrainingError(f"{path!r} is not a CatVersion checkpoint (no {SETTINGS_NAME}).")
        with open(settings_file, encoding="utf-8") as f:
            saved = json.load(f)
        self.check_settings(saved["settings"], source=repr(path))
        changed = {
            k: (v, self.training_hyperparameters().get(k))
            for k, v in saved.get("hyperparameters", {}).items()
            if self.training_hyperparameters().get(k) != v
        }
        if changed:
            logger.warning(
                "Resuming with other training settings than the checkpoint's (the run will not match an "
                f"uninterrupted one): { {k: f'{a!r} -> {b!r}' for k, (a, b) in changed.items()} }"
            )
        if c.seed is not None and saved.get("seed") not in (None, c.seed):
            logger.warning(f"The checkpoint was trained with seed {saved.get('seed')}, not {c.seed}: continuing with its seed.")
        self.accelerator.load_state(path)
        logger.info(f"Resumed from {path} at step {self.global_step}.")

    # -------------------------------------------------------------------------------------------- validation
    def validate(self, final: bool = False) -> List[str]:
        """Generate ``num_validation_images`` for ``validation_prompt`` through the pipeline itself (the residuals are
        live in its text encoder), save a grid PNG in ``output_dir/validation`` and log it. Main process only."""
        c, acc = self.config, self.accelerator
        files: List[str] = []
        if acc.is_main_process:
            pipe = self.pipe
            vae_device = self.vae.device
            self.vae.to(self.device)
            install = getattr(pipe, "_install_catversion_prompt_hook", None)
            if install is not None:
                install()  # the negative prompt sees the stock encoder, as after pipe.load_catversion()
            was_training = self.unet.training
            self.unet.eval()
            pipe.set_progress_bar_config(disable=True)
            generator = torch.Generator(device="cpu").manual_seed(self.seed)
            started = time.perf_counter()
            with torch.no_grad():
                images = pipe(
                    c.validation_prompt,
                    num_images_per_prompt=c.num_validation_images,
                    num_inference_steps=c.validation_num_inference_steps,
                    guidance_scale=c.validation_guidance_scale,
                    height=c.resolution,
                    width=c.resolution,
                    generator=generator,
                ).images
            self.unet.train(was_training)
            self.vae.to(vae_device)
            grid = make_image_grid(images)
            folder = os.path.join(c.output_dir, "validation")
            os.makedirs(folder, exist_ok=True)
            name = "final.png" if final else f"step-{self.global_step:06d}.png"
            path = os.path.join(folder, name)
            grid.save(path)
            files.append(path)
            for tracker in acc.trackers:
                if tracker.name == "tensorboard":
                    arrays = np.stack([np.asarray(im) for im in images])
                    tracker.writer.add_images("validation", arrays, self.global_step, dataformats="NHWC")
                elif tracker.name == "wandb":
                    import wandb

                    tracker.log(
                        {"validation": [wandb.Image(im, caption=f"{i}: {c.validation_prompt}") for i, im in enumerate(images)]},
                        step=self.global_step,
                    )
            logger.info(f"Validation images ({time.perf_counter() - started:.1f}s) saved to {path}")
        acc.wait_for_everyone()
        return files

    def push_to_hub(self, state: CatVersionState, images: List[str]) -> str:
        """Upload the residual file, a model card and the last validation grid (not the pipeline)."""
        from ..hub import push_catversion_state_to_hub

        c = self.config
        repo_id = c.hub_model_id or os.path.basename(os.path.normpath(c.output_dir))
        prompts = [c.validation_prompt] if c.validation_prompt else []
        prompts += [t.format(c.class_word) for t in ("a photo of a {} in the snow", "a {} on the beach", "a red {}")]
        url = push_catversion_state_to_hub(
            state,
            repo_id,
            token=c.hub_token,
            private=c.hub_private,
            commit_message=f"CatVersion residuals for {c.class_word!r}, {self.global_step} steps",
            example_prompts=prompts,
            images=images,
        )
        logger.info(f"Pushed to the Hub: {url}")
        return url


def train_catversion(pipeline, images=None, **config) -> CatVersionTrainingResult:
    """One-call training: ``train_catversion(pipe, "./photos", class_word="dog", max_train_steps=500)``."""
    return CatVersionTrainer(pipeline, CatVersionTrainingConfig(**config)).train(images)
