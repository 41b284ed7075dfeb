"""Deterministic procedural image world: flat-coloured shapes on plain backgrounds, with captions and exact masks.

Every image is ``IMAGE_SIZE`` x ``IMAGE_SIZE`` RGB (uint8). A :class:`Scene` fully describes one image (shape, colour,
background, centre, half-size, optional pattern); :func:`render` draws it without anti-aliasing, so the object's mask
is exact (the renderer knows every pixel it paints). :func:`sample_scene` draws a random scene from a seeded
``numpy.random.Generator``; :func:`make_example` maps an integer seed to one (image, mask, caption, scene).

:func:`analyze_image` reads attributes back from pixels alone (background from the border, the object as the largest
connected region that differs from it, its colour as the nearest palette colour of its median, its shape by template
IoU inside its bounding box). It is exact on clean renders and tolerant of the blur and noise of generated images.
"""

from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

IMAGE_SIZE = 32

#: Object colours (RGB, 0-255). Chosen far apart and far from every background colour.
COLOURS: Dict[str, Tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 90, 220),
    "yellow": (240, 210, 40),
    "purple": (160, 40, 200),
}
#: Plain background colours. "blue" is shared with the object palette (a blue object is never on blue).
BACKGROUNDS: Dict[str, Tuple[int, int, int]] = {
    "black": (20, 20, 20),
    "white": (240, 240, 240),
    "gray": (128, 128, 128),
    "blue": (40, 90, 220),
}
SHAPES: Tuple[str, ...] = ("circle", "square", "triangle", "star")

#: Half-size range (pixels) of the object's bounding box, and the margin kept to the image border.
MIN_HALF_SIZE, MAX_HALF_SIZE, MARGIN = 6.0, 11.0, 1.0

#: Extra colours used only by patterned personal concepts (never by the pretraining distribution's objects).
PATTERN_COLOURS: Dict[str, Tuple[int, int, int]] = {
    "orange": (245, 140, 20),
    "cyan": (40, 210, 220),
    "white": (240, 240, 240),
}
ALL_COLOURS: Dict[str, Tuple[int, int, int]] = {**COLOURS, **PATTERN_COLOURS}

#: Words the world's tokenizer knows as single tokens (shapes, colours, caption glue, concept/edit words).
WORLD_WORDS: Tuple[str, ...] = tuple(
    dict.fromkeys(
        "a an the photo picture image of on in with and background".split()
        + list(SHAPES)
        + list(COLOURS)
        + list(BACKGROUNDS)
        + list(PATTERN_COLOURS)
        + "striped stripes stripe checkered checker checkers dotted dots two tone half halves pattern patterned "
        "sks big small large tiny left right top bottom center corner shaped shiny wet".split()
    )
)


