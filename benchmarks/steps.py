"""The training steps compared by the benchmarks, all on the same frozen UNet, VAE and text encoder weights.

* ``ti``: a textual-inversion step written the way diffusers' ``examples/textual_inversion/textual_inversion.py``
  does it: VAE encode of the batch every step, the whole text encoder with the full token-embedding table trainable
  (AdamW over the whole table, then every row but the placeholder's restored from a copy, as the example does), the
  frozen UNet forward and backward to its inputs; the text encoder stays fp32 and runs under autocast when the dtype
  is 16-bit (accelerate's ``prepare``), the UNet and VAE are cast to the dtype.
* ``naive``: the same loop with CatVersion residuals instead of an embedding row: the text encoder frozen, the
  3 layers x (key, value) residual tensors trainable, caption ``"a photo of a <class word>"``.
* ``fast``: one optimizer step of the library's ``CatVersionTrainer`` (``optimizer_step([sample_batch(i)])``):
  latents cached once (the VAE posterior; a latent is drawn from it every step), the text encoder's layers before the
  first residual layer cached once for the fixed captions, frozen models cast to the dtype, residuals fp32.
  Ablations: the same trainer with one or both caches switched off (``cache_latents`` / ``cache_text_encoder``).
* ``floor``: the frozen UNet forward plus its backward to ``encoder_hidden_states`` alone, on fixed inputs: the lower
  bound of any method that trains text-side parameters through the frozen UNet.

Data loading (image decoding, augmentation, tokenization) is outside every step: the same fixed batch is used.
Each step object has ``step()`` (returns the loss, possibly as a tensor) and keeps its own trainable state.
"""

import contextlib
import copy
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from catversion_diffusers import add_catversion_adapter, default_catversion_layers, delete_catversion_adapters

TI_TOKEN = "<sks>"
TEMPLATE = "a photo of a {}"  # the first caption template of textual inversion (and of the CatVersion trainer)
ADAPTER_NAME = "benchmark"
VARIANTS = ("ti", "naive", "fast", "floor")
ABLATIONS = ("fast_no_latent_cache", "fast_no_text_cache", "fast_no_cache")
# Not part of the library (yet): the fast path with the UNet in channels-last layout (a copy of the UNet: +1 UNet
# of memory in the timing process).
EXPERIMENTS = ("fast_channels_last",)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Setting:
    """What every compared step shares: device, dtype, resolution, batch, and CatVersion's residual tokens."""

    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    resolution: int = 256
    batch_size: int = 1
    num_tokens: int = 1
    seed: int = 0
    learning_rate: float = 5e-3
    class_word: str = "dog"  # CatVersion's caption word and TI's initializer token

    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device, dtype=self.dtype)


