"""Loading the models the metrics use (CLIP, DINO), and turning images and texts into normalized embeddings.

Every model is given as a Hugging Face Hub name, a local folder, or an already built model object. Loading never
fails silently: a model that cannot be found (offline, no cache, a wrong path) raises
`EvaluationModelNotFoundError` naming the model and how to provide it.
"""

import os
from typing import Any, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..utils import get_logger
from .errors import EvaluationError, EvaluationModelNotFoundError
from .images import ImageInput, load_image

logger = get_logger(__name__)

#: CLIP used for the text and image alignment by default: ViT-B/32, the model of Textual Inversion's and
#: DreamBooth's CLIP scores. The CatVersion paper does not say which CLIP it used; pass `PAPER_CLIP_MODEL_L14`
#: (the CLIP of Stable Diffusion's text encoder) to compare with numbers computed with ViT-L/14.
DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
#: The other common choice, CLIP ViT-L/14.
PAPER_CLIP_MODEL_L14 = "openai/clip-vit-large-patch14"
#: DINO ViT-S/16, the model of DreamBooth's DINO score.
DEFAULT_DINO_MODEL = "facebook/dino-vits16"
#: CLIPSeg used for concept masks.
DEFAULT_CLIPSEG_MODEL = "CIDAS/clipseg-rd64-refined"

ModelInput = Union[str, os.PathLike, torch.nn.Module]


def _looks_like_local_path(name: str) -> bool:
    return (
        os.path.isabs(name)
        or name.startswith((".", "~"))
        or name.count("/") > 1
        or (os.sep != "/" and os.sep in name)
        or os.path.exists(name)
    )


def model_not_found_message(
    what: str, name: str, option: Optional[str] = None, error: Optional[Exception] = None
) -> str:
    """The message of `EvaluationModelNotFoundError`: which model is missing and how to provide it."""
    reason = (
        f" ({type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''})"
        if error
        else ""
    )
    local = os.path.basename(name.rstrip("/\\")) or "model"
    where = f" as {option}" if option else ""
    return (
        f"Could not load the {what} model {name!r}{reason}. The evaluation needs this model's weights and could not "
        "find them: the name is not a local folder, it is not in the Hugging Face cache, and the Hub could not be "
        "reached (offline, HF_HUB_OFFLINE=1 or local_files_only=True) or does not have it. Provide it in one of two "
        f"ways: (1) on a machine with internet access run `huggingface-cli download {name} --local-dir ./{local}` "
        f"(or `huggingface_hub.snapshot_download({name!r})`), copy the folder here and pass its path{where}; (2) set "
        f"HF_HOME to a Hugging Face cache that already holds {name!r} (and HF_HUB_OFFLINE=1 to skip network tries)."
    )


def load_pretrained(
    loader: Any, name_or_path: Union[str, os.PathLike], what: str, option: Optional[str] = None, **kwargs: Any
) -> Any:
    """``loader.from_pretrained(name_or_path, **kwargs)``, turning "not found" failures into
    `EvaluationModelNotFoundError`.

    Args:
        loader (`type`): a class with ``from_pretrained`` (``CLIPModel``, ``AutoImageProcessor``...).
        name_or_path (`str` or `os.PathLike`): a Hub model id or a local folder.
        what (`str`): what the model is, for the message (``"CLIP"``, ``"DINO"``...).
        option (`str`, *optional*): the argument or command line option that names it, for the message.
        kwargs: passed to ``from_pretrained`` (``local_files_only``, ``cache_dir``, ``revision``, ``token``...);
            ``None`` values are dropped.
    """
    name = os.fspath(name_or_path)
    expanded = os.path.expanduser(name)
    if _looks_like_local_path(name) and not os.path.isdir(expanded):
        where = f" (given as {option})" if option else ""
        raise EvaluationModelNotFoundError(
            f"Could not load the {what} model {name!r}{where}: it looks like a local path, but there is no folder "
            "there. Check the path. To make such a folder, run on a machine with internet access "
            f"`huggingface-cli download <hub model id> --local-dir {name}` and copy it here; or pass the Hub id "
            "itself with HF_HOME pointing at a Hugging Face cache that holds the model."
        )
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    try:
        return loader.from_pretrained(expanded if os.path.isdir(expanded) else name, **kwargs)
    except (OSError, ValueError) as error:  # huggingface_hub's HFValidationError is a ValueError
        raise EvaluationModelNotFoundError(model_not_found_message(what, name, option, error)) from error


