"""Training images: finding, checking and converting them, and the prompt templates.

Users bring 3-20 photos of their concept, taken with whatever camera or downloaded from wherever. Everything that can
be turned into a sensible RGB training image is converted (grayscale, palette, RGBA over white, CMYK, 16-bit, EXIF
rotation, huge photos downscaled on decode); what cannot is skipped with one warning that lists every skipped file and
why; if nothing usable is left, a `CatVersionDataError` says what was found.
"""

import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import PIL
from PIL import Image, ImageOps

from ..errors import CatVersionError
from ..utils import get_logger

logger = get_logger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".jfif")

#: PIL's own decompression-bomb limit (it refuses images above twice ``Image.MAX_IMAGE_PIXELS``).
DEFAULT_MAX_IMAGE_PIXELS = 2 * 89_478_485


class CatVersionDataError(CatVersionError, ValueError):
    """The training images cannot be used: missing or empty folder, no readable image, bad templates."""


# ------------------------------------------------------------------------------------------------------ templates
# Captions in the spirit of the textual-inversion templates, with the class word where textual inversion puts its
# placeholder: CatVersion trains on the base class word itself ("a photo of a dog").
OBJECT_TEMPLATES = (
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a photo of a clean {}",
    "a photo of a dirty {}",
    "a dark photo of the {}",
    "a photo of my {}",
    "a photo of the cool {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a cropped photo of a {}",
    "a photo of the {}",
    "a good photo of the {}",
    "a photo of one {}",
    "a close-up photo of the {}",
    "a rendition of the {}",
    "a photo of the clean {}",
    "a rendition of a {}",
    "a photo of a nice {}",
    "a good photo of a {}",
    "a photo of the nice {}",
    "a photo of the small {}",
    "a photo of the weird {}",
    "a photo of the large {}",
    "a photo of a cool {}",
    "a photo of a small {}",
)

STYLE_TEMPLATES = (
    "a painting in the style of {}",
    "a rendering in the style of {}",
    "a cropped painting in the style of {}",
    "the painting in the style of {}",
    "a clean painting in the style of {}",
    "a dirty painting in the style of {}",
    "a dark painting in the style of {}",
    "a picture in the style of {}",
    "a cool painting in the style of {}",
    "a close-up painting in the style of {}",
    "a bright painting in the style of {}",
    "a good painting in the style of {}",
    "a close-up painting in the style of {}",
    "a rendition in the style of {}",
    "a nice painting in the style of {}",
    "a small painting in the style of {}",
    "a weird painting in the style of {}",
    "a large painting in the style of {}",
)


def prompt_templates(learnable_property: str = "object", templates: Optional[Sequence[str]] = None) -> List[str]:
    """The caption templates (each with one ``{}`` for the class word).

    Args:
        learnable_property (`str`, defaults to `"object"`): ``"object"`` or ``"style"``.
        templates (`Sequence[str]`, *optional*): custom templates, replacing the built-in ones.
    """
    if templates:
        templates = list(templates)
        bad = [t for t in templates if not isinstance(t, str) or t.count("{}") != 1]
        if bad:
            raise CatVersionDataError(
                f"Every prompt template needs exactly one '{{}}' where the class word goes; got {bad}."
            )
        return templates
    if learnable_property == "object":
        return list(OBJECT_TEMPLATES)
    if learnable_property == "style":
        return list(STYLE_TEMPLATES)
    raise CatVersionDataError(f"`learnable_property` must be 'object' or 'style', got {learnable_property!r}.")


def training_prompts(class_word: str, learnable_property: str = "object", templates=None) -> List[str]:
    """The fixed set of training captions: every template with the class word filled in."""
    return [t.format(class_word) for t in prompt_templates(learnable_property, templates)]


# ------------------------------------------------------------------------------------------------------ images
@dataclass
class TrainingImage:
    """One usable training image, already RGB (``image``), with where it came from and its original size."""

    image: Image.Image
    source: str
    original_size: Tuple[int, int]  # (height, width) before any downscaling on decode
    digest: str = ""


@dataclass
class TrainingImages:
    """What `load_training_images` found: the usable images and the skipped files with the reason for each."""

    images: List[TrainingImage]
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    def fingerprint(self) -> str:
        """A short hash of the images' contents (order-independent), stored with the trained concept."""
        digest = hashlib.sha256()
        for d in sorted(i.digest for i in self.images):
            digest.update(d.encode())
        return digest.hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.images)


ImageSource = Union[str, os.PathLike, Image.Image, np.ndarray]


