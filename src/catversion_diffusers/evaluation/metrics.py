"""The metrics of CatVersion (section 4.3) and DreamBooth, usable on any images.

* **CLIP text alignment** (CLIP-T): cosine between the CLIP embedding of a generated image and the CLIP embedding of
  its prompt. Optionally CLIPScore (Hessel et al. 2021) = 2.5 * max(cos, 0).
* **Masked CLIP image alignment** (the paper's eq. 6): CLIP_img(M * I, Ms * Is): cosine between the CLIP embeddings
  of the generated image and of a reference image, each with everything outside its concept mask replaced by a
  constant colour (black by default: M * I with images in 0..1), optionally cropped to the mask's box.
* **CLIP image alignment** (CLIP-I, DreamBooth) and **DINO** similarity: the same cosine on the whole images, with
  CLIP, and with the CLS token of DINO ViT-S/16.
* **Overall**: the geometric mean sqrt(text * image) of the text and (masked) image alignment.

Image alignments are computed for every generated x reference pair; per generated image, the mean over references.
"""

import os
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..utils import get_logger
from .errors import EvaluationError
from .images import ImageInput, list_images, load_image
from .masks import DEFAULT_FILL, CLIPSegMasker, Fill, MaskInput, apply_mask, load_masks, to_mask_array
from .models import CLIPEmbedder, DINOEmbedder, ModelInput

logger = get_logger(__name__)

#: CLIPScore's weight w (Hessel et al. 2021): CLIPScore = w * max(cos, 0).
CLIP_SCORE_WEIGHT = 2.5

EMPTY_MASK_MODES = ("blank", "full", "error")

ClipLike = Optional[Union[CLIPEmbedder, ModelInput]]
DinoLike = Optional[Union[DINOEmbedder, ModelInput]]


def _clip(clip: ClipLike) -> CLIPEmbedder:
    if isinstance(clip, CLIPEmbedder):
        return clip
    return CLIPEmbedder() if clip is None else CLIPEmbedder(clip)


def _dino(dino: DinoLike) -> DINOEmbedder:
    if isinstance(dino, DINOEmbedder):
        return dino
    return DINOEmbedder() if dino is None else DINOEmbedder(dino)


def _image_list(images: Any, what: str) -> List[Any]:
    """A list of images; a folder becomes the list of its image files (paths kept, for matching masks by name)."""
    if isinstance(images, (str, os.PathLike)) and os.path.isdir(os.fspath(images)):
        images = list_images(images)
    elif isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)) or (
        isinstance(images, torch.Tensor) and images.ndim == 3
    ):
        images = [images]
    images = list(images)
    if not images:
        raise EvaluationError(f"No {what} images were given.")
    return images


