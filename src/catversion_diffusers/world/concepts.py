"""Personal concepts of the offline world: patterned objects the pretrained world model never saw.

Each concept is a two-colour pattern painted on a shape the world knows (its *class word*). The world model's
pretraining data has plain and patterned objects, but never a concept's combination of shape, pattern kind and
colours (:data:`~catversion_diffusers.world.generator.HELD_OUT_PATTERNS`): it knows "a circle", stripes and the
colours green and yellow, never *this* green-and-yellow striped circle -- the situation of Stable Diffusion facing
a user's own teapot. Every concept ships 5 deterministic reference images with exact masks
(:meth:`PersonalConcept.references`), and :func:`concept_match` tells from pixels whether a generated image shows
the concept.
"""

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import generator as G


@dataclass(frozen=True)
class PersonalConcept:
    name: str
    class_word: str  # the shape, and the word CatVersion trains with ("a circle")
    pattern: Tuple  # see generator.Scene.pattern
    description: str
    reference_backgrounds: Tuple[str, ...]
    seed: int

    @property
    def colours(self) -> Tuple[str, str]:
        return self.pattern[1], self.pattern[2]

    @property
    def mirror_invariant(self) -> bool:
        """Whether a horizontal flip keeps the concept (stripes, checks) -- not for left/right halves, so training on
        such a concept must not use flipped views."""
        return self.pattern[0] != "halves"

    @property
    def prompt(self) -> str:
        """Training prompt in the CatVersion style: the class word, no pseudo-word."""
        return f"a {self.class_word}"

    def scene(self, background: str, cx: float, cy: float, size: float) -> G.Scene:
        return G.Scene(self.class_word, self.pattern[1], background, cx, cy, size, self.pattern)

    def render(self, background: str = "white", cx: float = 16.0, cy: float = 16.0, size: float = 10.0):
        """(image uint8 (H, W, 3), exact mask bool (H, W)) of the concept."""
        return G.render(self.scene(background, cx, cy, size))

    def reference_scenes(self, n: Optional[int] = None) -> List[G.Scene]:
        rng = np.random.default_rng(self.seed)
        scenes = []
        for bg in self.reference_backgrounds[: n or len(self.reference_backgrounds)]:
            size = float(rng.uniform(8.0, G.MAX_HALF_SIZE))  # references are large enough to show the pattern
            lo, hi = size + G.MARGIN, G.IMAGE_SIZE - size - G.MARGIN
            scenes.append(self.scene(bg, float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)), size))
        return scenes

    def references(self, n: Optional[int] = None) -> List[Tuple[np.ndarray, np.ndarray]]:
        """The concept's reference images: list of (image uint8 (32, 32, 3), exact mask bool (32, 32))."""
        return [G.render(s) for s in self.reference_scenes(n)]

    def reference_images(self, n: Optional[int] = None):
        """References as PIL images (what a personalization trainer consumes)."""
        from PIL import Image

        return [Image.fromarray(img) for img, _ in self.references(n)]

    def reference_masks(self, n: Optional[int] = None) -> List[np.ndarray]:
        return [mask for _, mask in self.references(n)]

    def export(self, directory: str, upscale: int = 1) -> List[str]:
        """Write ``{i}.png`` and ``{i}_mask.png`` for every reference to ``directory``; returns the image paths."""
        from PIL import Image

        os.makedirs(directory, exist_ok=True)
        paths = []
        for i, (img, mask) in enumerate(self.references()):
            im, mk = Image.fromarray(img), Image.fromarray(mask.astype(np.uint8) * 255)
            if upscale > 1:
                size = (img.shape[1] * upscale, img.shape[0] * upscale)
                im, mk = im.resize(size, Image.NEAREST), mk.resize(size, Image.NEAREST)
            path = os.path.join(directory, f"{i}.png")
            im.save(path)
            mk.save(os.path.join(directory, f"{i}_mask.png"))
            paths.append(path)
        return paths


CONCEPTS: Dict[str, PersonalConcept] = {
    c.name: c
    for c in (
        PersonalConcept(
            "striped_circle", "circle", ("stripes", "green", "yellow", 4.0),
            "a circle with horizontal green and yellow stripes (4 px)",
            ("white", "black", "gray", "blue", "white"), seed=101,
        ),
        PersonalConcept(
            "checkered_square", "square", ("checker", "red", "yellow", 6.0),
            "a square with a red and yellow 6 px checkerboard",
            ("black", "gray", "blue", "black", "gray"), seed=102,
        ),
        PersonalConcept(
            "two_tone_triangle", "triangle", ("halves", "green", "red"),
            "a triangle whose left half is green and right half red",
            ("white", "black", "gray", "blue", "black"), seed=103,
        ),
    )
}


