"""The offline world: deterministic generator, exact masks, pixel checkers, concepts, bundled model."""

import numpy as np
import pytest
import torch

from catversion_diffusers.world import concepts as C
from catversion_diffusers.world import generator as G

# Floors for the bundled model on the small sample below (16 prompts, 20 DDIM steps, guidance 8), which measures
# shape 0.875 / colour 1.0 / background 1.0; on 200 prompts (docs/world.md, 25 steps): 0.965 / 1.0 / 1.0. The
# floors sit below, so that the noise of a 16-prompt sample does not make the test flaky.
FLOORS = {"shape": 0.7, "colour": 0.8, "background": 0.8}


# ------------------------------------------------------------------------------------------------- generator


def test_generator_is_deterministic():
    a_img, a_mask, a_cap, a_scene = G.make_example(7)
    b_img, b_mask, b_cap, b_scene = G.make_example(7)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_mask, b_mask)
    assert a_cap == b_cap and a_scene == b_scene
    c_img, *_ = G.make_example(8)
    assert not np.array_equal(a_img, c_img)
    d1, d2 = G.make_dataset(20, seed=3), G.make_dataset(20, seed=3)
    assert np.array_equal(d1[0], d2[0]) and np.array_equal(d1[1], d2[1]) and d1[2] == d2[2]
    assert d1[0].shape == (20, G.IMAGE_SIZE, G.IMAGE_SIZE, 3) and d1[0].dtype == np.uint8


def test_generator_pinned_output():
    """Guards against silent changes of the renderer or the RNG stream (the bundled weights were trained on it)."""
    img, mask, cap, scene = G.make_example(0)
    assert cap == scene.caption() and cap.startswith("a ") and cap.endswith(" background")
    assert G.parse_caption(cap) == {"shape": scene.shape, "colour": scene.colour, "background": scene.background,
                                    "pattern": None, "pattern_colours": None}
    images, masks, _, _ = G.make_dataset(50, seed=0)
    assert int(masks.sum()) == 11026
    assert int(images.astype(np.int64).sum()) == 22135574


def test_captions():
    assert G.caption_for("circle", "red", "blue") == "a red circle on a blue background"
    assert G.caption_for("circle", "red", "blue", "shape") == "a circle"
    assert G.caption_for("star", "red", "blue", "shape_colour") == "a red star"
    assert G.caption_for("star", "red", "gray", "shape_background") == "a star on a gray background"
    assert G.caption_for("star", style="empty") == ""
    none = {"colour": None, "background": None, "pattern": None, "pattern_colours": None}
    assert G.parse_caption("a circle") == {**none, "shape": "circle"}
    assert G.parse_caption("a blue square on a blue background") is not None
    assert G.parse_caption("a yellow star on a blue background") == {
        **none, "shape": "star", "colour": "yellow", "background": "blue"}
    caps = G.all_captions()
    assert "" in caps and "a red circle on a blue background" in caps
    assert "a blue circle on a blue background" not in caps
    assert len(caps) == 4 * (1 + 5 + 4 + 5 * 4 - 1) + 1  # per shape: alone, colours, backgrounds, full pairs; ""


def test_pattern_captions_parse_back_and_match_their_scene():
    stripes = ("stripes", "green", "orange", 4.0)
    assert G.caption_for("circle", "red", "blue", pattern=stripes) == (
        "a green and orange striped circle on a blue background")
    assert G.caption_for("circle", "red", "blue", "shape_colour", pattern=stripes) == "a green and orange striped circle"
    assert G.caption_for("circle", "red", "blue", "pattern_background", pattern=stripes) == (
        "a striped circle on a blue background")
    assert G.caption_for("star", "red", None, "pattern", pattern=("halves", "red", "cyan")) == "a two tone star"
    assert G.caption_for("circle", "red", "blue", "shape", pattern=stripes) == "a circle"  # the class covers it
    assert G.parse_caption("a green and red two tone triangle on a white background") == {
        "shape": "triangle", "colour": None, "background": "white", "pattern": "halves",
        "pattern_colours": ("green", "red")}
    rng = np.random.default_rng(4)
    n_patterned = 0
    for _ in range(300):
        scene = G.sample_pretraining_scene(rng)
        n_patterned += scene.pattern is not None
        assert not G.is_held_out(scene.shape, scene.pattern)
        for style, _p in (G.PATTERN_CAPTION_STYLES if scene.pattern else G.CAPTION_STYLES):
            assert G.caption_matches_scene(G.parse_caption(scene.caption(style)), scene), (scene, style)
    assert 0.25 < n_patterned / 300 < 0.45  # PRETRAINING_PATTERN_PROB = 0.35
    plain = G.Scene("circle", "red", "blue", 16, 16, 8)
    red_stripes = G.Scene("circle", "red", "blue", 16, 16, 8, ("stripes", "red", "yellow", 4.0))
    assert not G.caption_matches_scene(G.parse_caption("a red circle"), red_stripes)  # plain colour: plain only
    assert not G.caption_matches_scene(G.parse_caption("a striped circle"), plain)
    assert not G.caption_matches_scene(G.parse_caption("a yellow and red striped circle"), red_stripes)  # order
    assert G.caption_matches_scene(G.parse_caption("a circle on a blue background"), red_stripes)


