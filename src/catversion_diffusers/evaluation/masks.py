"""Concept masks: reading user masks, computing them with CLIPSeg, applying them to images, saving them.

A mask is a boolean ``(H, W)`` NumPy array, ``True`` on the concept. Masks given as images are read as follows:
an image with an alpha channel that is not fully opaque uses its alpha, any other image its greyscale value; values
are scaled to 0..1 and a pixel is on the concept when its value is at least ``threshold`` (default 0.5, i.e. 128 of
255). A mask of another size than its image is resized to the image with nearest-neighbour sampling (after
thresholding, so it stays binary).
"""

import os
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from ..utils import get_logger
from .errors import EvaluationError
from .images import IMAGE_EXTENSIONS, MASK_SUFFIX, ImageInput, is_mask_file, list_images, load_image
from .models import DEFAULT_CLIPSEG_MODEL, ModelInput, _FrozenModel, batched, load_pretrained

logger = get_logger(__name__)

MaskInput = Union[Image.Image, str, os.PathLike, np.ndarray, torch.Tensor]
Fill = Union[str, Tuple[int, int, int]]

#: Default CLIPSeg threshold on the sigmoid of its logits (a probability in 0..1).
DEFAULT_CLIPSEG_THRESHOLD = 0.4

#: Default colour of the masked-out region: black, i.e. M * I with the image in 0..1 as in the paper's eq. 6.
DEFAULT_FILL = "black"

_FILL_NAMES = ("black", "white", "mean", "grey", "gray")


def _mask_values(mask: MaskInput) -> np.ndarray:
    """``mask`` as a float array ``(H, W)`` in 0..1 (before thresholding)."""
    if isinstance(mask, (str, os.PathLike)):
        path = os.fspath(mask)
        if not os.path.isfile(path):
            raise EvaluationError(f"Mask file {path!r} does not exist.")
        with Image.open(path) as opened:
            opened.load()
            mask = opened.copy()
    if isinstance(mask, Image.Image):
        if mask.mode == "1":
            return np.asarray(mask, dtype=np.float32)
        if mask.mode == "P":
            mask = mask.convert("RGBA") if "transparency" in mask.info else mask.convert("L")
        if mask.mode in ("RGBA", "LA", "PA"):
            alpha = np.asarray(mask.getchannel("A"), dtype=np.float32) / 255.0
            if alpha.min() < 1.0:
                return alpha
        return np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    if isinstance(mask, np.ndarray):
        array = mask
        if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
            array = array.reshape(array.shape[1:] if array.shape[0] == 1 else array.shape[:-1])
        if array.ndim == 3 and array.shape[-1] in (3, 4):
            array = array[..., :3].mean(axis=-1) if array.dtype != np.bool_ else array[..., :3].any(axis=-1)
        if array.ndim != 2:
            raise EvaluationError(f"A mask must be (H, W), got an array of shape {mask.shape}.")
        if array.dtype == np.bool_:
            return array.astype(np.float32)
        if array.dtype == np.uint8:
            return array.astype(np.float32) / 255.0
        array = array.astype(np.float32)
        return array / 255.0 if array.max(initial=0.0) > 1.0 else array
    raise EvaluationError(f"Cannot read a mask from an object of type {type(mask).__name__}.")


def to_mask_array(mask: MaskInput, size: Optional[Tuple[int, int]] = None, threshold: float = 0.5) -> np.ndarray:
    """A boolean mask ``(H, W)`` from an image, a file, or an array.

    Args:
        mask (`PIL.Image.Image`, `str`, `os.PathLike`, `np.ndarray` or `torch.Tensor`): the mask (see the module
            docstring for how images are read). Arrays: ``bool``, ``uint8`` 0..255, or float 0..1.
        size (`Tuple[int, int]`, *optional*): ``(width, height)`` to resize to (nearest neighbour), PIL's order.
        threshold (`float`, defaults to 0.5): a pixel is on the concept when its 0..1 value is ``>= threshold``.
    """
    binary = _mask_values(mask) >= threshold
    if size is not None and (binary.shape[1], binary.shape[0]) != tuple(size):
        resized = Image.fromarray(binary.astype(np.uint8) * 255).resize(tuple(size), Image.NEAREST)
        binary = np.asarray(resized) >= 128
    return binary


def mask_bbox(mask: np.ndarray) -> Optional[Tuple[int, int, int, int]]:
    """``(left, top, right, bottom)`` of the ``True`` pixels (right/bottom exclusive), or ``None`` if empty."""
    rows, cols = np.any(mask, axis=1), np.any(mask, axis=0)
    if not rows.any():
        return None
    top, bottom = int(np.argmax(rows)), int(len(rows) - np.argmax(rows[::-1]))
    left, right = int(np.argmax(cols)), int(len(cols) - np.argmax(cols[::-1]))
    return left, top, right, bottom