def resolve_device(device: Optional[Union[str, torch.device]] = None) -> torch.device:
    """``device`` as a ``torch.device``; ``None`` means CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _module_device_dtype(module: torch.nn.Module) -> Tuple[torch.device, torch.dtype]:
    for parameter in module.parameters():
        return parameter.device, parameter.dtype
    return torch.device("cpu"), torch.float32


def batched(items: Sequence[Any], batch_size: int) -> Iterator[Sequence[Any]]:
    """Consecutive slices of ``items`` of at most ``batch_size`` elements."""
    if batch_size < 1:
        raise EvaluationError(f"batch_size must be at least 1, got {batch_size}.")
    for start in range(0, len(items), batch_size):
        yield items[start : start + batch_size]


class _FrozenModel:
    """Shared plumbing of the evaluation models: placement of a frozen model, batches with a progress bar."""

    show_progress: bool = True

    def _place(self, model: torch.nn.Module, device, torch_dtype, given: bool) -> None:
        if given and device is None and torch_dtype is None:
            self.device, self.dtype = _module_device_dtype(model)
        else:
            self.device = (
                resolve_device(device) if (device is not None or not given) else _module_device_dtype(model)[0]
            )
            self.dtype = torch_dtype or _module_device_dtype(model)[1]
            model.to(self.device, self.dtype)
        self.model = model.eval()
        self.model.requires_grad_(False)

    def _progress(self, batches: List[Sequence[Any]], desc: str):
        return tqdm(batches, desc=desc, disable=not self.show_progress or len(batches) <= 1, leave=False)


class _Embedder(_FrozenModel):
    """Image embeddings in batches (CLIP, DINO)."""

    what = "model"

    def _pixel_values(self, images: Sequence[ImageInput]) -> torch.Tensor:
        pil = [load_image(image) for image in images]
        pixels = self.image_processor(images=pil, return_tensors="pt")["pixel_values"]
        return pixels.to(self.device, self.dtype)

    def embed_images(self, images: Sequence[ImageInput], desc: Optional[str] = None) -> torch.Tensor:
        """L2-normalized image embeddings, ``[len(images), dim]``, float32 on CPU; computed in batches of
        ``batch_size`` (results do not depend on it, up to float error)."""
        images = list(images)
        if not images:
            raise EvaluationError(f"No images to embed with {self.what}.")
        out = []
        for batch in self._progress(list(batched(images, self.batch_size)), desc or f"{self.what} images"):
            with torch.no_grad():
                features = self._image_features(self._pixel_values(batch))
            out.append(F.normalize(features.float(), dim=-1).cpu())
        return torch.cat(out)

    def _image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def _source_name(model: torch.nn.Module) -> Optional[str]:
    name = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    return name or None


class CLIPEmbedder(_Embedder):
    """CLIP image and text embeddings (the projected, L2-normalized embeddings CLIP compares by cosine).

    Args:
        model (`str`, `os.PathLike` or `transformers.CLIPModel`, defaults to `DEFAULT_CLIP_MODEL`):
            a Hub model id, a local folder, or a built ``CLIPModel``.
        processor (`CLIPProcessor` or `CLIPImageProcessor`, *optional*): defaults to the one saved with the model.
        tokenizer (`CLIPTokenizer`, *optional*): defaults to the processor's, else the one saved with the model
            (loaded on the first text).
        device (`str` or `torch.device`, *optional*): defaults to CUDA when available (for a model object: where it
            already is).
        torch_dtype (`torch.dtype`, *optional*): e.g. ``torch.float16`` on GPU; embeddings are returned as float32.
        batch_size (`int`, defaults to 32): images or texts per forward pass.
        show_progress (`bool`, defaults to True): tqdm progress bars when there is more than one batch.
        local_files_only, cache_dir, revision, token: passed to ``from_pretrained``.
    """

    what = "CLIP"

    def __init__(
        self,
        model: ModelInput = DEFAULT_CLIP_MODEL,
        processor: Optional[Any] = None,
        tokenizer: Optional[Any] = None,
        device: Optional[Union[str, torch.device]] = None,
        torch_dtype: Optional[torch.dtype] = None,
        batch_size: int = 32,
        show_progress: bool = True,
        local_files_only: Optional[bool] = None,
        cache_dir: Optional[str] = None,
        revision: Optional[str] = None,
        token: Optional[Union[str, bool]] = None,
    ) -> None:
        from transformers import AutoImageProcessor, CLIPModel

        self._load_kwargs = dict(
            local_files_only=local_files_only, cache_dir=cache_dir, revision=revision, token=token
        )
        given = isinstance(model, torch.nn.Module)
        if given:
            source = _source_name(model)
        else:
            source = os.fspath(model)
            model = load_pretrained(CLIPModel, source, "CLIP", "`model=` or `--clip_model`", **self._load_kwargs)
        if not hasattr(model, "visual_projection") or not hasattr(model, "text_projection"):
            raise EvaluationError(f"CLIPEmbedder needs a CLIPModel (with both towers), got {type(model).__name__}.")
        self.source = source
        self.batch_size = batch_size
        self.show_progress = show_progress
        self._place(model, device, torch_dtype, given)

        if processor is not None and hasattr(processor, "image_processor"):
            tokenizer = tokenizer or getattr(processor, "tokenizer", None)
            processor = processor.image_processor
        if processor is None:
            if not source:
                raise EvaluationError("Pass `processor=` (a CLIPImageProcessor) with a CLIP model object.")
            processor = load_pretrained(
                AutoImageProcessor, source, "CLIP image processor", "`model=` or `--clip_model`", **self._load_kwargs
            )
        self.image_processor = processor
        self._tokenizer = tokenizer

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            if not self.source:
                raise EvaluationError("Pass `tokenizer=` (a CLIPTokenizer) with a CLIP model object to embed texts.")
            self._tokenizer = load_pretrained(
                AutoTokenizer, self.source, "CLIP tokenizer", "`model=` or `--clip_model`", **self._load_kwargs
            )
        return self._tokenizer

    @property
    def image_mean(self) -> Tuple[float, float, float]:
        """The processor's per-channel mean (0..1), the grey that normalizes to zero."""
        mean = getattr(self.image_processor, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073)
        return tuple(float(m) for m in mean)  # type: ignore[return-value]

    def _image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        outputs = self.model.vision_model(pixel_values=pixel_values)
        pooled = outputs.pooler_output if hasattr(outputs, "pooler_output") else outputs[1]
        return self.model.visual_projection(pooled)

    def embed_texts(self, texts: Sequence[str], desc: Optional[str] = None) -> torch.Tensor:
        """L2-normalized text embeddings, ``[len(texts), dim]``, float32 on CPU (texts longer than the model's
        context are truncated)."""
        texts = [str(t) for t in texts]
        if not texts:
            raise EvaluationError("No texts to embed with CLIP.")
        max_length = min(
            int(getattr(self.tokenizer, "model_max_length", 77) or 77),
            int(self.model.config.text_config.max_position_embeddings),
        )
        out = []
        for batch in self._progress(list(batched(texts, self.batch_size)), desc or "CLIP texts"):
            tokens = self.tokenizer(
                list(batch), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
            with torch.no_grad():
                outputs = self.model.text_model(
                    input_ids=tokens["input_ids"].to(self.device),
                    attention_mask=tokens["attention_mask"].to(self.device),
                )
                pooled = outputs.pooler_output if hasattr(outputs, "pooler_output") else outputs[1]
                features = self.model.text_projection(pooled)
            out.append(F.normalize(features.float(), dim=-1).cpu())
        return torch.cat(out)


class DINOEmbedder(_Embedder):
    """DINO image embeddings: the L2-normalized CLS token of the last layer (as DreamBooth's DINO score).

    Args:
        model (`str`, `os.PathLike` or `transformers.ViTModel`, defaults to `DEFAULT_DINO_MODEL`):
            a Hub model id, a local folder, or a built ViT-style model whose ``last_hidden_state[:, 0]`` is the CLS
            token.
        processor (`ViTImageProcessor`, *optional*): defaults to the one saved with the model.
        device, torch_dtype, batch_size, show_progress, local_files_only, cache_dir, revision, token:
            as for `CLIPEmbedder`.
    """

    what = "DINO"

    def __init__(
        self,
        model: ModelInput = DEFAULT_DINO_MODEL,
        processor: Optional[Any] = None,
        device: Optional[Union[str, torch.device]] = None,
        torch_dtype: Optional[torch.dtype] = None,
        batch_size: int = 32,
        show_progress: bool = True,
        local_files_only: Optional[bool] = None,
        cache_dir: Optional[str] = None,
        revision: Optional[str] = None,
        token: Optional[Union[str, bool]] = None,
    ) -> None:
        from transformers import AutoConfig, AutoImageProcessor, AutoModel

        load_kwargs = dict(local_files_only=local_files_only, cache_dir=cache_dir, revision=revision, token=token)
        given = isinstance(model, torch.nn.Module)
        if given:
            source = _source_name(model)
        else:
            source = os.fspath(model)
            config = load_pretrained(AutoConfig, source, "DINO", "`model=` or `--dino_model`", **load_kwargs)
            extra = {"add_pooling_layer": False} if getattr(config, "model_type", None) == "vit" else {}
            model = load_pretrained(AutoModel, source, "DINO", "`model=` or `--dino_model`", **load_kwargs, **extra)
        if hasattr(model, "text_model") or hasattr(model, "get_text_features"):
            raise EvaluationError(
                f"{source or type(model).__name__!r} is a {type(model).__name__} with a text tower, not a DINO-style "
                f"vision transformer: pass a DINO model such as {DEFAULT_DINO_MODEL!r}."
            )
        self.source = source
        self.batch_size = batch_size
        self.show_progress = show_progress
        self._place(model, device, torch_dtype, given)
        if processor is not None and hasattr(processor, "image_processor"):
            processor = processor.image_processor
        if processor is None:
            if not source:
                raise EvaluationError("Pass `processor=` (a ViTImageProcessor) with a DINO model object.")
            processor = load_pretrained(
                AutoImageProcessor, source, "DINO image processor", "`model=` or `--dino_model`", **load_kwargs
            )
        self.image_processor = processor

    def _image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        outputs = self.model(pixel_values=pixel_values)
        hidden = outputs.last_hidden_state if hasattr(outputs, "last_hidden_state") else outputs[0]
        return hidden[:, 0]