def get_concept(name: str) -> PersonalConcept:
    try:
        return CONCEPTS[name]
    except KeyError:
        raise KeyError(f"unknown concept {name!r}; available: {sorted(CONCEPTS)}") from None


# ------------------------------------------------------------------------------------------------ pixel checks

#: A pixel counts as a pattern colour when it is within this RGB distance of it.
COLOUR_TOLERANCE = 90.0


def _labels(arr: np.ndarray, mask: np.ndarray, colours: Sequence[str]) -> np.ndarray:
    """Per-pixel label: 0 / 1 for the nearest of the two pattern colours (if within tolerance), -1 otherwise."""
    pal = np.array([G.ALL_COLOURS[c] for c in colours], dtype=np.float64)
    d = np.linalg.norm(arr[..., None, :] - pal, axis=-1)  # (H, W, 2)
    lab = d.argmin(-1)
    lab[(d.min(-1) > COLOUR_TOLERANCE) | ~mask] = -1
    return lab


def _disagreement(lab: np.ndarray, axis: int) -> float:
    a, b = (lab[1:], lab[:-1]) if axis == 0 else (lab[:, 1:], lab[:, :-1])
    both = (a >= 0) & (b >= 0)
    return float((a[both] != b[both]).mean()) if both.any() else 0.0


def concept_match(image, concept) -> Dict[str, object]:
    """Does a (generated) image show ``concept``? Reads pixels only.

    Returns {"shape_ok", "fractions" (share of object pixels near each pattern colour), "colours_ok" (each >= 15 %),
    "structure_ok" (the pattern's layout: stripes change along rows not columns, checker along both, halves split
    left/right), "match" (all three), "score" (mean of the three, in [0, 1]), "mask"}."""
    concept = get_concept(concept) if isinstance(concept, str) else concept
    arr = G.to_uint8_array(image).astype(np.float64)
    bg = G._border_colour(arr)
    far = np.linalg.norm(arr - bg, axis=-1) > G.OBJECT_THRESHOLD
    # Pattern colours may be close to the background (white checks on white): take the object as the largest
    # region that is either far from the background or one of the pattern colours, inside the image border.
    lab_all = _labels(arr, np.ones(far.shape, dtype=bool), concept.colours)
    border = np.zeros(far.shape, dtype=bool)
    border[1:-1, 1:-1] = True
    mask = G.largest_component(far | ((lab_all >= 0) & border & (np.linalg.norm(arr - bg, axis=-1) > 25)))
    out: Dict[str, object] = {"shape_ok": False, "fractions": (0.0, 0.0), "colours_ok": False, "structure_ok": False,
                              "match": False, "score": 0.0, "mask": mask}
    if mask.sum() < G.MIN_OBJECT_PIXELS:
        return out
    scores = G.shape_scores(mask)
    out["shape_ok"] = max(scores, key=scores.get) == concept.class_word
    lab = _labels(arr, mask, concept.colours)
    n = float(mask.sum())
    fractions = (float((lab == 0).sum() / n), float((lab == 1).sum() / n))
    out["fractions"] = fractions
    out["colours_ok"] = min(fractions) >= 0.15
    kind = concept.pattern[0]
    vert, horiz = _disagreement(lab, 0), _disagreement(lab, 1)
    if kind == "stripes":
        structure = vert >= 0.1 and horiz <= 0.5 * vert
    elif kind == "checker":
        structure = vert >= 0.1 and horiz >= 0.1
    else:  # halves
        xs = np.nonzero(mask)[1]
        cx = (xs.min() + xs.max() + 1) / 2.0
        cols = np.arange(mask.shape[1])[None, :].repeat(mask.shape[0], 0)
        left, right = lab[(cols + 0.5 < cx) & (lab >= 0)], lab[(cols + 0.5 >= cx) & (lab >= 0)]
        structure = len(left) > 0 and len(right) > 0 and (left == 0).mean() >= 0.7 and (right == 1).mean() >= 0.7
    out["structure_ok"] = bool(structure)
    out["match"] = bool(out["shape_ok"] and out["colours_ok"] and out["structure_ok"])
    out["score"] = float(np.mean([out["shape_ok"], min(1.0, min(fractions) / 0.3), out["structure_ok"]]))
    return out