def test_concepts_are_held_out_of_pretraining():
    """Every personal concept's (shape, pattern kind, colours) is excluded from the world model's training data and
    captions, while its parts (the pattern on other shapes, the shape with other patterns) are not."""
    caps = set(G.all_captions(include_patterns=True))
    for concept in C.CONCEPTS.values():
        kind, c1, c2 = concept.pattern[:3]
        assert G.is_held_out(concept.class_word, concept.pattern)
        word = G.PATTERN_WORDS[kind]
        assert f"a {c1} and {c2} {word} {concept.class_word}" not in caps
        assert f"a {c2} and {c1} {word} {concept.class_word}" not in caps
        other_shape = next(s for s in G.SHAPES if s != concept.class_word)
        assert f"a {c1} and {c2} {word} {other_shape}" in caps
        assert f"a {word} {concept.class_word}" in caps


def test_world_words_are_single_tokens(tmp_path):
    from catversion_diffusers.testing import DEFAULT_WORDS

    tok = G.world_tokenizer(str(tmp_path), words=["zebra", "sksx"])
    for w in list(G.WORLD_WORDS) + list(DEFAULT_WORDS) + ["zebra", "sksx"]:
        assert len(tok(w).input_ids) == 3, w  # bos, word, eos
    assert tok.tokenize("a red triangle on a blue background") == [
        "a</w>", "red</w>", "triangle</w>", "on</w>", "a</w>", "blue</w>", "background</w>"]
    assert len(tok("qqq").input_ids) > 3  # unknown words still tokenize, byte by byte


# ------------------------------------------------------------------------------------------------------ masks


def test_mask_exact_known_square_and_circle():
    img, mask = G.render(G.Scene("square", "red", "white", 16.0, 16.0, 5.0))
    expected = np.zeros((32, 32), dtype=bool)
    expected[11:21, 11:21] = True  # pixel centres 11.5 .. 20.5 lie in [11, 21]
    assert np.array_equal(mask, expected)
    assert (img[mask] == G.COLOURS["red"]).all() and (img[~mask] == G.BACKGROUNDS["white"]).all()

    img, mask = G.render(G.Scene("circle", "blue", "black", 16.0, 16.0, 6.0))
    ys, xs = np.mgrid[0:32, 0:32] + 0.5
    assert np.array_equal(mask, (xs - 16) ** 2 + (ys - 16) ** 2 <= 36)
    assert mask.sum() == 112


def test_triangle_points_up_and_star_is_not_convex():
    _, tri = G.render(G.Scene("triangle", "red", "white", 16.0, 16.0, 8.0))
    rows = tri.sum(1)
    assert rows[9] < rows[16] < rows[23]  # narrow at the top, wide at the base
    _, star = G.render(G.Scene("star", "red", "white", 16.0, 16.0, 10.0))
    _, circle = G.render(G.Scene("circle", "red", "white", 16.0, 16.0, 10.0))
    assert star.sum() < 0.6 * circle.sum() and star[16, 16]


def test_masks_exact_on_random_scenes():
    images, masks, _, scenes = G.make_dataset(100, seed=11)
    for img, mask, s in zip(images, masks, scenes):
        assert mask.sum() > 30
        assert (img[mask] == G.COLOURS[s.colour]).all()
        assert (img[~mask] == G.BACKGROUNDS[s.background]).all()
        assert G.COLOURS[s.colour] != G.BACKGROUNDS[s.background]
        # the object never touches the border (so the border is pure background)
        assert not mask[0].any() and not mask[-1].any() and not mask[:, 0].any() and not mask[:, -1].any()


# --------------------------------------------------------------------------------------------------- checkers


def test_checkers_exact_on_renders():
    images, masks, _, scenes = G.make_dataset(300, seed=5)
    for img, mask, s in zip(images, masks, scenes):
        a = G.analyze_image(img)
        assert (a["shape"], a["colour"], a["background"]) == (s.shape, s.colour, s.background), s
        assert np.array_equal(a["mask"], mask)
        assert G.check_image(img, s.caption()) == {"shape": True, "colour": True, "background": True}


def test_checkers_report_wrong_attributes():
    img, _ = G.render(G.Scene("star", "yellow", "gray", 15.0, 17.0, 9.0))
    assert G.check_image(img, "a red circle on a black background") == {
        "shape": False, "colour": False, "background": False}
    assert G.check_image(img, "a star") == {"shape": True, "colour": None, "background": None}
    # accepts PIL images and float arrays in [0, 1] (what pipelines return)
    from PIL import Image

    assert G.analyze_image(Image.fromarray(img))["shape"] == "star"
    assert G.analyze_image(img.astype(np.float32) / 255.0)["colour"] == "yellow"
    # an empty image has no object
    blank = np.full((32, 32, 3), 128, dtype=np.uint8)
    assert G.analyze_image(blank)["shape"] is None