def training_images(setting: Setting, count: Optional[int] = None) -> List[np.ndarray]:
    """Deterministic smooth random RGB images (uint8, resolution x resolution), at least one per batch row."""
    count = count or setting.batch_size
    generator = torch.Generator().manual_seed(setting.seed)
    coarse = torch.rand(count, 3, 8, 8, generator=generator)
    images = F.interpolate(coarse, size=(setting.resolution, setting.resolution), mode="bilinear", align_corners=False)
    return [(im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for im in images]


class Shared:
    """Frozen modules and data shared by every step: UNet and VAE in the setting's dtype, a noise scheduler."""

    def __init__(self, components: dict, setting: Setting):
        from diffusers import DDPMScheduler

        self.setting = setting
        self.components = components
        self.tokenizer = components["tokenizer"]
        self.unet = components["unet"].requires_grad_(False).eval().to(setting.device, setting.dtype)
        self.vae = components["vae"].requires_grad_(False).eval().to(setting.device, setting.dtype)
        # the fp32 master of the text encoder, never modified: each step makes its own copy
        self.text_encoder = components["text_encoder"].requires_grad_(False).eval()
        self.noise_scheduler = DDPMScheduler.from_config(components["scheduler"].config)
        self.scaling_factor = float(getattr(self.vae.config, "scaling_factor", 0.18215))
        self.images = training_images(setting)
        pixels = np.stack(self.images[: setting.batch_size]).astype(np.float32) / 127.5 - 1.0
        self.pixel_values = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous().to(setting.device)
        self.layers = default_catversion_layers(self.text_encoder)

    def input_ids(self, prompt: str, tokenizer=None) -> torch.Tensor:
        tokenizer = tokenizer or self.tokenizer
        ids = tokenizer(
            [prompt] * self.setting.batch_size, padding="max_length", truncation=True,
            max_length=tokenizer.model_max_length, return_tensors="pt",
        ).input_ids
        return ids.to(self.setting.device)

    def text_encoder_copy(self, dtype: torch.dtype) -> torch.nn.Module:
        return copy.deepcopy(self.text_encoder).to(self.setting.device, dtype)

    def encode_latents(self) -> torch.Tensor:
        """The example's per-step VAE encode (a sample of the posterior, scaled)."""
        pixels = self.pixel_values.to(self.setting.dtype)
        return self.vae.encode(pixels).latent_dist.sample().detach() * self.scaling_factor

    def noisy(self, latents: torch.Tensor):
        noise = torch.randn_like(latents)
        timesteps = torch.randint(
            0, self.noise_scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device
        ).long()
        return self.noise_scheduler.add_noise(latents, noise, timesteps), noise, timesteps

    def unet_loss(self, noisy_latents, timesteps, encoder_hidden_states, target):
        model_pred = self.unet(noisy_latents, timesteps, encoder_hidden_states.to(self.setting.dtype)).sample
        return F.mse_loss(model_pred.float(), target.float(), reduction="mean")

    def example_step(self, text_encoder, input_ids, optimizer) -> torch.Tensor:
        """The body of the example's training loop: VAE encode, noise, the whole text encoder, the frozen UNet's loss,
        backward and the optimizer step."""
        latents = self.encode_latents()
        noisy_latents, noise, timesteps = self.noisy(latents)
        with self.setting.autocast():
            encoder_hidden_states = text_encoder(input_ids)[0]
        loss = self.unet_loss(noisy_latents, timesteps, encoder_hidden_states.to(self.setting.dtype), noise)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return loss


# ------------------------------------------------------------------------------------------------------ TI example
class TextualInversionStep:
    """diffusers' textual-inversion example, one optimisation step (after the data loader)."""

    name = "ti"

    def __init__(self, shared: Shared):
        self.shared = shared
        setting = shared.setting
        self.tokenizer = copy.deepcopy(shared.tokenizer)
        self.tokenizer.add_tokens(TI_TOKEN)
        self.placeholder_id = self.tokenizer.convert_tokens_to_ids(TI_TOKEN)
        init_id = self.tokenizer.encode(setting.class_word, add_special_tokens=False)[0]
        self.text_encoder = shared.text_encoder_copy(torch.float32)
        self.text_encoder.resize_token_embeddings(len(self.tokenizer))
        embeddings = self.text_encoder.get_input_embeddings()
        with torch.no_grad():
            embeddings.weight[self.placeholder_id] = embeddings.weight[init_id].clone()
        # The example freezes everything but the token embedding (the whole table) and trains it with AdamW.
        self.text_encoder.requires_grad_(False)
        embeddings.requires_grad_(True)
        self.text_encoder.train()
        self.optimizer = torch.optim.AdamW(
            embeddings.parameters(), lr=setting.learning_rate, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8
        )
        self.orig_embeds_params = embeddings.weight.data.clone()
        self.input_ids = shared.input_ids(TEMPLATE.format(TI_TOKEN), self.tokenizer)

    def step(self):
        loss = self.shared.example_step(self.text_encoder, self.input_ids, self.optimizer)
        # Let's make sure we don't update any embedding weights besides the newly added token (the example's words)
        index_no_updates = torch.ones((len(self.tokenizer),), dtype=torch.bool)
        index_no_updates[self.placeholder_id : self.placeholder_id + 1] = False
        with torch.no_grad():
            weight = self.text_encoder.get_input_embeddings().weight
            weight[index_no_updates] = self.orig_embeds_params[index_no_updates]
        return loss.detach()


# ------------------------------------------------------------------------------------------------------ naive
class NaiveCatVersionStep:
    """The example's loop with CatVersion residuals: VAE encode and the whole text encoder every step."""

    name = "naive"

    def __init__(self, shared: Shared):
        self.shared = shared
        setting = shared.setting
        self.text_encoder = shared.text_encoder_copy(torch.float32)
        generator = torch.Generator().manual_seed(setting.seed)
        hidden = self.text_encoder.config.hidden_size
        self.residuals = {
            i: tuple(
                torch.nn.Parameter(torch.randn(setting.num_tokens, hidden, generator=generator).to(setting.device))
                for _ in range(2)
            )
            for i in shared.layers
        }
        add_catversion_adapter(self.text_encoder, ADAPTER_NAME, self.residuals)
        self.optimizer = torch.optim.AdamW(
            [p for pair in self.residuals.values() for p in pair], lr=setting.learning_rate, weight_decay=1e-2
        )
        self.input_ids = shared.input_ids(TEMPLATE.format(setting.class_word))

    def step(self):
        return self.shared.example_step(self.text_encoder, self.input_ids, self.optimizer).detach()

    def encoder_hidden_states(self) -> torch.Tensor:
        with torch.no_grad():
            return self.text_encoder(self.input_ids[:1])[0]

    def close(self) -> None:
        delete_catversion_adapters(self.text_encoder)


# ------------------------------------------------------------------------------------------------------ fast path
class LibraryStep:
    """One optimizer step of the library's ``CatVersionTrainer``: ``optimizer_step([sample_batch(step)])``.

    The trainer gets a pipeline of its own over the shared frozen UNet, with its own copies of the text encoder and
    the VAE (it casts the text encoder, adds its adapter, and moves the VAE off the GPU after caching the latents).
    ``cache_latents`` / ``cache_text_encoder`` are the trainer's own switches (both on: the fast path).
    """

    def __init__(self, shared: Shared, name: str = "fast", cache_latents: bool = True, cache_text_encoder: bool = True,
                 channels_last: bool = False):
        import tempfile

        from diffusers import StableDiffusionPipeline

        from catversion_diffusers.training import CatVersionTrainer, CatVersionTrainingConfig

        self.name = name
        self.shared = shared
        setting = shared.setting
        precision = {torch.float32: "no", torch.bfloat16: "bf16", torch.float16: "fp16"}[setting.dtype]
        self._output = tempfile.TemporaryDirectory(prefix="catversion-bench-")
        config = CatVersionTrainingConfig(
            class_word=setting.class_word,
            output_dir=self._output.name,
            resolution=setting.resolution,
            train_batch_size=setting.batch_size,
            num_residual_tokens=setting.num_tokens,
            learning_rate=setting.learning_rate,
            mixed_precision=precision,
            max_train_steps=10**9,
            checkpointing_steps=None,
            report_to=None,
            seed=setting.seed,
            cache_latents=cache_latents,
            cache_text_encoder=cache_text_encoder,
            flip_p=0.0,  # one cached view per image (flipping changes nothing in a step's cost, only the setup's)
        )
        unet = shared.unet
        if channels_last:  # a copy of its own (the other variants keep the stock layout)
            unet = copy.deepcopy(shared.unet).to(memory_format=torch.channels_last)
        pipe = StableDiffusionPipeline(
            unet=unet,
            vae=copy.deepcopy(shared.vae),
            text_encoder=shared.text_encoder_copy(torch.float32),
            tokenizer=shared.tokenizer,
            scheduler=shared.components["scheduler"],
            safety_checker=None,
            feature_extractor=None,
            image_encoder=None,
            requires_safety_checker=False,
        )
        self.trainer = CatVersionTrainer(pipe, config)
        self.trainer.setup(shared.images)
        self.optimizer = self.trainer.optimizer
        self.micro_step = 0

    def step(self):
        batch = self.trainer.sample_batch(self.micro_step)
        self.micro_step += 1
        return self.trainer.optimizer_step([batch])

    def encoder_hidden_states(self) -> torch.Tensor:
        """The conditioning of the first caption, from the trainer's (cached) text path."""
        with torch.no_grad():
            return self.trainer.text(torch.zeros(1, dtype=torch.long))[0]

    def close(self) -> None:
        self.trainer._restore_pipeline()
        self._output.cleanup()


# ------------------------------------------------------------------------------------------------------ floor
class UNetFloorStep:
    """Frozen UNet forward + backward to ``encoder_hidden_states`` only, on fixed latents, timesteps and target."""

    name = "floor"

    def __init__(self, shared: Shared):
        self.shared = shared
        setting = shared.setting
        with torch.no_grad():
            latents = shared.vae.encode(shared.pixel_values.to(setting.dtype)).latent_dist.mean * shared.scaling_factor
        generator = torch.Generator().manual_seed(setting.seed + 1)
        self.noise = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
        self.timesteps = torch.full((latents.shape[0],), 500, dtype=torch.long, device=latents.device)
        self.noisy_latents = shared.noise_scheduler.add_noise(latents, self.noise, self.timesteps)
        hidden = shared.text_encoder.config.hidden_size
        self.encoder_hidden_states = torch.randn(
            setting.batch_size, shared.tokenizer.model_max_length, hidden, generator=generator
        ).to(setting.device, setting.dtype).requires_grad_(True)
        self.optimizer = None

    def step(self):
        loss = self.shared.unet_loss(self.noisy_latents, self.timesteps, self.encoder_hidden_states, self.noise)
        loss.backward()
        self.encoder_hidden_states.grad = None
        return loss.detach()


def make_step(name: str, shared: Shared):
    if name == "ti":
        return TextualInversionStep(shared)
    if name == "naive":
        return NaiveCatVersionStep(shared)
    if name == "fast":
        return LibraryStep(shared, "fast")
    if name == "fast_no_latent_cache":
        return LibraryStep(shared, name, cache_latents=False)
    if name == "fast_no_text_cache":
        return LibraryStep(shared, name, cache_text_encoder=False)
    if name == "fast_no_cache":
        return LibraryStep(shared, name, cache_latents=False, cache_text_encoder=False)
    if name == "fast_channels_last":
        return LibraryStep(shared, name, channels_last=True)
    if name == "floor":
        return UNetFloorStep(shared)
    raise ValueError(f"unknown training variant {name!r}; known: {VARIANTS + ABLATIONS + EXPERIMENTS}")


def trainable_values(step) -> int:
    """How many values the step's optimizer holds (TI: the whole token-embedding table, as the example)."""
    optimizer: Optional[torch.optim.Optimizer] = getattr(step, "optimizer", None)
    if optimizer is None:
        return 0
    return sum(p.numel() for group in optimizer.param_groups for p in group["params"])


def close(step) -> None:
    closer = getattr(step, "close", None)
    if closer is not None:
        closer()