def load_training_images(
    images: Union[str, os.PathLike, Sequence[ImageSource]],
    resolution: int = 512,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    num_workers: int = 0,
) -> TrainingImages:
    """Find, decode, check and convert the training images.

    Args:
        images (`str`, `os.PathLike` or a sequence of paths / PIL images / uint8 arrays): a folder (its image files,
            not recursive, hidden files ignored) or the images themselves.
        resolution (`int`, defaults to 512): the training resolution; images whose shorter side is below
            ``max(16, resolution // 8)`` are refused (they would be upscaled beyond recognition), those below
            ``resolution / 2`` are used with a warning.
        max_image_pixels (`int`): images with more pixels than this are refused before being decoded.
        num_workers (`int`, defaults to 0): threads decoding the files (0: in this thread).

    Raises:
        `CatVersionDataError`: the folder is missing or empty, or no image is usable.
    """
    if isinstance(images, (str, os.PathLike)):
        sources, skipped = _list_folder(os.fspath(images))
    else:
        if isinstance(images, (Image.Image, np.ndarray)):
            images = [images]
        sources, skipped = list(images), []
        if not sources:
            raise CatVersionDataError("No training images were given (empty list).")

    def load(source):
        try:
            return _load_one(source, resolution, max_image_pixels), None
        except _Refused as refused:
            return None, (_name(source), str(refused))

    if num_workers and num_workers > 1 and len(sources) > 1:
        with ThreadPoolExecutor(num_workers) as pool:
            results = list(pool.map(load, sources))
    else:
        results = [load(s) for s in sources]

    usable, notes = [], []
    for item, refusal in results:
        if refusal is not None:
            skipped.append(refusal)
        else:
            image, note = item
            usable.append(image)
            if note:
                notes.append(note)
    found = TrainingImages(images=usable, skipped=skipped, notes=notes)
    if skipped:
        listing = "\n".join(f"  - {name}: {reason}" for name, reason in skipped)
        logger.warning(f"Skipped {len(skipped)} of {len(sources)} file(s):\n{listing}")
    for note in notes:
        logger.warning(note)
    if not usable:
        where = f" in {os.fspath(images)!r}" if isinstance(images, (str, os.PathLike)) else ""
        listing = "\n".join(f"  - {name}: {reason}" for name, reason in skipped)
        raise CatVersionDataError(
            f"No usable training image{where}. Every file was skipped:\n{listing}\nCatVersion needs 3-20 photos "
            f"(PNG, JPEG, WebP, BMP, GIF or TIFF) of the concept, each at least {min_side(resolution)} px on its "
            "shorter side."
        )
    if len(usable) < 3:
        logger.warning(
            f"Only {len(usable)} usable training image(s): CatVersion works best with 3-20 photos of the concept "
            "from different viewpoints."
        )
    return found