def test_checkers_tolerate_noise_and_blur():
    rng = np.random.default_rng(0)
    images, _, _, scenes = G.make_dataset(100, seed=6)
    right = 0
    for img, s in zip(images, scenes):
        x = img.astype(np.float64)
        x = (x + np.roll(x, 1, 0) + np.roll(x, 1, 1) + np.roll(x, -1, 0) + np.roll(x, -1, 1)) / 5  # blur
        x = np.clip(x + rng.normal(0, 12, x.shape), 0, 255).astype(np.uint8)
        right += all(G.check_image(x, s.caption()).values())
    assert right >= 90


# --------------------------------------------------------------------------------------------------- concepts


@pytest.mark.parametrize("name", sorted(C.CONCEPTS))
def test_concept_references(name):
    concept = C.get_concept(name)
    refs = concept.references()
    assert 4 <= len(refs) <= 6
    again = concept.references()
    for (img, mask), (img2, mask2), scene in zip(refs, again, concept.reference_scenes()):
        assert np.array_equal(img, img2) and np.array_equal(mask, mask2)
        # exact mask: the background colour everywhere outside, pattern colours only inside
        assert (img[~mask] == G.BACKGROUNDS[scene.background]).all()
        inside = {tuple(p) for p in img[mask]}
        assert inside == {G.ALL_COLOURS[c] for c in concept.colours}
        assert np.array_equal(mask, G.shape_mask(concept.class_word, scene.cx, scene.cy, scene.size))
        assert C.concept_match(img, concept)["match"]
    assert concept.class_word in G.SHAPES and concept.prompt == f"a {concept.class_word}"
    assert len(concept.reference_images()) == len(refs)


def test_concepts_are_not_plain_objects_nor_each_other():
    for concept in C.CONCEPTS.values():
        for colour in G.COLOURS:
            img, _ = G.render(G.Scene(concept.class_word, colour, "gray", 16.0, 16.0, 10.0))
            assert not C.concept_match(img, concept)["match"]
        for other in C.CONCEPTS.values():
            if other is not concept:
                assert not any(C.concept_match(img, concept)["match"] for img, _ in other.references())


def test_mirror_invariance_of_concepts():
    """Stripes survive a horizontal flip; left-green / right-red halves become another object (so training on that
    concept must not use flipped views)."""
    for concept in C.CONCEPTS.values():
        flipped = [C.concept_match(np.ascontiguousarray(img[:, ::-1]), concept)["match"] for img, _ in concept.references()]
        assert all(flipped) == concept.mirror_invariant, concept.name
    assert not C.get_concept("two_tone_triangle").mirror_invariant


def test_concept_export(tmp_path):
    from PIL import Image

    paths = C.get_concept("striped_circle").export(str(tmp_path))
    assert len(paths) == 5
    img = np.asarray(Image.open(paths[0]))
    assert np.array_equal(img, C.get_concept("striped_circle").references()[0][0])


# -------------------------------------------------------------------------------------------- bundled model


def _weights_or_skip():
    from catversion_diffusers import world

    if not world.weights_available():
        pytest.skip("bundled world weights not present")
    return world


def test_bundled_pipeline_loads_offline():
    world = _weights_or_skip()
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel, CLIPTokenizer

    pipe = StableDiffusionPipeline.from_pretrained(world.WEIGHTS_DIR, local_files_only=True)
    assert isinstance(pipe.text_encoder, CLIPTextModel) and isinstance(pipe.tokenizer, CLIPTokenizer)
    assert pipe.text_encoder.config.num_hidden_layers >= 6
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert pipe.safety_checker is None
    for word in ("a", "on", "background", "circle", "red"):
        assert len(pipe.tokenizer(word).input_ids) == 3


def test_bundled_pipeline_follows_prompts():
    world = _weights_or_skip()
    from catversion_diffusers.world.evaluation import evaluate_prompt_following

    torch.set_num_threads(1)
    pipe = world.load_world_pipeline()
    res = evaluate_prompt_following(pipe, n=16, seed=99, num_inference_steps=20, guidance_scale=8.0)
    print({k: res[k] for k in FLOORS})
    for attr, floor in FLOORS.items():
        assert res[attr] >= floor, (attr, res[attr], [r for r in res["records"] if not r.get(attr, True)])
    image = pipe("a red circle", num_inference_steps=2, output_type="np").images[0]
    assert image.shape == (32, 32, 3)


def test_eval_clip_reads_the_world():
    world = _weights_or_skip()
    model, tok = world.load_eval_clip()
    images, _, _, scenes = G.make_dataset(40, seed=77)
    img = world.clip_image_embeddings(model, images)
    txt = world.clip_text_embeddings(model, tok, [G.caption_for(s, style="shape") for s in G.SHAPES])
    pred = (img @ txt.T).argmax(1).tolist()
    assert np.mean([G.SHAPES[p] == s.shape for p, s in zip(pred, scenes)]) >= 0.7
