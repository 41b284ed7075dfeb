"""Sharing on the Hugging Face Hub: a model card for a concept, and the upload of its residual file."""

import os
import shutil
import tempfile
from typing import List, Optional, Sequence

from .format import DEFAULT_WEIGHT_NAME, CatVersionState, save_state
from .utils import get_logger

logger = get_logger(__name__)


def catversion_model_card(
    state: CatVersionState,
    repo_id: Optional[str] = None,
    example_prompts: Optional[Sequence[str]] = None,
    images: Optional[Sequence[str]] = None,
) -> str:
    """A README.md (YAML front matter + text) for a concept: base model, class word, prompts, how to load it.

    Args:
        state (`CatVersionState`): the concept.
        repo_id (`str`, *optional*): where it will live, for the loading snippet.
        example_prompts (`Sequence[str]`, *optional*): prompts to show; defaults to a few built on the class word.
        images (`Sequence[str]`, *optional*): file names (relative to the repo root) of images to show.
    """
    base_model = state.metadata.get("base_model") or "stable-diffusion-v1-5/stable-diffusion-v1-5"
    class_word = state.metadata.get("class_word") or "object"
    prompts = list(example_prompts or [f"a photo of a {class_word}", f"a {class_word} in the snow", f"a red {class_word}"])
    layers = {name: sorted(layers) for name, layers in state.residuals.items()}
    front = [
        "---",
        f"base_model: {base_model}",
        "library_name: diffusers",
        "license: openrail++",
        "tags:",
        "- text-to-image",
        "- diffusers",
        "- catversion",
        "- personalization",
        "inference: false",
        "---",
        "",
    ]
    body = [
        f"# CatVersion concept: {state.metadata.get('adapter_name') or repo_id or class_word}",
        "",
        f"Residual Key/Value embeddings learned with [CatVersion](https://arxiv.org/abs/2311.14631) on `{base_model}`. "
        f"Base class word: **{class_word}**. Use the class word in prompts; the residuals turn it into this concept.",
        "",
        f"- tokens per layer: {state.num_tokens}; layers: {layers}; logit bias: {state.logit_bias}",
        f"- file: `{DEFAULT_WEIGHT_NAME}` (format v1, safetensors)",
        "",
        "## Use",
        "",
        "```python",
        "import torch",
        "import catversion_diffusers  # adds load_catversion() to diffusers pipelines",
        "from diffusers import DiffusionPipeline",
        "",
        f'pipe = DiffusionPipeline.from_pretrained("{base_model}", torch_dtype=torch.float16).to("cuda")',
        f'pipe.load_catversion("{repo_id or "path/to/folder"}")',
        f'image = pipe("{prompts[0]}", num_inference_steps=50, guidance_scale=10).images[0]',
        "```",
        "",
        "## Example prompts",
        "",
    ]
    body += [f"- {prompt}" for prompt in prompts]
    if images:
        body += ["", "## Samples", ""] + [f"![sample]({image})" for image in images]
    return "\n".join(front + body) + "\n"


def push_catversion_state_to_hub(
    state: CatVersionState,
    repo_id: str,
    token: Optional[str] = None,
    private: Optional[bool] = None,
    commit_message: str = "Upload CatVersion residuals",
    example_prompts: Optional[Sequence[str]] = None,
    images: Optional[List[str]] = None,
) -> str:
    """Create ``repo_id`` if needed and upload the residual file, a model card and optional images.

    Returns:
        `str`: the URL of the commit.
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as folder:
        save_state(state, os.path.join(folder, DEFAULT_WEIGHT_NAME))
        names = []
        for image in images or []:
            shutil.copy(image, os.path.join(folder, os.path.basename(image)))
            names.append(os.path.basename(image))
        with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as f:
            f.write(catversion_model_card(state, repo_id, example_prompts, names))
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message)
    logger.info(f"Pushed CatVersion concept to https://huggingface.co/{repo_id}")
    return str(getattr(commit, "commit_url", commit))
