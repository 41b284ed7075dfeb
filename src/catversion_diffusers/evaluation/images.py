"""Reading images given as files, PIL images, NumPy arrays or tensors, and listing image folders."""

import os
from typing import List, Sequence, Union

import numpy as np
import torch
from PIL import Image

from .errors import EvaluationError

ImageInput = Union[Image.Image, str, os.PathLike, np.ndarray, torch.Tensor]

#: File extensions treated as images when a folder is listed.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")

#: Suffix of the mask file saved beside an image: ``photo.png`` -> ``photo_mask.png``.
MASK_SUFFIX = "_mask"


def load_image(image: ImageInput) -> Image.Image:
    """One image as an RGB ``PIL.Image``.

    Args:
        image (`PIL.Image.Image`, `str`, `os.PathLike`, `np.ndarray` or `torch.Tensor`):
            a PIL image (any mode), the path of an image file, a ``(H, W, 3)`` / ``(H, W)`` array (``uint8`` in
            0..255 or float in 0..1), or a ``(3, H, W)`` float tensor in 0..1 (what ``output_type="pt"`` gives).
    """
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.isfile(path):
            raise EvaluationError(f"Image file {path!r} does not exist.")
        with Image.open(path) as opened:
            return opened.convert("RGB")
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.ndim != 3 or tensor.shape[0] not in (1, 3):
            raise EvaluationError(
                f"An image tensor must be (3, H, W) or (1, H, W) in 0..1, got {tuple(tensor.shape)}."
            )
        image = tensor.float().permute(1, 2, 0).numpy()
    if isinstance(image, np.ndarray):
        array = image
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
            raise EvaluationError(f"An image array must be (H, W), (H, W, 3) or (H, W, 4), got {array.shape}.")
        if array.dtype != np.uint8:
            array = (np.clip(array.astype(np.float64), 0.0, 1.0) * 255.0).round().astype(np.uint8)
        return Image.fromarray(array).convert("RGB")
    raise EvaluationError(f"Cannot read an image from an object of type {type(image).__name__}.")


def load_images(images: Union[ImageInput, Sequence[ImageInput]]) -> List[Image.Image]:
    """A list of RGB images from a folder path, a single image, or a sequence of images (see `load_image`)."""
    if isinstance(images, (str, os.PathLike)) and os.path.isdir(os.fspath(images)):
        images = list_images(images)
    elif isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)) or (
        isinstance(images, torch.Tensor) and images.ndim == 3
    ):
        images = [images]
    return [load_image(image) for image in images]


def is_mask_file(path: Union[str, os.PathLike]) -> bool:
    """Whether ``path`` is a mask saved beside an image (its stem ends with `MASK_SUFFIX`)."""
    return os.path.splitext(os.path.basename(os.fspath(path)))[0].endswith(MASK_SUFFIX)


def list_images(directory: Union[str, os.PathLike], include_masks: bool = False) -> List[str]:
    """Image files of ``directory`` (not recursive), sorted by name; mask files (``*_mask.*``) are left out unless
    ``include_masks``."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise EvaluationError(f"{directory!r} is not a folder.")
    files = [
        os.path.join(directory, name)
        for name in sorted(os.listdir(directory))
        if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")
    ]
    if not include_masks:
        files = [f for f in files if not is_mask_file(f)]
    if not files:
        raise EvaluationError(f"Folder {directory!r} has no images ({', '.join(IMAGE_EXTENSIONS)}).")
    return files


def mask_path_for(image_path: Union[str, os.PathLike]) -> str:
    """Where the mask of an image file is saved: beside it, ``name_mask.png``."""
    stem = os.path.splitext(os.fspath(image_path))[0]
    return stem + MASK_SUFFIX + ".png"
