"""Prompt sets for the evaluation: the paper's four editing dimensions, DreamBooth's 25 prompts, user files.

Templates hold ``{}`` (or ``{class_word}``) where the concept goes. CatVersion prompts use the plain **class word**
("a dog in the snow"): the residual embeddings turn the class into the concept.
"""

import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Union

from ..utils import get_logger
from .errors import EvaluationError

logger = get_logger(__name__)


@dataclass(frozen=True)
class PromptTemplate:
    """One prompt template and the editing dimension (category) it tests.

    Args:
        template (`str`): text with ``{}`` or ``{class_word}`` where the class word goes.
        category (`str`, defaults to ``"custom"``): e.g. ``"scene"``, ``"attribute"``.
    """

    template: str
    category: str = "custom"

    def format(self, class_word: str) -> str:
        return format_prompt(self.template, class_word)


# DreamBooth (Ruiz et al. 2023, google/dreambooth dataset, CC-BY 4.0): 25 prompts per subject type. The first ten are
# shared by objects and live subjects. DreamBooth's own grouping: recontextualization, accessorization (live
# subjects), property modification.
_DREAMBOOTH_SHARED = [
    "a {} in the jungle",
    "a {} in the snow",
    "a {} on the beach",
    "a {} on a cobblestone street",
    "a {} on top of pink fabric",
    "a {} on top of a wooden floor",
    "a {} with a city in the background",
    "a {} with a mountain in the background",
    "a {} with a blue house in the background",
    "a {} on top of a purple rug in a forest",
]
_DREAMBOOTH_OBJECT_ONLY = [
    "a {} with a wheat field in the background",
    "a {} with a tree and autumn leaves in the background",
    "a {} with the Eiffel Tower in the background",
    "a {} floating on top of water",
    "a {} floating in an ocean of milk",
    "a {} on top of green grass with sunflowers around it",
    "a {} on top of a mirror",
    "a {} on top of the sidewalk in a crowded street",
    "a {} on top of a dirt road",
    "a {} on top of a white rug",
]
_DREAMBOOTH_LIVE_ONLY = [
    "a {} wearing a red hat",
    "a {} wearing a santa hat",
    "a {} wearing a rainbow scarf",
    "a {} wearing a black top hat and a monocle",
    "a {} in a chef outfit",
    "a {} in a firefighter outfit",
    "a {} in a police outfit",
    "a {} wearing pink glasses",
    "a {} wearing a yellow shirt",
    "a {} in a purple wizard outfit",
]
_DREAMBOOTH_PROPERTY = ["a red {}", "a purple {}", "a shiny {}", "a wet {}", "a cube shaped {}"]

#: DreamBooth's 25 prompts for objects (in the dataset's order).
DREAMBOOTH_OBJECT_PROMPTS: List[PromptTemplate] = [
    PromptTemplate(t, "recontextualization") for t in _DREAMBOOTH_SHARED + _DREAMBOOTH_OBJECT_ONLY
] + [PromptTemplate(t, "property_modification") for t in _DREAMBOOTH_PROPERTY]
#: DreamBooth's 25 prompts for live subjects (pets).
DREAMBOOTH_LIVE_PROMPTS: List[PromptTemplate] = (
    [PromptTemplate(t, "recontextualization") for t in _DREAMBOOTH_SHARED]
    + [PromptTemplate(t, "accessorization") for t in _DREAMBOOTH_LIVE_ONLY]
    + [PromptTemplate(t, "property_modification") for t in _DREAMBOOTH_PROPERTY]
)
#: Class words for which ``"dreambooth"`` picks the live-subject prompts (DreamBooth: cats and dogs).
LIVE_CLASS_WORDS = frozenset({"dog", "cat", "puppy", "kitten", "pet"})