def write_world_tokenizer_files(directory: str, words=WORLD_WORDS) -> str:
    """Write ``vocab.json`` / ``merges.txt`` of a CLIP BPE tokenizer in which every word of ``words`` is one token.

    The merges are learnt by running byte-pair-encoding training on ``words`` to completion (most frequent pair
    first, ties broken lexicographically), so applying them by rank, as ``CLIPTokenizer`` does, rebuilds each word
    exactly, even when words share substrings ("an" / "triangle"). Every byte (with and without ``</w>``) is in the
    vocabulary, so any text still tokenizes."""
    import json
    import os
    from collections import Counter

    from ..testing import _bytes_to_unicode

    os.makedirs(directory, exist_ok=True)
    byte_map = _bytes_to_unicode()
    base = list(byte_map.values())
    vocab: List[str] = base + [c + "</w>" for c in base]
    seen = set(vocab)
    segs = []
    for word in dict.fromkeys(w.lower() for w in words):
        chars = [byte_map[b] for b in word.encode("utf-8")]
        segs.append(chars[:-1] + [chars[-1] + "</w>"])
    merges: List[str] = []
    while True:
        pairs = Counter(p for seg in segs for p in zip(seg, seg[1:]))
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(f"{best[0]} {best[1]}")
        merged = best[0] + best[1]
        if merged not in seen:
            vocab.append(merged)
            seen.add(merged)
        new_segs = []
        for seg in segs:
            out, i = [], 0
            while i < len(seg):
                if i + 1 < len(seg) and (seg[i], seg[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(seg[i])
                    i += 1
            new_segs.append(out)
        segs = new_segs
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    with open(os.path.join(directory, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({token: i for i, token in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(directory, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    return directory


def world_tokenizer(directory: str, words=None, model_max_length: int = 77):
    """A real ``CLIPTokenizer`` over the world's vocabulary (plus ``words``), files written to ``directory``."""
    import os

    from transformers import CLIPTokenizer

    from ..testing import DEFAULT_WORDS

    all_words = list(dict.fromkeys(list(WORLD_WORDS) + list(DEFAULT_WORDS) + list(words or [])))
    write_world_tokenizer_files(directory, all_words)
    return CLIPTokenizer(os.path.join(directory, "vocab.json"), os.path.join(directory, "merges.txt"),
                         model_max_length=model_max_length)


@dataclass(frozen=True)
class Scene:
    """One image: ``shape`` of ``colour`` on ``background``, bounding box centred at (cx, cy) with half-size ``size``.

    ``pattern`` (optional) paints the object with a two-colour pattern instead of ``colour`` (see
    :mod:`catversion_diffusers.world.concepts`): ``("stripes", c1, c2, period)``, ``("checker", c1, c2, period)`` or
    ``("halves", c1, c2)``. Colours are names from :data:`ALL_COLOURS`.
    """

    shape: str
    colour: str
    background: str
    cx: float
    cy: float
    size: float
    pattern: Optional[Tuple] = field(default=None)

    def caption(self, style: str = "full") -> str:
        return caption_for(self.shape, self.colour, self.background, style, pattern=self.pattern)


#: Caption words for each pattern kind ("a green and yellow striped circle").
PATTERN_WORDS: Dict[str, str] = {"stripes": "striped", "checker": "checkered", "halves": "two tone"}
PATTERN_KINDS: Tuple[str, ...] = tuple(PATTERN_WORDS)


def caption_for(
    shape: str, colour: Optional[str] = None, background: Optional[str] = None, style: str = "full",
    pattern: Optional[Tuple] = None,
) -> str:
    """Caption of a scene. ``style``: "full" ("a red circle on a blue background"), "shape_colour" ("a red circle"),
    "shape_background" ("a circle on a blue background"), "shape" ("a circle") or "empty" ("").

    For a patterned object (``pattern`` set) the colour is replaced by the pattern: "full" gives
    "a green and yellow striped circle on a blue background", "shape_colour" "a green and yellow striped circle";
    two more styles name the pattern without its colours: "pattern_background" ("a striped circle on a blue
    background") and "pattern" ("a striped circle"). "shape_background" and "shape" never mention the pattern: a
    striped circle is still "a circle"."""
    if style == "empty":
        return ""
    words = ["a"]
    if pattern is not None and style in ("full", "shape_colour"):
        words += [pattern[1], "and", pattern[2], PATTERN_WORDS[pattern[0]]]
    elif pattern is not None and style in ("pattern_background", "pattern"):
        words.append(PATTERN_WORDS[pattern[0]])
    elif style in ("full", "shape_colour") and colour:
        words.append(colour)
    words.append(shape)
    if style in ("full", "shape_background", "pattern_background") and background:
        words += ["on", "a", background, "background"]
    return " ".join(words)


# --------------------------------------------------------------------------------------------------- rendering


def _star_polygon() -> np.ndarray:
    """Five-pointed (fat) star, point up, normalised so its bounding box is exactly [-1, 1]^2."""
    angles = -np.pi / 2 + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.5)
    pts = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    lo, hi = pts.min(0), pts.max(0)
    return (pts - lo) / (hi - lo) * 2 - 1


_STAR = _star_polygon()


def _in_polygon(u: np.ndarray, v: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd rule point-in-polygon test, vectorised over points (u, v)."""
    inside = np.zeros(u.shape, dtype=bool)
    n = len(poly)
    for i in range(n):
        x1, y1 = poly[i]
        x2, y2 = poly[(i + 1) % n]
        crosses = (y1 > v) != (y2 > v)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = x1 + (v - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (u < x_at)
    return inside


def shape_mask_normalized(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Mask of ``shape`` in normalised coordinates: its bounding box is [-1, 1]^2, v points down (image rows)."""
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)
    if shape == "triangle":  # apex up at v = -1, base at v = +1
        return (v <= 1.0) & (np.abs(u) <= (v + 1.0) / 2.0)
    if shape == "star":
        return _in_polygon(u, v, _STAR) & (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _grid(height: int = IMAGE_SIZE, width: int = IMAGE_SIZE):
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    return xs + 0.5, ys + 0.5  # pixel centres


def shape_mask(shape: str, cx: float, cy: float, sx: float, sy: Optional[float] = None, image_size: int = IMAGE_SIZE):
    """Exact boolean mask (H, W) of ``shape`` whose bounding box is centred at (cx, cy) with half-sizes (sx, sy)."""
    sy = sx if sy is None else sy
    xs, ys = _grid(image_size, image_size)
    return shape_mask_normalized(shape, (xs - cx) / sx, (ys - cy) / sy)


def _pattern_colours(scene: Scene, mask: np.ndarray) -> np.ndarray:
    """(H, W, 3) colour field of the object's paint (only meaningful where ``mask``)."""
    h, w = mask.shape
    xs, ys = _grid(h, w)
    if scene.pattern is None:
        return np.broadcast_to(np.array(ALL_COLOURS[scene.colour], dtype=np.uint8), (h, w, 3))
    kind = scene.pattern[0]
    c1 = np.array(ALL_COLOURS[scene.pattern[1]], dtype=np.uint8)
    c2 = np.array(ALL_COLOURS[scene.pattern[2]], dtype=np.uint8)
    # Pattern coordinates are relative to the object's top-left corner so the pattern moves with the object.
    x0, y0 = scene.cx - scene.size, scene.cy - scene.size
    if kind == "stripes":  # horizontal stripes
        period = scene.pattern[3]
        first = (np.floor((ys - y0) / period).astype(int) % 2) == 0
    elif kind == "checker":
        period = scene.pattern[3]
        first = ((np.floor((xs - x0) / period) + np.floor((ys - y0) / period)).astype(int) % 2) == 0
    elif kind == "halves":  # left half c1, right half c2
        first = xs < scene.cx
    else:
        raise ValueError(f"unknown pattern {kind!r}")
    return np.where(first[..., None], c1, c2)


def render(scene: Scene, image_size: int = IMAGE_SIZE) -> Tuple[np.ndarray, np.ndarray]:
    """Draw ``scene``: returns (image uint8 (H, W, 3), exact object mask bool (H, W))."""
    mask = shape_mask(scene.shape, scene.cx, scene.cy, scene.size, image_size=image_size)
    image = np.empty((image_size, image_size, 3), dtype=np.uint8)
    image[:] = np.array(BACKGROUNDS[scene.background], dtype=np.uint8)
    paint = _pattern_colours(scene, mask)
    image[mask] = paint[mask]
    return image, mask


def sample_scene(
    rng: np.random.Generator,
    shapes: Sequence[str] = SHAPES,
    colours: Sequence[str] = tuple(COLOURS),
    backgrounds: Sequence[str] = tuple(BACKGROUNDS),
    image_size: int = IMAGE_SIZE,
    pattern: Optional[Tuple] = None,
) -> Scene:
    """Random scene from ``rng`` (deterministic for a given generator state). A colour is never its background."""
    shape = shapes[rng.integers(len(shapes))]
    while True:
        colour = colours[rng.integers(len(colours))]
        background = backgrounds[rng.integers(len(backgrounds))]
        if pattern is not None or BACKGROUNDS[background] != ALL_COLOURS[colour]:
            break
    size = float(rng.uniform(MIN_HALF_SIZE, MAX_HALF_SIZE))
    lo, hi = size + MARGIN, image_size - size - MARGIN
    cx, cy = float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))
    return Scene(shape, colour, background, cx, cy, size, pattern)


#: Caption styles used to train the world model and their probabilities (sum to 1).
CAPTION_STYLES: Tuple[Tuple[str, float], ...] = (
    ("full", 0.55),
    ("shape_colour", 0.12),
    ("shape_background", 0.12),
    ("shape", 0.11),
    ("empty", 0.10),
)


#: Caption styles of patterned objects in the pretraining distribution (sum to 1): the class word alone ("a circle")
#: covers patterned objects too, as "a dog" covers every dog.
PATTERN_CAPTION_STYLES: Tuple[Tuple[str, float], ...] = (
    ("full", 0.40),
    ("shape_colour", 0.10),
    ("pattern_background", 0.09),
    ("pattern", 0.08),
    ("shape_background", 0.12),
    ("shape", 0.11),
    ("empty", 0.10),
)


def sample_caption_style(rng: np.random.Generator, allow_empty: bool = True, patterned: bool = False) -> str:
    table = PATTERN_CAPTION_STYLES if patterned else CAPTION_STYLES
    styles = [s for s, _ in table if allow_empty or s != "empty"]
    probs = np.array([p for s, p in table if allow_empty or s != "empty"])
    return styles[rng.choice(len(styles), p=probs / probs.sum())]


#: Colours a pattern of the pretraining distribution may use (object colours plus the pattern-only ones).
PATTERN_PALETTE: Tuple[str, ...] = tuple(ALL_COLOURS)
#: Share of patterned objects in the pretraining distribution of the world model.
PRETRAINING_PATTERN_PROB = 0.35
#: (shape, pattern kind, colour pair) combinations held out of pretraining: the personal concepts of
#: :mod:`.concepts` (a test checks that every concept is listed). The world model has seen green-and-yellow
#: stripes (on squares, triangles, stars) and striped circles (in other colours), never a green-and-yellow striped
#: circle -- as Stable Diffusion has seen mugs and teapots but not *your* teapot.
HELD_OUT_PATTERNS = frozenset({
    ("circle", "stripes", frozenset(("green", "yellow"))),
    ("square", "checker", frozenset(("red", "yellow"))),
    ("triangle", "halves", frozenset(("green", "red"))),
})


def is_held_out(shape: str, pattern: Optional[Tuple]) -> bool:
    return pattern is not None and (shape, pattern[0], frozenset(pattern[1:3])) in HELD_OUT_PATTERNS


def sample_pattern(rng: np.random.Generator) -> Tuple:
    """Random two-colour pattern: kind, two different colours of :data:`PATTERN_PALETTE`, period 3-6 px."""
    kind = PATTERN_KINDS[rng.integers(len(PATTERN_KINDS))]
    i, j = rng.choice(len(PATTERN_PALETTE), size=2, replace=False)
    c1, c2 = PATTERN_PALETTE[i], PATTERN_PALETTE[j]
    return (kind, c1, c2) if kind == "halves" else (kind, c1, c2, float(rng.integers(3, 7)))


def sample_pretraining_scene(rng: np.random.Generator, pattern_prob: float = PRETRAINING_PATTERN_PROB) -> Scene:
    """A scene of the world model's pretraining distribution: a plain object (as :func:`sample_scene`) or, with
    probability ``pattern_prob``, a patterned one, never one of :data:`HELD_OUT_PATTERNS`."""
    if rng.random() >= pattern_prob:
        return sample_scene(rng)
    while True:
        scene = sample_scene(rng, pattern=sample_pattern(rng))
        if not is_held_out(scene.shape, scene.pattern):
            return scene


def make_example(seed: int, style: Optional[str] = "full"):
    """Deterministic example for ``seed``: (image uint8 (H,W,3), mask bool (H,W), caption, scene).

    ``style=None`` draws the caption style at random (from the same seed)."""
    rng = np.random.default_rng(seed)
    scene = sample_scene(rng)
    if style is None:
        style = sample_caption_style(rng)
    image, mask = render(scene)
    return image, mask, scene.caption(style), scene


def make_dataset(n: int, seed: int = 0, style: Optional[str] = None, pattern_prob: float = 0.0):
    """``n`` examples from one seeded stream: (images uint8 (n,H,W,3), masks bool (n,H,W), captions, scenes).

    ``pattern_prob`` > 0 draws from the pretraining distribution (:func:`sample_pretraining_scene`), patterned
    objects included; the default gives plain objects only."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    masks = np.empty((n, IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
    captions: List[str] = []
    scenes: List[Scene] = []
    for i in range(n):
        scene = sample_pretraining_scene(rng, pattern_prob) if pattern_prob > 0 else sample_scene(rng)
        images[i], masks[i] = render(scene)
        captions.append(scene.caption(style or sample_caption_style(rng, patterned=scene.pattern is not None)))
        scenes.append(scene)
    return images, masks, captions, scenes


def all_captions(include_empty: bool = True, include_patterns: bool = False) -> List[str]:
    """Every caption of plain objects (and, with ``include_patterns``, of the patterned objects of the pretraining
    distribution, held-out combinations excluded) the world's training can produce (deduplicated, sorted)."""
    caps = set()
    for shape in SHAPES:
        caps.add(caption_for(shape, style="shape"))
        for colour in COLOURS:
            caps.add(caption_for(shape, colour, style="shape_colour"))
        for bg in BACKGROUNDS:
            caps.add(caption_for(shape, background=bg, style="shape_background"))
            for colour in COLOURS:
                if COLOURS[colour] != BACKGROUNDS[bg]:
                    caps.add(caption_for(shape, colour, bg, "full"))
    if include_patterns:
        for shape in SHAPES:
            for kind in PATTERN_KINDS:
                for bg in (None,) + tuple(BACKGROUNDS):
                    style = "pattern_background" if bg else "pattern"
                    caps.add(caption_for(shape, background=bg, style=style, pattern=(kind, "", "")))
                    for c1 in PATTERN_PALETTE:
                        for c2 in PATTERN_PALETTE:
                            if c1 != c2 and not is_held_out(shape, (kind, c1, c2)):
                                caps.add(caption_for(shape, background=bg, style="full" if bg else "shape_colour",
                                                     pattern=(kind, c1, c2)))
    if include_empty:
        caps.add("")
    return sorted(caps)


def parse_caption(caption: str) -> Dict[str, object]:
    """Attributes named in a caption: {"shape", "colour", "background", "pattern", "pattern_colours"} (None where not
    named). A patterned caption ("a green and yellow striped circle") sets "pattern" (the kind) and
    "pattern_colours" (the two colours, in order) and leaves "colour" None."""
    words = caption.lower().replace(",", " ").replace("-", " ").split()
    out: Dict[str, object] = {"shape": None, "colour": None, "background": None, "pattern": None,
                              "pattern_colours": None}
    if "background" in words:
        i = words.index("background")
        if i > 0 and words[i - 1] in BACKGROUNDS:
            out["background"] = words[i - 1]
        words = words[: max(0, i - 1)]
    text = " " + " ".join(words) + " "
    for kind, word in PATTERN_WORDS.items():
        if f" {word} " in text:
            out["pattern"] = kind
    colours = [w for w in words if w in ALL_COLOURS]
    for w in words:
        if w in SHAPES and out["shape"] is None:
            out["shape"] = w
    if out["pattern"] is not None:
        if len(colours) >= 2:
            out["pattern_colours"] = (colours[0], colours[1])
    elif colours and colours[0] in COLOURS:
        out["colour"] = colours[0]
    return out


def caption_matches_scene(attrs: Dict[str, object], scene: Scene) -> bool:
    """Is every attribute a caption names (``attrs`` from :func:`parse_caption`) true of ``scene``? A plain colour
    ("a red circle") only matches plain objects; a pattern matches its kind and, when named, its colours in order."""
    if attrs.get("shape") is not None and attrs["shape"] != scene.shape:
        return False
    if attrs.get("background") is not None and attrs["background"] != scene.background:
        return False
    if attrs.get("colour") is not None and (scene.pattern is not None or attrs["colour"] != scene.colour):
        return False
    if attrs.get("pattern") is not None:
        if scene.pattern is None or scene.pattern[0] != attrs["pattern"]:
            return False
        if attrs.get("pattern_colours") is not None and tuple(attrs["pattern_colours"]) != tuple(scene.pattern[1:3]):
            return False
    return True


# ------------------------------------------------------------------------------------------ reading pixels back


def to_uint8_array(image) -> np.ndarray:
    """PIL image, float array in [0, 1] or uint8 array (H, W, 3) -> uint8 array (H, W, 3)."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = np.clip(np.round(arr.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:  # CHW
        arr = arr.transpose(1, 2, 0)
    return arr[..., :3]


def _nearest(colour: np.ndarray, palette: Dict[str, Tuple[int, int, int]]) -> Tuple[str, float]:
    names = list(palette)
    dists = [float(np.linalg.norm(colour - np.array(palette[n], dtype=np.float64))) for n in names]
    i = int(np.argmin(dists))
    return names[i], dists[i]


def _neighbours8(y, x):
    return ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1),
            (y - 1, x - 1), (y - 1, x + 1), (y + 1, x - 1), (y + 1, x + 1))


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Largest 8-connected component of a boolean mask (empty mask stays empty)."""
    h, w = mask.shape
    labels = np.zeros((h, w), dtype=np.int32)
    best, best_size, current = 0, 0, 0
    for y0, x0 in zip(*np.nonzero(mask)):
        if labels[y0, x0]:
            continue
        current += 1
        stack, size = [(y0, x0)], 0
        labels[y0, x0] = current
        while stack:
            y, x = stack.pop()
            size += 1
            for ny, nx in _neighbours8(y, x):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = current
                    stack.append((ny, nx))
        if size > best_size:
            best, best_size = current, size
    return labels == best if best else np.zeros_like(mask)


def _erode(mask: np.ndarray) -> np.ndarray:
    m = mask.copy()
    m[1:, :] &= mask[:-1, :]
    m[:-1, :] &= mask[1:, :]
    m[:, 1:] &= mask[:, :-1]
    m[:, :-1] &= mask[:, 1:]
    return m


def shape_scores(mask: np.ndarray) -> Dict[str, float]:
    """IoU of ``mask`` with each shape template fitted to the mask's bounding box."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return {s: 0.0 for s in SHAPES}
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    cx, cy, sx, sy = (x0 + x1) / 2.0, (y0 + y1) / 2.0, max((x1 - x0) / 2.0, 0.5), max((y1 - y0) / 2.0, 0.5)
    scores = {}
    for s in SHAPES:
        t = shape_mask(s, cx, cy, sx, sy, image_size=mask.shape[0])
        scores[s] = float((t & mask).sum() / max((t | mask).sum(), 1))
    return scores


#: Minimum RGB distance from the background for a pixel to count as object, and minimum object area (pixels).
OBJECT_THRESHOLD, MIN_OBJECT_PIXELS = 60.0, 12


def object_mask(image, background_rgb: Optional[np.ndarray] = None) -> np.ndarray:
    """Object pixels of an image: largest connected region whose colour is far from the background colour."""
    arr = np.asarray(image, dtype=np.float64) if _is_float255(image) else to_uint8_array(image).astype(np.float64)
    if background_rgb is None:
        background_rgb = _border_colour(arr)
    far = np.linalg.norm(arr - background_rgb, axis=-1) > OBJECT_THRESHOLD
    return largest_component(far)


def _is_float255(image) -> bool:
    return isinstance(image, np.ndarray) and image.dtype == np.float64 and image.max(initial=0) > 1.0


def _border_colour(arr: np.ndarray, width: int = 1) -> np.ndarray:
    border = np.concatenate(
        [arr[:width].reshape(-1, 3), arr[-width:].reshape(-1, 3), arr[:, :width].reshape(-1, 3),
         arr[:, -width:].reshape(-1, 3)]
    )
    return np.median(border, axis=0)


def analyze_image(image) -> Dict[str, object]:
    """Attributes of an image read from its pixels.

    Returns {"background", "colour", "shape" (names or None), "mask" (bool (H, W)), "shape_iou" (best template IoU),
    "colour_distance", "background_distance", "object_rgb", "background_rgb"}."""
    arr = to_uint8_array(image).astype(np.float64)
    bg_rgb = _border_colour(arr)
    background, bg_dist = _nearest(bg_rgb, BACKGROUNDS)
    mask = object_mask(arr, bg_rgb)
    out: Dict[str, object] = {
        "background": background, "background_distance": bg_dist, "background_rgb": bg_rgb, "mask": mask,
        "shape": None, "colour": None, "shape_iou": 0.0, "colour_distance": float("inf"), "object_rgb": None,
    }
    if mask.sum() < MIN_OBJECT_PIXELS:
        return out
    core = _erode(mask)
    pixels = arr[core] if core.sum() >= MIN_OBJECT_PIXELS // 2 else arr[mask]
    obj_rgb = np.median(pixels, axis=0)
    out["object_rgb"] = obj_rgb
    out["colour"], out["colour_distance"] = _nearest(obj_rgb, COLOURS)
    scores = shape_scores(mask)
    out["shape"] = max(scores, key=scores.get)
    out["shape_iou"] = scores[out["shape"]]
    return out


def check_image(image, caption_or_attrs) -> Dict[str, Optional[bool]]:
    """Does ``image`` show what a caption (or {"shape", "colour", "background"} dict) asks for?

    Returns {"shape", "colour", "background"}: True/False for each attribute the caption names, None otherwise."""
    attrs = parse_caption(caption_or_attrs) if isinstance(caption_or_attrs, str) else caption_or_attrs
    found = analyze_image(image)
    return {k: (None if attrs.get(k) is None else found[k] == attrs[k]) for k in ("shape", "colour", "background")}


def replace_scene(scene: Scene, **changes) -> Scene:
    return replace(scene, **changes)