def cosine_similarity_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every row of ``a`` ``[A, D]`` with every row of ``b`` ``[B, D]``: ``[A, B]``."""
    return F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T


def clip_score_from_cosine(cosine: Union[float, torch.Tensor], weight: float = CLIP_SCORE_WEIGHT):
    """CLIPScore = ``weight * max(cosine, 0)`` (Hessel et al. 2021, w = 2.5)."""
    if isinstance(cosine, torch.Tensor):
        return weight * cosine.clamp(min=0)
    return weight * max(float(cosine), 0.0)


def overall_score(text_alignment: Union[float, torch.Tensor], image_alignment: Union[float, torch.Tensor]):
    """The paper's overall score: the geometric mean ``sqrt(text * image)`` (negative inputs count as 0).

    Table 1 applies it to the averaged scores, e.g. CatVersion sqrt(0.2514 * 0.8048) = 0.4498.
    """
    if isinstance(text_alignment, torch.Tensor) or isinstance(image_alignment, torch.Tensor):
        t = torch.as_tensor(text_alignment, dtype=torch.float32).clamp(min=0)
        i = torch.as_tensor(image_alignment, dtype=torch.float32).clamp(min=0)
        return torch.sqrt(t * i)
    return float(np.sqrt(max(float(text_alignment), 0.0) * max(float(image_alignment), 0.0)))


def clip_text_alignment(
    images: Sequence[ImageInput],
    prompts: Union[str, Sequence[str]],
    clip: ClipLike = None,
    clip_score: bool = False,
) -> torch.Tensor:
    """CLIP text alignment of each image with its prompt: ``[N]`` cosines (or CLIPScores).

    Args:
        images (`Sequence`): generated images (PIL, files, arrays, tensors) or a folder.
        prompts (`str` or `Sequence[str]`): one prompt for all images, or one per image.
        clip (`CLIPEmbedder`, `str` or `CLIPModel`, *optional*): defaults to `DEFAULT_CLIP_MODEL`.
        clip_score (`bool`, defaults to False): return CLIPScore = 2.5 * max(cos, 0) instead of the cosine.
    """
    images = _image_list(images, "generated")
    if isinstance(prompts, str):
        prompts = [prompts] * len(images)
    prompts = list(prompts)
    if len(prompts) != len(images):
        raise EvaluationError(f"Got {len(prompts)} prompts for {len(images)} images: give one prompt per image.")
    clip = _clip(clip)
    unique = list(dict.fromkeys(prompts))
    text = clip.embed_texts(unique)
    text = text[[unique.index(p) for p in prompts]]
    cosine = (clip.embed_images(images, desc="CLIP generated") * text).sum(-1)
    return clip_score_from_cosine(cosine) if clip_score else cosine


def clip_image_alignment(
    generated: Sequence[ImageInput], references: Sequence[ImageInput], clip: ClipLike = None
) -> torch.Tensor:
    """Plain CLIP image alignment (CLIP-I): cosine of every generated x reference pair, ``[G, R]``."""
    generated, references = _image_list(generated, "generated"), _image_list(references, "reference")
    clip = _clip(clip)
    return cosine_similarity_matrix(
        clip.embed_images(generated, desc="CLIP generated"), clip.embed_images(references, desc="CLIP references")
    )


def dino_similarity(
    generated: Sequence[ImageInput], references: Sequence[ImageInput], dino: DinoLike = None
) -> torch.Tensor:
    """DINO similarity: cosine of the DINO CLS embeddings of every generated x reference pair, ``[G, R]``."""
    generated, references = _image_list(generated, "generated"), _image_list(references, "reference")
    dino = _dino(dino)
    return cosine_similarity_matrix(
        dino.embed_images(generated, desc="DINO generated"), dino.embed_images(references, desc="DINO references")
    )


def masked_images(
    images: Sequence[ImageInput],
    masks: Sequence[MaskInput],
    fill: Fill = DEFAULT_FILL,
    crop: bool = False,
    image_mean: Optional[Sequence[float]] = None,
    empty_mask: str = "blank",
) -> List[Image.Image]:
    """``M * I`` for each image and mask (see `apply_mask`).

    Args:
        empty_mask (`str`, defaults to ``"blank"``): what an empty mask (no concept found) gives: ``"blank"`` the
            literal M * I (an image of the fill colour only), ``"full"`` the whole unmasked image, ``"error"`` raise.
    """
    images, masks = list(images), list(masks)
    if len(images) != len(masks):
        raise EvaluationError(f"Got {len(masks)} masks for {len(images)} images: give exactly one mask per image.")
    if empty_mask not in EMPTY_MASK_MODES:
        raise EvaluationError(f"empty_mask must be one of {EMPTY_MASK_MODES}, got {empty_mask!r}.")
    out = []
    for index, (image, mask) in enumerate(zip(images, masks)):
        pil = load_image(image)
        binary = to_mask_array(mask, size=pil.size)
        if not binary.any():
            if empty_mask == "error":
                raise EvaluationError(f"The mask of image {index} is empty (no concept found).")
            if empty_mask == "full":
                out.append(pil)
                continue
        out.append(apply_mask(pil, binary, fill=fill, crop=crop, image_mean=image_mean))
    return out


def _resolve_masks(
    masks: Optional[Union[str, Sequence[MaskInput]]],
    images: List[Any],
    masker: Optional[CLIPSegMasker],
    mask_prompt: Optional[Union[str, Sequence[str]]],
    what: str,
) -> List[np.ndarray]:
    if masks is None:
        if masker is None or mask_prompt is None:
            raise EvaluationError(
                f"No {what} masks: pass them, or pass `masker=` (a CLIPSegMasker) and `mask_prompt=` (the class word)."
            )
        return masker(images, mask_prompt)
    if isinstance(masks, (str, os.PathLike)):
        return load_masks(masks, images)
    masks = list(masks)
    if len(masks) != len(images):
        raise EvaluationError(f"Got {len(masks)} {what} masks for {len(images)} {what} images.")
    return [to_mask_array(mask, size=load_image(image).size) for mask, image in zip(masks, images)]


def masked_clip_image_alignment(
    generated: Sequence[ImageInput],
    references: Sequence[ImageInput],
    generated_masks: Optional[Union[str, Sequence[MaskInput]]] = None,
    reference_masks: Optional[Union[str, Sequence[MaskInput]]] = None,
    clip: ClipLike = None,
    fill: Fill = DEFAULT_FILL,
    crop: bool = False,
    empty_mask: str = "blank",
    masker: Optional[CLIPSegMasker] = None,
    mask_prompt: Optional[Union[str, Sequence[str]]] = None,
) -> torch.Tensor:
    """The paper's masked CLIP image alignment (eq. 6), CLIP_img(M * I, Ms * Is), for every generated x reference
    pair: ``[G, R]``. Symmetric: swapping the generated and reference sides (with their masks) transposes it.

    Args:
        generated (`Sequence`): generated images I.
        references (`Sequence`): reference images Is.
        generated_masks (`Sequence` or folder, *optional*): masks M (one per generated image; any size).
        reference_masks (`Sequence` or folder, *optional*): masks Ms.
        clip (`CLIPEmbedder`, `str` or `CLIPModel`, *optional*): defaults to `DEFAULT_CLIP_MODEL`.
        fill (`str` or RGB, defaults to ``"black"``): colour outside the masks (``"black"``, ``"white"``,
            ``"mean"`` = the CLIP processor's mean grey, or a triple).
        crop (`bool`, defaults to False): crop each masked image to its mask's box, padded to a square.
        empty_mask (`str`, defaults to ``"blank"``): see `masked_images`.
        masker (`CLIPSegMasker`, *optional*): computes the masks not given, prompted with ``mask_prompt``.
        mask_prompt (`str` or `Sequence[str]`, *optional*): e.g. the class word.
    """
    generated, references = _image_list(generated, "generated"), _image_list(references, "reference")
    clip = _clip(clip)
    gen_masks = _resolve_masks(generated_masks, generated, masker, mask_prompt, "generated")
    ref_masks = _resolve_masks(reference_masks, references, masker, mask_prompt, "reference")
    options = dict(fill=fill, crop=crop, image_mean=clip.image_mean, empty_mask=empty_mask)
    gen = clip.embed_images(masked_images(generated, gen_masks, **options), desc="CLIP masked generated")
    ref = clip.embed_images(masked_images(references, ref_masks, **options), desc="CLIP masked references")
    return cosine_similarity_matrix(gen, ref)


def evaluate_images(
    generated: Sequence[ImageInput],
    prompts: Union[str, Sequence[str]],
    references: Sequence[ImageInput],
    generated_masks: Optional[Union[str, Sequence[MaskInput]]] = None,
    reference_masks: Optional[Union[str, Sequence[MaskInput]]] = None,
    clip: ClipLike = None,
    dino: Optional[Union[DINOEmbedder, ModelInput]] = None,
    masked: bool = True,
    fill: Fill = DEFAULT_FILL,
    crop: bool = False,
    empty_mask: str = "blank",
    clip_score: bool = False,
    masker: Optional[CLIPSegMasker] = None,
    mask_prompt: Optional[Union[str, Sequence[str]]] = None,
) -> Dict[str, Any]:
    """All metrics for one concept: per generated image and averaged.

    Args:
        generated, prompts, references: generated images, their prompts (one, or one per image), reference images.
        generated_masks, reference_masks, masker, mask_prompt, fill, crop, empty_mask: see
            `masked_clip_image_alignment`; only used when ``masked``.
        clip (`CLIPEmbedder`, `str` or `CLIPModel`, *optional*): defaults to `DEFAULT_CLIP_MODEL`.
        dino (`DINOEmbedder`, `str` or model, *optional*): DINO similarity is computed only when given.
        masked (`bool`, defaults to True): compute the masked CLIP image alignment (needs masks or a masker).
        clip_score (`bool`, defaults to False): also report CLIPScore per image.

    Returns:
        `dict`: ``"per_image"``: ``{metric: [G] tensor}`` with ``clip_t``, ``clip_i``, ``dino``, ``clip_i_masked``
        (image metrics averaged over references), ``clip_score`` and ``overall`` (per image geometric mean of
        ``clip_t`` and the image alignment); ``"pairwise"``: ``{metric: [G, R] tensor}``; ``"mean"``: ``{metric:
        float}`` with ``overall`` = sqrt(mean text * mean image alignment) as in Table 1; ``"image_alignment"``:
        the name of the image metric used for the overall (``clip_i_masked`` when ``masked``, else ``clip_i``);
        ``"generated_masks"`` / ``"reference_masks"``: the boolean masks used (when ``masked``).
    """
    generated, references = _image_list(generated, "generated"), _image_list(references, "reference")
    clip = _clip(clip)
    result: Dict[str, Any] = {}
    if masked:  # before reading the images: a mask folder is matched by the images' file names
        gen_masks = _resolve_masks(generated_masks, generated, masker, mask_prompt, "generated")
        ref_masks = _resolve_masks(reference_masks, references, masker, mask_prompt, "reference")
    generated = [load_image(image) for image in generated]
    references = [load_image(image) for image in references]
    per_image: Dict[str, torch.Tensor] = {}
    pairwise: Dict[str, torch.Tensor] = {}
    per_image["clip_t"] = clip_text_alignment(generated, prompts, clip=clip)
    if clip_score:
        per_image["clip_score"] = clip_score_from_cosine(per_image["clip_t"])
    pairwise["clip_i"] = clip_image_alignment(generated, references, clip=clip)
    if masked:
        pairwise["clip_i_masked"] = masked_clip_image_alignment(
            generated, references, gen_masks, ref_masks, clip=clip, fill=fill, crop=crop, empty_mask=empty_mask
        )
        result["generated_masks"], result["reference_masks"] = gen_masks, ref_masks
    if dino is not None:
        pairwise["dino"] = dino_similarity(generated, references, dino=dino)
    for name, matrix in pairwise.items():
        per_image[name] = matrix.mean(dim=1)
    image_metric = "clip_i_masked" if masked else "clip_i"
    per_image["overall"] = overall_score(per_image["clip_t"], per_image[image_metric])
    mean = {name: float(values.mean()) for name, values in per_image.items() if name != "overall"}
    mean["overall"] = overall_score(mean["clip_t"], mean[image_metric])
    result.update(per_image=per_image, pairwise=pairwise, mean=mean, image_alignment=image_metric)
    return result
