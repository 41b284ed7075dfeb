"""``CatVersionTrainingConfig``: every setting of a CatVersion training run, with the paper's defaults.

The field names are those of diffusers' ``examples/textual_inversion/textual_inversion.py`` command line wherever the
two share a setting, so that ``examples/train_catversion.py`` maps its arguments one to one.
"""

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

from .data import CatVersionDataError, prompt_templates

ResidualLayers = Union[None, List[int], Dict[str, List[int]]]

#: The paper's learning rate (section 5). The authors' config effectively trained with 1e-2: base 5e-3 x batch 2
#: with learning-rate scaling on, on one GPU.
PAPER_LEARNING_RATE = 5e-3
AUTHORS_EFFECTIVE_LEARNING_RATE = 1e-2

RESIDUAL_INITS = ("class", "normal")
MIXED_PRECISION = ("no", "fp16", "bf16")
LATENT_SAMPLING = ("sample", "mean")
LR_SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
)


@dataclass
class CatVersionTrainingConfig:
    """Settings of a CatVersion training run.

    CatVersion:
        class_word (`str`): the concept's base class ("dog", "teapot"); training captions use it, and so do prompts
            at inference. Several words ("teddy bear") and words the tokenizer splits work too.
        num_residual_tokens (`int`, defaults to 1): residual Key/Value tokens per layer (paper: n = 1).
        residual_layers (`List[int]` or `Dict[str, List[int]]`, *optional*): encoder layers that get residuals (0-based,
            negative counts from the end); a dict gives them per text encoder (``"text_encoder"``,
            ``"text_encoder_2"``). Default: the last three layers whose output feeds the conditioning (paper).
        logit_bias (`float`, defaults to 0.0): added to the residual tokens' attention logits (paper 0.0; the
            authors' code 1.0).
        residual_init (`str`, defaults to `"class"`): ``"class"`` starts every residual token as the class word's
            own Key/Value in that layer (so training starts from the base class and learns the gap, at the layer's
            own scale); ``"normal"`` is the authors' N(0, std^2) with std 1.
        residual_init_std (`float`, *optional*): ``"normal"``: the standard deviation (default 1.0). ``"class"``:
            relative noise added to break the symmetry between several tokens (default 0.0 for one token, 0.02 for
            more).
        adapter_name (`str`, *optional*): name stored in the file (default: the output folder's name).

    Data:
        train_data_dir (`str`, *optional*): folder of the 3-20 training images (or pass images to ``train()``).
        learnable_property (`str`, defaults to `"object"`): ``"object"`` or ``"style"`` caption templates.
        prompt_templates (`List[str]`, *optional*): custom caption templates, each with one ``{}`` for the class word.
        resolution (`int`, defaults to 512): training resolution (1024 for SDXL).
        center_crop (`bool`, defaults to False): cut the central square before resizing (else the image is resized
            to a square, as in textual inversion).
        flip_p (`float`, defaults to 0.5): probability of a horizontally flipped view (authors: 0.5).
        repeats (`int`, defaults to 100): an epoch is ``repeats`` passes over the images (textual inversion's
            meaning); only used to derive ``max_train_steps`` from ``num_train_epochs``.
        max_image_pixels (`int`): larger images are refused unread.
        dataloader_num_workers (`int`, defaults to 0): threads decoding the images (once, at start).

    Optimisation:
        train_batch_size (`int`, defaults to 1), max_train_steps (`int`, defaults to 1000),
        num_train_epochs (`int`, *optional*: when set and ``max_train_steps`` is None, the number of steps is derived
        from it), gradient_accumulation_steps (`int`, defaults to 1), gradient_checkpointing (`bool`),
        learning_rate (`float`, defaults to 5e-3, the paper's; the authors' config effectively used 1e-2),
        scale_lr (`bool`: multiply the learning rate by batch size x accumulation x processes), lr_scheduler
        (`str`, defaults to "constant"), lr_warmup_steps, lr_num_cycles, lr_power, adam_beta1, adam_beta2,
        adam_weight_decay (AdamW, defaults 0.9, 0.999, 1e-2), adam_epsilon, max_grad_norm (*optional* clipping),
        seed (`int`, *optional*; a random one is drawn, logged and checkpointed when None).

    Speed:
        mixed_precision (`str`, *optional*): ``"no"``, ``"fp16"`` or ``"bf16"``; casts the frozen models only
            (residuals and optimizer state stay fp32). None: the accelerator's setting.
        allow_tf32, enable_xformers_memory_efficient_attention (`bool`).
        latent_sampling (`str`, defaults to `"sample"`): each step draws the latent from the cached VAE posterior
            (mean + std * noise, the same distribution as encoding every step); ``"mean"`` uses its mean.
        cache_latents, cache_text_encoder (`bool`, defaults to True): the measured speed-ups; off only to compare.

    Validation, checkpoints, logging, Hub: see the fields below; names as in textual inversion.
    """

    class_word: str
    output_dir: str = "catversion-model"
    pretrained_model_name_or_path: Optional[str] = None
    revision: Optional[str] = None
    variant: Optional[str] = None

    # CatVersion
    num_residual_tokens: int = 1
    residual_layers: ResidualLayers = None
    logit_bias: float = 0.0
    residual_init: str = "class"
    residual_init_std: Optional[float] = None
    adapter_name: Optional[str] = None

    # data
    train_data_dir: Optional[str] = None
    learnable_property: str = "object"
    prompt_templates: Optional[List[str]] = None
    resolution: int = 512
    center_crop: bool = False
    flip_p: float = 0.5
    repeats: int = 100
    max_image_pixels: int = 2 * 89_478_485
    dataloader_num_workers: int = 0

    # optimisation
    train_batch_size: int = 1
    max_train_steps: Optional[int] = 1000
    num_train_epochs: Optional[int] = None
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    learning_rate: float = PAPER_LEARNING_RATE
    scale_lr: bool = False
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    lr_num_cycles: int = 1
    lr_power: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: Optional[float] = None
    seed: Optional[int] = None

    # speed
    mixed_precision: Optional[str] = None
    allow_tf32: bool = False
    enable_xformers_memory_efficient_attention: bool = False
    latent_sampling: str = "sample"
    cache_latents: bool = True
    cache_text_encoder: bool = True

    # validation
    validation_prompt: Optional[str] = None
    num_validation_images: int = 4
    validation_steps: int = 100
    validation_num_inference_steps: int = 50
    validation_guidance_scale: float = 10.0

    # checkpoints and output
    checkpointing_steps: Optional[int] = 500
    checkpoints_total_limit: Optional[int] = None
    resume_from_checkpoint: Optional[str] = None
    overwrite_output_dir: bool = False

    # logging
    report_to: Optional[str] = "tensorboard"
    logging_dir: str = "logs"
    tracker_project_name: str = "catversion"

    # Hub
    push_to_hub: bool = False
    hub_model_id: Optional[str] = None
    hub_token: Optional[str] = None
    hub_private: Optional[bool] = None

    def __post_init__(self) -> None:
        self.check()

    # ------------------------------------------------------------------------------------------------ checks
    def check(self) -> None:
        """Raise ``ValueError`` (or `CatVersionDataError` for templates) naming any setting out of range."""
        errors = []
        if not isinstance(self.class_word, str) or not self.class_word.strip():
            errors.append("`class_word` must be the concept's base class, e.g. 'dog' (got an empty value).")
        else:
            self.class_word = " ".join(self.class_word.split())
        if "{}" in (self.class_word or ""):
            errors.append("`class_word` is the word itself ('dog'), not a template.")
        positive = ("num_residual_tokens", "resolution", "train_batch_size", "gradient_accumulation_steps", "repeats")
        for name in positive:
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                errors.append(f"`{name}` must be a positive integer, got {getattr(self, name)!r}.")
        for name in ("max_train_steps", "num_train_epochs", "checkpointing_steps", "checkpoints_total_limit"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                errors.append(f"`{name}` must be a positive integer or None, got {value!r}.")
        if isinstance(self.resolution, int) and self.resolution % 8:
            errors.append(f"`resolution` must be a multiple of 8 (the VAE downsamples by 8), got {self.resolution}.")
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            errors.append(f"`learning_rate` must be a positive number, got {self.learning_rate!r}.")
        if not math.isfinite(float(self.logit_bias)):
            errors.append(f"`logit_bias` must be finite, got {self.logit_bias!r}.")
        if self.residual_init not in RESIDUAL_INITS:
            errors.append(f"`residual_init` must be one of {RESIDUAL_INITS}, got {self.residual_init!r}.")
        if self.residual_init_std is not None and not (self.residual_init_std >= 0):
            errors.append(f"`residual_init_std` must be >= 0, got {self.residual_init_std!r}.")
        if self.mixed_precision is not None and self.mixed_precision not in MIXED_PRECISION:
            errors.append(f"`mixed_precision` must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}.")
        if self.latent_sampling not in LATENT_SAMPLING:
            errors.append(f"`latent_sampling` must be one of {LATENT_SAMPLING}, got {self.latent_sampling!r}.")
        if self.lr_scheduler not in LR_SCHEDULERS:
            errors.append(f"`lr_scheduler` must be one of {LR_SCHEDULERS}, got {self.lr_scheduler!r}.")
        if not 0.0 <= float(self.flip_p) <= 1.0:
            errors.append(f"`flip_p` must be in [0, 1], got {self.flip_p!r}.")
        if self.lr_warmup_steps < 0:
            errors.append(f"`lr_warmup_steps` must be >= 0, got {self.lr_warmup_steps!r}.")
        if self.num_validation_images < 1 or self.validation_steps is None or self.validation_steps < 1:
            errors.append("`num_validation_images` and `validation_steps` must be positive.")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            errors.append(f"`max_grad_norm` must be > 0 or None, got {self.max_grad_norm!r}.")
        if self.residual_layers is not None:
            layers = self.residual_layers
            groups = layers.values() if isinstance(layers, dict) else [layers]
            for group in groups:
                if not group or not all(isinstance(i, int) for i in group) or len(set(group)) != len(group):
                    errors.append(f"`residual_layers` must be distinct layer indices, got {self.residual_layers!r}.")
                    break
            if isinstance(layers, dict) and set(layers) - {"text_encoder", "text_encoder_2"}:
                errors.append("`residual_layers` keys must be 'text_encoder' and/or 'text_encoder_2'.")
        if errors:
            raise ValueError("Invalid CatVersion training settings:\n- " + "\n- ".join(errors))
        prompt_templates(self.learnable_property, self.prompt_templates)  # raises CatVersionDataError

    # ------------------------------------------------------------------------------------------------ helpers
    def replace(self, **changes: Any) -> "CatVersionTrainingConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        data = dataclasses.asdict(self)
        data["hub_token"] = None  # never written anywhere
        return data

    def tracker_config(self) -> Dict[str, Union[int, float, str, bool]]:
        """Flat, TensorBoard-friendly copy of the settings (no token)."""
        out = {}
        for key, value in self.to_dict().items():
            if value is None:
                continue
            out[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
        return out

    @property
    def weight_path(self) -> str:
        from ..format import DEFAULT_WEIGHT_NAME

        return os.path.join(self.output_dir, DEFAULT_WEIGHT_NAME)


def parse_residual_layers(text: Optional[str]) -> ResidualLayers:
    """Parse ``"9,10,11"`` (every encoder) or ``"text_encoder:9,10,11;text_encoder_2:28,29,30"``."""
    if text is None or not str(text).strip():
        return None
    text = str(text).strip()
    try:
        if ":" not in text:
            return [int(x) for x in text.replace(" ", ",").split(",") if x.strip()]
        out: Dict[str, List[int]] = {}
        for group in text.replace(" ", "").split(";"):
            if not group:
                continue
            name, _, values = group.partition(":")
            out[name] = [int(x) for x in values.split(",") if x]
        return out
    except ValueError:
        raise ValueError(
            f"Cannot parse residual layers {text!r}: use comma-separated indices ('9,10,11', negative counts from the "
            "end) or per encoder 'text_encoder:9,10,11;text_encoder_2:28,29,30'."
        )


__all__ = [
    "AUTHORS_EFFECTIVE_LEARNING_RATE",
    "CatVersionTrainingConfig",
    "PAPER_LEARNING_RATE",
    "parse_residual_layers",
]