# The paper's four editing dimensions (section 5.2). The paper does not publish its prompts; these are ours, five per
# dimension, written to be sensible for objects and animals alike.
CATVERSION_EDITING_PROMPTS: List[PromptTemplate] = [
    PromptTemplate("a red {}", "attribute"),
    PromptTemplate("a shiny {}", "attribute"),
    PromptTemplate("a {} made of gold", "attribute"),
    PromptTemplate("a cube shaped {}", "attribute"),
    PromptTemplate("a watercolor painting of a {}", "attribute"),
    PromptTemplate("a {} in the snow", "scene"),
    PromptTemplate("a {} on the beach", "scene"),
    PromptTemplate("a {} in the jungle", "scene"),
    PromptTemplate("a {} on a cobblestone street", "scene"),
    PromptTemplate("a {} with the Eiffel Tower in the background", "scene"),
    PromptTemplate("a {} floating in a swimming pool", "action"),
    PromptTemplate("a {} flying through the air", "action"),
    PromptTemplate("a {} falling into a river", "action"),
    PromptTemplate("a {} spinning on a table", "action"),
    PromptTemplate("a {} sinking in the sea", "action"),
    PromptTemplate("a {} wearing a santa hat", "concept_addition"),
    PromptTemplate("a {} next to a cup of coffee", "concept_addition"),
    PromptTemplate("a {} and a red ball", "concept_addition"),
    PromptTemplate("a {} with a bouquet of flowers", "concept_addition"),
    PromptTemplate("a {} beside a teddy bear", "concept_addition"),
]

#: Built-in prompt sets by name. ``"dreambooth"`` picks the object or live list from the class word.
PROMPT_SETS: Dict[str, List[PromptTemplate]] = {
    "catversion": CATVERSION_EDITING_PROMPTS,
    "dreambooth_object": DREAMBOOTH_OBJECT_PROMPTS,
    "dreambooth_live": DREAMBOOTH_LIVE_PROMPTS,
}


def format_prompt(template: str, class_word: str) -> str:
    """``template`` with ``{class_word}`` and ``{}`` replaced by ``class_word`` (other braces are left alone)."""
    return template.replace("{class_word}", class_word).replace("{}", class_word)


def _check_template(template: str, source: str) -> None:
    if "{}" not in template and "{class_word}" not in template:
        logger.warning(f"Prompt {template!r} from {source} has no '{{}}' placeholder: it is used as it is.")


def load_prompt_file(path: Union[str, os.PathLike]) -> List[PromptTemplate]:
    """Prompt templates from a file.

    * ``.json``: a list of templates, or ``{category: [templates]}``.
    * anything else: text, one template per line; empty lines and lines starting with ``#`` are skipped; a line
      ``[category]`` sets the category of the lines after it (default ``"custom"``).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise EvaluationError(f"Prompt file {path!r} does not exist.")
    prompts: List[PromptTemplate] = []
    if path.lower().endswith(".json"):
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if isinstance(data, list):
            prompts = [PromptTemplate(str(t)) for t in data]
        elif isinstance(data, dict):
            prompts = [PromptTemplate(str(t), str(c)) for c, ts in data.items() for t in ts]
        else:
            raise EvaluationError(f"{path!r} must hold a JSON list of prompts or an object {{category: [prompts]}}.")
    else:
        category = "custom"
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                if line.startswith("[") and line.endswith("]"):
                    category = line[1:-1].strip() or "custom"
                    continue
                prompts.append(PromptTemplate(line, category))
    if not prompts:
        raise EvaluationError(f"Prompt file {path!r} has no prompts.")
    for prompt in prompts:
        _check_template(prompt.template, repr(path))
    return prompts


def get_prompt_set(
    name_or_path: Union[str, os.PathLike, Sequence[Union[str, PromptTemplate]]], class_word: Optional[str] = None
) -> List[PromptTemplate]:
    """Prompt templates by name (``"catversion"``, ``"dreambooth"``, ``"dreambooth_object"``,
    ``"dreambooth_live"``), from a file (see `load_prompt_file`), or from a list of strings / `PromptTemplate`.

    Args:
        name_or_path (`str`, `os.PathLike` or `Sequence`): the set.
        class_word (`str`, *optional*): for ``"dreambooth"``: live-subject prompts for cats and dogs
            (`LIVE_CLASS_WORDS`), object prompts otherwise.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        prompts = [p if isinstance(p, PromptTemplate) else PromptTemplate(str(p)) for p in name_or_path]
        if not prompts:
            raise EvaluationError("The prompt list is empty.")
        return prompts
    name = os.fspath(name_or_path)
    key = name.lower()
    if key == "dreambooth":
        live = class_word is not None and class_word.strip().lower() in LIVE_CLASS_WORDS
        return list(DREAMBOOTH_LIVE_PROMPTS if live else DREAMBOOTH_OBJECT_PROMPTS)
    if key in PROMPT_SETS:
        return list(PROMPT_SETS[key])
    if os.path.isfile(name):
        return load_prompt_file(name)
    raise EvaluationError(
        f"Unknown prompt set {name!r}: use one of {sorted(PROMPT_SETS) + ['dreambooth']} or the path of a prompt file."
    )