def resolve_fill(fill: Fill = DEFAULT_FILL, image_mean: Optional[Sequence[float]] = None) -> Tuple[int, int, int]:
    """The RGB colour (0..255) of a fill option.

    Args:
        fill (`str` or `Tuple[int, int, int]`, defaults to ``"black"``): ``"black"`` (0, 0, 0: the paper's M * I),
            ``"white"``, ``"mean"`` / ``"grey"`` (the image processor's mean colour, which CLIP's normalization maps
            to zero: "no signal"), or an RGB triple.
        image_mean (`Sequence[float]`, *optional*): the processor's mean in 0..1 for ``"mean"``; defaults to CLIP's.
    """
    if isinstance(fill, str):
        name = fill.lower()
        if name == "black":
            return (0, 0, 0)
        if name == "white":
            return (255, 255, 255)
        if name in ("mean", "grey", "gray"):
            mean = image_mean or (0.48145466, 0.4578275, 0.40821073)
            return tuple(int(round(float(m) * 255)) for m in mean)  # type: ignore[return-value]
        raise EvaluationError(f"Unknown mask fill {fill!r}: use one of {_FILL_NAMES} or an (R, G, B) triple.")
    colour = tuple(int(c) for c in fill)
    if len(colour) != 3 or not all(0 <= c <= 255 for c in colour):
        raise EvaluationError(f"A fill colour must be three integers in 0..255, got {fill!r}.")
    return colour  # type: ignore[return-value]