def min_side(resolution: int) -> int:
    return max(16, int(resolution) // 8)


def _name(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.path.basename(os.fspath(source)) or os.fspath(source)
    return f"<{type(source).__name__}>"


def _list_folder(folder: str) -> Tuple[List[str], List[Tuple[str, str]]]:
    if not folder:
        raise CatVersionDataError("No training data folder given: pass `train_data_dir` (a folder of images).")
    if not os.path.exists(folder):
        raise CatVersionDataError(f"The training data folder {folder!r} does not exist. Check `--train_data_dir`.")
    if not os.path.isdir(folder):
        raise CatVersionDataError(
            f"{folder!r} is a file, not a folder: `--train_data_dir` takes a folder holding the images."
        )
    entries = sorted(e for e in os.listdir(folder) if not e.startswith("."))
    files = [e for e in entries if os.path.isfile(os.path.join(folder, e))]
    folders = [e for e in entries if os.path.isdir(os.path.join(folder, e))]
    if not files:
        more = f" (only sub-folders {folders}; images must be directly in it)" if folders else ""
        raise CatVersionDataError(f"The training data folder {folder!r} is empty{more}. Put 3-20 photos in it.")
    if folders:
        logger.warning(f"Sub-folders of {folder!r} are not searched: {folders}.")
    # Every file is tried (an image may have no or a wrong extension); failures are reported by name.
    return [os.path.join(folder, f) for f in files], []


class _Refused(Exception):
    pass


def _load_one(source: ImageSource, resolution: int, max_image_pixels: int) -> Tuple[TrainingImage, Optional[str]]:
    name = _name(source)
    note = None
    if isinstance(source, np.ndarray):
        image = _array_to_image(source)
        raw = source.tobytes()
    elif isinstance(source, Image.Image):
        image = source
        raw = image.tobytes()
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as error:
            raise _Refused(f"cannot be read ({error.strerror or error})")
        image = _open(path, raw, resolution, max_image_pixels)
    else:
        raise _Refused(f"unsupported type {type(source).__name__} (give paths, PIL images or uint8 arrays)")

    original = (image.height, image.width) if not hasattr(image, "_catversion_original") else image._catversion_original
    if original[0] * original[1] > max_image_pixels:
        raise _Refused(
            f"too large ({original[1]}x{original[0]} = {original[0] * original[1] / 1e6:.0f} megapixels, limit "
            f"{max_image_pixels / 1e6:.0f}); downscale it first"
        )
    try:
        size_before = image.size
        image = ImageOps.exif_transpose(image)
        if image.size != size_before and image.size == size_before[::-1]:
            original = original[::-1]  # rotated by its EXIF orientation
        image = to_rgb(image)
    except _Refused:
        raise
    except Exception as error:  # truncated data often only fails here, when the pixels are decoded
        raise _Refused(f"corrupt or truncated image data ({type(error).__name__}: {error})")
    shorter = min(original)
    if shorter < min_side(resolution):
        raise _Refused(
            f"too small ({original[1]}x{original[0]} px; at least {min_side(resolution)} px on the shorter side for "
            f"resolution {resolution})"
        )
    if shorter < resolution / 2:
        note = (
            f"{name} is {original[1]}x{original[0]} px: it is upscaled {resolution / shorter:.1f}x to the training "
            f"resolution {resolution}, so the concept may be learned blurry. Use larger photos or a lower --resolution."
        )
    ratio = max(original) / max(1, shorter)
    if ratio > 2.5 and note is None:
        note = (
            f"{name} has an aspect ratio of {ratio:.1f}:1; images are resized to a square (or center-cropped with "
            "--center_crop), which distorts or cuts it."
        )
    digest = hashlib.sha256(raw).hexdigest()
    return TrainingImage(image=image, source=name, original_size=original, digest=digest), note


def _open(path: str, raw: bytes, resolution: int, max_image_pixels: int) -> Image.Image:
    import io

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(raw))
        except Image.DecompressionBombError as error:
            raise _Refused(f"too large ({error}); downscale it first")
        except (PIL.UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
            if not raw:
                raise _Refused("empty file")
            ext = os.path.splitext(path)[1].lower()
            kind = "corrupt image" if ext in IMAGE_EXTENSIONS else "not an image"
            raise _Refused(f"{kind} ({type(error).__name__})")
        original = (image.height, image.width)
        if original[0] * original[1] > max_image_pixels:
            raise _Refused(
                f"too large ({original[1]}x{original[0]} = {original[0] * original[1] / 1e6:.0f} megapixels, limit "
                f"{max_image_pixels / 1e6:.0f}); downscale it first"
            )
        try:
            # JPEG: let the decoder downscale huge photos (by 2, 4 or 8) while keeping >= 2x the training resolution.
            if image.format == "JPEG" and min(original) > 4 * resolution:
                image.draft("RGB", (2 * resolution, 2 * resolution))
            image.load()
        except Image.DecompressionBombError as error:
            raise _Refused(f"too large ({error}); downscale it first")
        except Exception as error:
            raise _Refused(f"corrupt or truncated image data ({type(error).__name__}: {error})")
    image._catversion_original = original
    return image


def _array_to_image(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # CHW -> HWC
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.dtype != np.uint8:
        values = array.astype(np.float64)
        top = 1.0 if values.max(initial=0) <= 1.0 else (255.0 if values.max() <= 255 else 65535.0)
        array = np.clip(np.round(values / top * 255.0), 0, 255).astype(np.uint8)
    try:
        return Image.fromarray(array)
    except (TypeError, ValueError) as error:
        raise _Refused(f"array of shape {array.shape} is not an image ({error})")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB: alpha over white, 16-bit and float scaled (not clipped), CMYK converted."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if mode == "F":
            top = 1.0 if values.max(initial=0) <= 1.0 else max(values.max(), 1.0)
        else:
            top = 255.0 if values.max(initial=0) <= 255 else 65535.0
        gray = np.clip(np.round(values / top * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if mode == "P":
        image = image.convert("RGBA")  # palette transparency becomes alpha
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def prepare_view(image: TrainingImage, resolution: int, center_crop: bool, flip: bool) -> Tuple[np.ndarray, Tuple[int, int]]:
    """The training view of an image: float32 CHW array in [-1, 1] and the crop's top-left (in original pixels).

    As textual inversion: with ``center_crop`` the central square is cut out, then the image is resized to
    ``resolution`` x ``resolution`` (bicubic); without it the whole image is resized to the square.
    """
    picture = image.image
    top_left = (0, 0)
    if center_crop:
        w, h = picture.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        picture = picture.crop((left, top, left + side, top + side))
        scale_h = image.original_size[0] / h
        scale_w = image.original_size[1] / w
        top_left = (int(round(top * scale_h)), int(round(left * scale_w)))
    picture = picture.resize((resolution, resolution), resample=Image.BICUBIC, reducing_gap=3.0)
    if flip:
        picture = ImageOps.mirror(picture)
    array = np.asarray(picture, dtype=np.float32) / 127.5 - 1.0
    return array.transpose(2, 0, 1).copy(), top_left


def make_image_grid(images: Sequence[Image.Image], columns: Optional[int] = None) -> Image.Image:
    """Paste images (same size) into one grid image."""
    images = list(images)
    columns = columns or min(4, len(images))
    rows = (len(images) + columns - 1) // columns
    w, h = images[0].size
    grid = Image.new("RGB", (columns * w, rows * h), (255, 255, 255))
    for i, im in enumerate(images):
        grid.paste(im.convert("RGB"), ((i % columns) * w, (i // columns) * h))
    return grid


__all__ = [
    "CatVersionDataError",
    "OBJECT_TEMPLATES",
    "STYLE_TEMPLATES",
    "TrainingImage",
    "TrainingImages",
    "load_training_images",
    "make_image_grid",
    "prepare_view",
    "prompt_templates",
    "to_rgb",
    "training_prompts",
]
