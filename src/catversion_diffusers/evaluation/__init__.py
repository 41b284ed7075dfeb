"""Evaluation of personalized text-to-image models: the CatVersion paper's metrics (section 4.3) and DreamBooth's.

* `clip_text_alignment`: CLIP text alignment (cosine of image and prompt embeddings; CLIPScore optional).
* `masked_clip_image_alignment`: the paper's eq. 6, CLIP_img(M * I, Ms * Is), on concept masks.
* `clip_image_alignment`, `dino_similarity`: plain CLIP-I and DINO (ViT-S/16) as in DreamBooth.
* `overall_score`: the geometric mean of text and image alignment.
* `evaluate_images`: all of them for one concept. Masks: `load_masks` (user masks), `CLIPSegMasker` (computed).
* Prompt sets: `get_prompt_set` (``"catversion"``, ``"dreambooth"``...), `load_prompt_file`.

Models load by Hub name or local path; a missing model raises `EvaluationModelNotFoundError`. See docs/evaluation.md
and ``examples/evaluate_catversion.py``.
"""

from .errors import EvaluationError, EvaluationModelNotFoundError
from .images import IMAGE_EXTENSIONS, MASK_SUFFIX, list_images, load_image, load_images, mask_path_for
from .masks import (
    DEFAULT_CLIPSEG_THRESHOLD,
    DEFAULT_FILL,
    CLIPSegMasker,
    apply_mask,
    compute_masks,
    load_masks,
    mask_area,
    mask_bbox,
    resolve_fill,
    save_mask,
    to_mask_array,
)
from .metrics import (
    CLIP_SCORE_WEIGHT,
    clip_image_alignment,
    clip_score_from_cosine,
    clip_text_alignment,
    cosine_similarity_matrix,
    dino_similarity,
    evaluate_images,
    masked_clip_image_alignment,
    masked_images,
    overall_score,
)
from .models import (
    DEFAULT_CLIP_MODEL,
    DEFAULT_CLIPSEG_MODEL,
    DEFAULT_DINO_MODEL,
    PAPER_CLIP_MODEL_L14,
    CLIPEmbedder,
    DINOEmbedder,
    load_pretrained,
    resolve_device,
)
from .prompts import (
    CATVERSION_EDITING_PROMPTS,
    DREAMBOOTH_LIVE_PROMPTS,
    DREAMBOOTH_OBJECT_PROMPTS,
    PROMPT_SETS,
    PromptTemplate,
    format_prompt,
    get_prompt_set,
    load_prompt_file,
)
from .report import METRIC_NAMES, aggregate, make_grid, plot_tradeoff, write_csv, write_json

__all__ = [
    "EvaluationError",
    "EvaluationModelNotFoundError",
    "IMAGE_EXTENSIONS",
    "MASK_SUFFIX",
    "list_images",
    "load_image",
    "load_images",
    "mask_path_for",
    "DEFAULT_CLIPSEG_THRESHOLD",
    "DEFAULT_FILL",
    "CLIPSegMasker",
    "apply_mask",
    "compute_masks",
    "load_masks",
    "mask_area",
    "mask_bbox",
    "resolve_fill",
    "save_mask",
    "to_mask_array",
    "CLIP_SCORE_WEIGHT",
    "clip_image_alignment",
    "clip_score_from_cosine",
    "clip_text_alignment",
    "cosine_similarity_matrix",
    "dino_similarity",
    "evaluate_images",
    "masked_clip_image_alignment",
    "masked_images",
    "overall_score",
    "DEFAULT_CLIP_MODEL",
    "DEFAULT_CLIPSEG_MODEL",
    "DEFAULT_DINO_MODEL",
    "PAPER_CLIP_MODEL_L14",
    "CLIPEmbedder",
    "DINOEmbedder",
    "load_pretrained",
    "resolve_device",
    "CATVERSION_EDITING_PROMPTS",
    "DREAMBOOTH_LIVE_PROMPTS",
    "DREAMBOOTH_OBJECT_PROMPTS",
    "PROMPT_SETS",
    "PromptTemplate",
    "format_prompt",
    "get_prompt_set",
    "load_prompt_file",
    "METRIC_NAMES",
    "aggregate",
    "make_grid",
    "plot_tradeoff",
    "write_csv",
    "write_json",
]