def apply_mask(
    image: ImageInput,
    mask: MaskInput,
    fill: Fill = DEFAULT_FILL,
    crop: bool = False,
    image_mean: Optional[Sequence[float]] = None,
) -> Image.Image:
    """The masked image of eq. 6, ``M * I``: pixels outside the mask replaced by a constant colour.

    Args:
        image (`PIL.Image.Image`, path, array or tensor): the image.
        mask (`PIL.Image.Image`, path, array or tensor): its concept mask (resized to the image if needed).
        fill (`str` or `Tuple[int, int, int]`, defaults to ``"black"``): colour outside the mask, see `resolve_fill`.
        crop (`bool`, defaults to False): crop to the mask's bounding box, then pad that box to a square (centred,
            with the fill colour) so that CLIP's centre crop keeps the whole concept. An empty mask is not cropped.
        image_mean (`Sequence[float]`, *optional*): the processor mean, for ``fill="mean"``.
    """
    pil = load_image(image)
    binary = to_mask_array(mask, size=pil.size)
    colour = np.array(resolve_fill(fill, image_mean), dtype=np.uint8)
    pixels = np.asarray(pil).copy()
    pixels[~binary] = colour
    out = Image.fromarray(pixels)
    if crop:
        box = mask_bbox(binary)
        if box is not None:
            out = out.crop(box)
            side = max(out.size)
            canvas = Image.new("RGB", (side, side), tuple(int(c) for c in colour))
            canvas.paste(out, ((side - out.size[0]) // 2, (side - out.size[1]) // 2))
            out = canvas
    return out


def mask_area(mask: np.ndarray) -> float:
    """Fraction of the image covered by the mask."""
    return float(np.asarray(mask, dtype=bool).mean())


def save_mask(mask: MaskInput, path: Union[str, os.PathLike]) -> str:
    """Save a mask as a black-and-white PNG (255 on the concept). Returns the path."""
    binary = to_mask_array(mask)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(binary.astype(np.uint8) * 255, mode="L").save(path)
    return path


def _strip_mask_suffix(stem: str) -> str:
    for suffix in (MASK_SUFFIX, ".mask", "-mask"):
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def _stem(path: Union[str, os.PathLike]) -> str:
    return os.path.splitext(os.path.basename(os.fspath(path)))[0]


def _find_mask_file(directory: str, image_path: str) -> Optional[str]:
    stem = _stem(image_path)
    image_real = os.path.realpath(image_path)
    for name_stem in (stem + MASK_SUFFIX, stem + ".mask", stem + "-mask", stem):
        for ext in IMAGE_EXTENSIONS:
            for candidate_ext in (ext, ext.upper()):
                candidate = os.path.join(directory, name_stem + candidate_ext)
                if os.path.isfile(candidate) and os.path.realpath(candidate) != image_real:
                    return candidate
    return None


def load_masks(
    masks: Union[str, os.PathLike, Sequence[MaskInput]],
    images: Union[str, os.PathLike, Sequence[ImageInput]],
    match_names: bool = True,
    threshold: float = 0.5,
) -> List[np.ndarray]:
    """User-supplied masks for ``images``, each resized to its image: boolean ``(H, W)`` arrays.

    Args:
        masks (`str`, `os.PathLike` or `Sequence`): a folder, or a list (files, PIL images, arrays) in the order of
            ``images``. In a folder, the mask of ``photo.jpg`` is ``photo_mask.*``, ``photo.mask.*``,
            ``photo-mask.*`` or ``photo.*`` (any image extension; in the images' own folder only the ``*_mask``
            forms can match).
        images (`str`, `os.PathLike` or `Sequence`): a folder (its images, masks left out, sorted) or a list.
        match_names (`bool`, defaults to True): with lists of files on both sides, require the mask file names to
            be the image names (optionally with ``_mask``, ``.mask`` or ``-mask``).
        threshold (`float`, defaults to 0.5): binarization threshold on the 0..1 mask value.

    Raises:
        `EvaluationError`: a missing mask, counts that differ, or names that do not match.
    """
    if isinstance(images, (str, os.PathLike)):
        images = list_images(images)
    images = list(images)
    if not images:
        raise EvaluationError("No images were given to load masks for.")
    sizes = [load_image(image).size for image in images]

    if isinstance(masks, (str, os.PathLike)):
        directory = os.fspath(masks)
        if not os.path.isdir(directory):
            raise EvaluationError(f"Mask folder {directory!r} does not exist.")
        if not all(isinstance(image, (str, os.PathLike)) for image in images):
            raise EvaluationError(
                "Masks can only be matched to images by file name when the images are files; pass the masks as a "
                "list in the order of the images instead of a folder."
            )
        found = [_find_mask_file(directory, os.fspath(image)) for image in images]
        missing = [_stem(image) for image, path in zip(images, found) if path is None]
        if missing:
            raise EvaluationError(
                f"Mask folder {directory!r} has no mask for {len(missing)} of {len(images)} images: {missing[:10]}"
                f"{' ...' if len(missing) > 10 else ''}. The mask of 'photo.jpg' must be named 'photo_mask.png' (or "
                "'photo.png', 'photo.mask.png', 'photo-mask.png', any image extension)."
            )
        used = {os.path.realpath(p) for p in found if p}
        extra = [
            os.path.basename(p)
            for p in list_images(directory, include_masks=True)
            if os.path.realpath(p) not in used
            and (
                is_mask_file(p)
                or os.path.realpath(os.path.dirname(p)) != os.path.realpath(os.path.dirname(os.fspath(images[0])))
            )
        ]
        if extra:
            logger.warning(f"Mask folder {directory!r} has masks that match no image: {extra[:10]}.")
        masks = found  # type: ignore[assignment]
    else:
        masks = list(masks)
        if len(masks) != len(images):
            raise EvaluationError(f"Got {len(masks)} masks for {len(images)} images: give exactly one mask per image.")
        if match_names:
            for image, mask in zip(images, masks):
                if isinstance(image, (str, os.PathLike)) and isinstance(mask, (str, os.PathLike)):
                    if _strip_mask_suffix(_stem(mask)) != _stem(image):
                        raise EvaluationError(
                            f"Mask {os.fspath(mask)!r} does not match image {os.fspath(image)!r} by name (expected "
                            f"'{_stem(image)}' or '{_stem(image)}{MASK_SUFFIX}'). Sort both lists the same way, or "
                            "pass `match_names=False` to pair them by position."
                        )
    return [to_mask_array(mask, size=size, threshold=threshold) for mask, size in zip(masks, sizes)]


class CLIPSegMasker(_FrozenModel):
    """Concept masks from CLIPSeg prompted with text (the class word, e.g. ``"dog"``).

    The mask is ``sigmoid(logits) >= threshold``, with the probability map (352 x 352 for the released model)
    resized bilinearly to each image's size before thresholding.

    Args:
        model (`str`, `os.PathLike` or `transformers.CLIPSegForImageSegmentation`, defaults to
            ``"CIDAS/clipseg-rd64-refined"``): a Hub model id, a local folder, or a built model.
        processor (`CLIPSegProcessor`, *optional*): defaults to the one saved with the model.
        threshold (`float`, defaults to 0.4): probability threshold.
        device, torch_dtype, batch_size (defaults to 8), show_progress, local_files_only, cache_dir, revision,
            token: as for `CLIPEmbedder`.
    """

    def __init__(
        self,
        model: ModelInput = DEFAULT_CLIPSEG_MODEL,
        processor: Optional[Any] = None,
        threshold: float = DEFAULT_CLIPSEG_THRESHOLD,
        device: Optional[Union[str, torch.device]] = None,
        torch_dtype: Optional[torch.dtype] = None,
        batch_size: int = 8,
        show_progress: bool = True,
        local_files_only: Optional[bool] = None,
        cache_dir: Optional[str] = None,
        revision: Optional[str] = None,
        token: Optional[Union[str, bool]] = None,
    ) -> None:
        from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

        if not 0.0 <= threshold <= 1.0:
            raise EvaluationError(f"The CLIPSeg threshold is a probability in 0..1, got {threshold}.")
        load_kwargs = dict(local_files_only=local_files_only, cache_dir=cache_dir, revision=revision, token=token)
        given = isinstance(model, torch.nn.Module)
        source = (getattr(model, "name_or_path", None) or None) if given else os.fspath(model)
        if not given:
            model = load_pretrained(
                CLIPSegForImageSegmentation, source, "CLIPSeg", "`model=` or `--clipseg_model`", **load_kwargs
            )
        if processor is None:
            if not source:
                raise EvaluationError("Pass `processor=` (a CLIPSegProcessor) with a CLIPSeg model object.")
            processor = load_pretrained(
                CLIPSegProcessor, source, "CLIPSeg processor", "`model=` or `--clipseg_model`", **load_kwargs
            )
        self._place(model, device, torch_dtype, given)
        self.processor = processor
        self.threshold = float(threshold)
        self.batch_size = batch_size
        self.show_progress = show_progress

    def probabilities(self, images: Sequence[ImageInput], prompts: Union[str, Sequence[str]]) -> List[np.ndarray]:
        """Per image, the float32 ``(H, W)`` probability of the prompt's concept at the image's own size.

        Args:
            images (`Sequence`): images (PIL, files, arrays).
            prompts (`str` or `Sequence[str]`): one prompt for all images, or one per image.
        """
        images = [load_image(image) for image in images]
        if isinstance(prompts, str):
            prompts = [prompts] * len(images)
        prompts = list(prompts)
        if len(prompts) != len(images):
            raise EvaluationError(f"Got {len(prompts)} CLIPSeg prompts for {len(images)} images.")
        indices = list(range(len(images)))
        batches = list(batched(indices, self.batch_size))
        out: List[np.ndarray] = []
        for batch in self._progress(batches, "CLIPSeg masks"):
            inputs = self.processor(
                text=[prompts[i] for i in batch],
                images=[images[i] for i in batch],
                padding=True,
                return_tensors="pt",
            )
            with torch.no_grad():
                logits = self.model(
                    input_ids=inputs["input_ids"].to(self.device),
                    attention_mask=inputs["attention_mask"].to(self.device),
                    pixel_values=inputs["pixel_values"].to(self.device, self.dtype),
                ).logits
            logits = logits.float().reshape(len(batch), logits.shape[-2], logits.shape[-1])
            probs = torch.sigmoid(logits)
            for row, i in enumerate(batch):
                width, height = images[i].size
                resized = torch.nn.functional.interpolate(
                    probs[row][None, None], size=(height, width), mode="bilinear", align_corners=False
                )
                out.append(resized[0, 0].clamp(0, 1).cpu().numpy().astype(np.float32))
        return out

    def __call__(
        self, images: Sequence[ImageInput], prompts: Union[str, Sequence[str]], threshold: Optional[float] = None
    ) -> List[np.ndarray]:
        """Boolean masks ``(H, W)``, ``probability >= threshold`` (defaults to the masker's threshold)."""
        threshold = self.threshold if threshold is None else float(threshold)
        masks = [p >= threshold for p in self.probabilities(images, prompts)]
        empty = sum(1 for m in masks if not m.any())
        if empty:
            logger.warning(
                f"CLIPSeg found nothing above threshold {threshold} in {empty} of {len(masks)} images (empty masks)."
            )
        return masks


def compute_masks(
    images: Sequence[ImageInput],
    prompts: Union[str, Sequence[str]],
    masker: Optional[Union[CLIPSegMasker, ModelInput]] = None,
    threshold: Optional[float] = None,
    **masker_kwargs: Any,
) -> List[np.ndarray]:
    """Concept masks computed with CLIPSeg (a `CLIPSegMasker`, a model name or path, or the default model).

    Args:
        images (`Sequence`): the images.
        prompts (`str` or `Sequence[str]`): the concept to segment, e.g. the class word ``"dog"``.
        masker (`CLIPSegMasker`, `str` or model, *optional*): defaults to ``"CIDAS/clipseg-rd64-refined"``.
        threshold (`float`, *optional*): defaults to the masker's (0.4).
        masker_kwargs: for building a masker from a name.
    """
    if not isinstance(masker, CLIPSegMasker):
        masker = CLIPSegMasker(masker if masker is not None else DEFAULT_CLIPSEG_MODEL, **masker_kwargs)
    return masker(images, prompts, threshold=threshold)
