"""Tests of the evaluation metrics, masks, prompt sets and the evaluation script, with tiny random models.

Every model is built from a small config, saved with ``save_pretrained`` and loaded back by path, so loading is
exercised exactly as for a real model; nothing is downloaded. Expected values are computed independently (the
models' own forward pass, NumPy cosines, the paper's Table 1), never pasted from the code under test.
"""

import csv
import importlib.util
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from catversion_diffusers.errors import CatVersionError
from catversion_diffusers.evaluation import (
    CATVERSION_EDITING_PROMPTS,
    DREAMBOOTH_LIVE_PROMPTS,
    DREAMBOOTH_OBJECT_PROMPTS,
    CLIPEmbedder,
    CLIPSegMasker,
    DINOEmbedder,
    EvaluationError,
    EvaluationModelNotFoundError,
    aggregate,
    apply_mask,
    clip_image_alignment,
    clip_text_alignment,
    dino_similarity,
    evaluate_images,
    get_prompt_set,
    load_masks,
    masked_clip_image_alignment,
    overall_score,
    to_mask_array,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 32  # tiny model input size


# ---------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """Tiny random CLIP, CLIPSeg and ViT (DINO-style) models with processors, saved to folders."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPSegConfig,
        CLIPSegForImageSegmentation,
        CLIPSegProcessor,
        ViTConfig,
        ViTImageProcessor,
        ViTModel,
    )

    from catversion_diffusers.testing import tiny_clip_tokenizer

    root = tmp_path_factory.mktemp("eval_models")
    tokenizer = tiny_clip_tokenizer(str(root / "tokenizer"))
    text = dict(
        hidden_size=16,
        intermediate_size=32,
        num_attention_heads=2,
        num_hidden_layers=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = dict(
        hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2, image_size=SIZE, patch_size=8
    )
    mean, std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]

    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    clip_dir = str(root / "clip")
    clip.save_pretrained(clip_dir)
    CLIPImageProcessor(
        size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE}, image_mean=mean, image_std=std
    ).save_pretrained(clip_dir)
    tokenizer.save_pretrained(clip_dir)

    torch.manual_seed(1)
    seg_config = CLIPSegConfig(
        text_config=text,
        vision_config=dict(vision, num_hidden_layers=3),
        projection_dim=16,
        extract_layers=[1, 2],
        reduce_dim=8,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=16,
    )
    seg_dir = str(root / "clipseg")
    CLIPSegForImageSegmentation(seg_config).eval().save_pretrained(seg_dir)
    seg_processor = ViTImageProcessor(
        size={"height": SIZE, "width": SIZE}, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]
    )
    CLIPSegProcessor(image_processor=seg_processor, tokenizer=tokenizer).save_pretrained(seg_dir)

    torch.manual_seed(2)
    vit_config = ViTConfig(
        hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2, image_size=SIZE, patch_size=8
    )
    dino_dir = str(root / "dino")
    ViTModel(vit_config, add_pooling_layer=False).eval().save_pretrained(dino_dir)
    ViTImageProcessor(size={"height": SIZE, "width": SIZE}).save_pretrained(dino_dir)
    return dict(root=root, clip=clip_dir, clipseg=seg_dir, dino=dino_dir, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def clip(tiny_models):
    return CLIPEmbedder(tiny_models["clip"], device="cpu", batch_size=4, show_progress=False)


@pytest.fixture(scope="module")
def dino(tiny_models):
    return DINOEmbedder(tiny_models["dino"], device="cpu", batch_size=4, show_progress=False)


@pytest.fixture(scope="module")
def masker(tiny_models):
    return CLIPSegMasker(tiny_models["clipseg"], device="cpu", batch_size=2, show_progress=False)


def _random_images(n, seed=0, size=(SIZE, SIZE)):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


def _scene(background, box=(8, 8, 24, 24), seed=0):
    """A 32x32 image: a fixed random-textured object in ``box`` on a ``background`` (colour or array), its mask."""
    if isinstance(background, tuple):
        pixels = np.empty((SIZE, SIZE, 3), dtype=np.uint8)
        pixels[:] = background
    else:
        pixels = background.copy()
    left, top, right, bottom = box
    obj = np.random.default_rng(seed).integers(0, 256, (bottom - top, right - left, 3), dtype=np.uint8)
    pixels[top:bottom, left:right] = obj
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[top:bottom, left:right] = True
    return Image.fromarray(pixels), mask


def _clip_forward_embeds(model_dir, images, texts=("a dog",)):
    """Normalized image and text embeddings from CLIPModel's own forward pass (an independent path)."""
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(model_dir).eval()
    pixels = CLIPImageProcessor.from_pretrained(model_dir)(images=images, return_tensors="pt")["pixel_values"]
    tokens = CLIPTokenizer.from_pretrained(model_dir)(list(texts), padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=pixels)
    return out.image_embeds.numpy().astype(np.float64), out.text_embeds.numpy().astype(np.float64), out


def _cos(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


# ----------------------------------------------------------------------------------------------------- metrics
def test_clip_text_alignment_is_the_cosine_of_clip_embeddings(tiny_models, clip):
    images = _random_images(3, seed=1)
    prompts = ["a dog", "a red dog", "a dog in the snow"]
    image_embeds, text_embeds, _ = _clip_forward_embeds(tiny_models["clip"], images, prompts)
    expected = [_cos(image_embeds[i], text_embeds[i]) for i in range(3)]
    got = clip_text_alignment(images, prompts, clip=clip)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)
    clip_scores = clip_text_alignment(images, prompts, clip=clip, clip_score=True)
    np.testing.assert_allclose(clip_scores.numpy(), [2.5 * max(c, 0.0) for c in expected], atol=1e-5)
    # One prompt for all images equals repeating it.
    single = clip_text_alignment(images, "a dog", clip=clip)
    np.testing.assert_allclose(single.numpy(), [_cos(image_embeds[i], text_embeds[0]) for i in range(3)], atol=1e-5)


def test_identical_images_give_image_alignment_one(clip, dino):
    images = _random_images(3, seed=2)
    masks = [np.pad(np.ones((16, 16), bool), 8) for _ in images]
    for matrix in (
        clip_image_alignment(images, images, clip=clip),
        masked_clip_image_alignment(images, images, masks, masks, clip=clip),
        dino_similarity(images, images, dino=dino),
    ):
        assert matrix.shape == (3, 3)
        np.testing.assert_allclose(torch.diagonal(matrix).numpy(), np.ones(3), atol=1e-5)
        assert float(matrix.max()) <= 1 + 1e-5


def test_image_alignments_match_hand_computed_cosines(tiny_models, clip, dino):
    from transformers import ViTImageProcessor, ViTModel

    generated = [_scene((200, 30, 30), seed=3)[0], _scene((30, 30, 200), seed=4)[0]]
    references = _random_images(3, seed=5)
    embeds, _, _ = _clip_forward_embeds(tiny_models["clip"], generated + references)
    expected = [[_cos(embeds[g], embeds[2 + r]) for r in range(3)] for g in range(2)]
    np.testing.assert_allclose(clip_image_alignment(generated, references, clip=clip).numpy(), expected, atol=1e-5)

    vit = ViTModel.from_pretrained(tiny_models["dino"]).eval()
    pixels = ViTImageProcessor.from_pretrained(tiny_models["dino"])(
        images=generated + references, return_tensors="pt"
    )["pixel_values"]
    with torch.no_grad():
        cls = vit(pixel_values=pixels).last_hidden_state[:, 0].numpy().astype(np.float64)
    expected = [[_cos(cls[g], cls[2 + r]) for r in range(3)] for g in range(2)]
    np.testing.assert_allclose(dino_similarity(generated, references, dino=dino).numpy(), expected, atol=1e-5)


def test_masked_alignment_is_clip_of_images_blacked_out_outside_the_masks(tiny_models, clip):
    gen, gen_mask = _scene((250, 250, 0), box=(4, 6, 20, 30), seed=6)
    ref, ref_mask = _scene((0, 120, 0), box=(10, 2, 30, 18), seed=7)
    # M * I by hand: zero (black) outside the mask.
    gen_masked = Image.fromarray(np.where(gen_mask[..., None], np.asarray(gen), 0).astype(np.uint8))
    ref_masked = Image.fromarray(np.where(ref_mask[..., None], np.asarray(ref), 0).astype(np.uint8))
    embeds, _, _ = _clip_forward_embeds(tiny_models["clip"], [gen_masked, ref_masked])
    got = masked_clip_image_alignment([gen], [ref], [gen_mask], [ref_mask], clip=clip)
    np.testing.assert_allclose(float(got[0, 0]), _cos(embeds[0], embeds[1]), atol=1e-5)
    assert abs(float(got[0, 0]) - float(clip_image_alignment([gen], [ref], clip=clip)[0, 0])) > 1e-4


def test_background_change_leaves_masked_score_unchanged_but_changes_plain_score(clip):
    noise = np.random.default_rng(8).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    on_red, mask = _scene((220, 20, 20), seed=9)
    on_noise, mask2 = _scene(noise, seed=9)
    assert (mask == mask2).all()
    references = [
        _scene((20, 20, 220), box=(6, 10, 22, 26), seed=9),
        _scene((90, 90, 90), box=(12, 4, 28, 20), seed=9),
    ]
    ref_images, ref_masks = [r[0] for r in references], [r[1] for r in references]
    for options in (dict(), dict(fill="mean"), dict(fill=(10, 200, 10), crop=True)):
        masked = masked_clip_image_alignment(
            [on_red, on_noise], ref_images, [mask, mask], ref_masks, clip=clip, **options
        )
        np.testing.assert_allclose(masked[0].numpy(), masked[1].numpy(), atol=1e-6)
    plain = clip_image_alignment([on_red, on_noise], ref_images, clip=clip)
    assert float((plain[0] - plain[1]).abs().max()) > 1e-3


def test_image_metrics_are_symmetric(clip, dino):
    a, a_masks = zip(*[_scene((30 * i, 100, 200 - 30 * i), box=(4 + i, 4, 20 + i, 24), seed=10 + i) for i in range(3)])
    b, b_masks = zip(*[_scene((200, 40 * i, 60), box=(8, 2 + i, 28, 22 + i), seed=20 + i) for i in range(2)])
    forward = masked_clip_image_alignment(list(a), list(b), list(a_masks), list(b_masks), clip=clip)
    backward = masked_clip_image_alignment(list(b), list(a), list(b_masks), list(a_masks), clip=clip)
    np.testing.assert_allclose(forward.numpy(), backward.T.numpy(), atol=1e-6)
    np.testing.assert_allclose(
        clip_image_alignment(list(a), list(b), clip=clip).numpy(),
        clip_image_alignment(list(b), list(a), clip=clip).T.numpy(),
        atol=1e-6,
    )
    np.testing.assert_allclose(
        dino_similarity(list(a), list(b), dino=dino).numpy(),
        dino_similarity(list(b), list(a), dino=dino).T.numpy(),
        atol=1e-6,
    )


def test_overall_is_the_geometric_mean_as_in_table_1():
    # The paper's Table 1 and Table 3 (text, image, overall).
    for text, image, overall in [
        (0.2514, 0.8048, 0.4498),
        (0.2213, 0.7831, 0.4163),
        (0.2227, 0.8802, 0.4427),
        (0.2488, 0.7627, 0.4356),
        (0.2386, 0.7925, 0.4348),
        (0.2651, 0.7327, 0.4407),
    ]:
        assert abs(overall_score(text, image) - overall) < 6e-5
    assert overall_score(0.25, 1.0) == pytest.approx(0.5)
    assert overall_score(-0.1, 0.8) == 0.0
    np.testing.assert_allclose(
        overall_score(torch.tensor([0.04, 0.09]), torch.tensor([1.0, 0.25])).numpy(), [0.2, 0.15]
    )


def test_evaluate_images_reports_means_and_the_overall_of_the_means(clip, dino, masker):
    generated = [_scene((i * 60, 50, 90), seed=30 + i)[0] for i in range(3)]
    references = [_scene((10, 200, 10), seed=40)[0], _scene((200, 200, 10), seed=41)[0]]
    prompts = ["a dog", "a red dog", "a dog in the snow"]
    result = evaluate_images(
        generated, prompts, references, clip=clip, dino=dino, masker=masker, mask_prompt="dog", clip_score=True
    )
    per_image, mean = result["per_image"], result["mean"]
    assert result["image_alignment"] == "clip_i_masked"
    assert set(per_image) == {"clip_t", "clip_score", "clip_i", "clip_i_masked", "dino", "overall"}
    np.testing.assert_allclose(
        per_image["clip_t"].numpy(), clip_text_alignment(generated, prompts, clip=clip).numpy(), atol=1e-6
    )
    np.testing.assert_allclose(
        per_image["clip_i"].numpy(), clip_image_alignment(generated, references, clip=clip).mean(1).numpy(), atol=1e-6
    )
    for name in ("clip_t", "clip_i", "clip_i_masked", "dino"):
        assert mean[name] == pytest.approx(float(per_image[name].mean()), abs=1e-6)
    t, i = max(mean["clip_t"], 0.0), max(mean["clip_i_masked"], 0.0)
    assert mean["overall"] == pytest.approx(np.sqrt(t * i), abs=1e-7)
    assert len(result["generated_masks"]) == 3 and len(result["reference_masks"]) == 2
    no_masks = evaluate_images(generated, prompts, references, clip=clip, masked=False)
    assert no_masks["image_alignment"] == "clip_i" and "clip_i_masked" not in no_masks["per_image"]


def test_batching_does_not_change_results(tiny_models, clip, dino, masker):
    images = _random_images(5, seed=50) + _random_images(2, seed=51, size=(40, 24))
    one = CLIPEmbedder(tiny_models["clip"], device="cpu", batch_size=1, show_progress=False)
    np.testing.assert_allclose(one.embed_images(images).numpy(), clip.embed_images(images).numpy(), atol=1e-5)
    texts = ["a dog", "a dog wearing a santa hat in the snow", "a cube shaped teapot"]
    np.testing.assert_allclose(one.embed_texts(texts).numpy(), clip.embed_texts(texts).numpy(), atol=1e-5)
    dino_one = DINOEmbedder(tiny_models["dino"], device="cpu", batch_size=1, show_progress=False)
    np.testing.assert_allclose(dino_one.embed_images(images).numpy(), dino.embed_images(images).numpy(), atol=1e-5)
    seg_one = CLIPSegMasker(tiny_models["clipseg"], device="cpu", batch_size=1, show_progress=False)
    for a, b in zip(seg_one.probabilities(images, "dog"), masker.probabilities(images, "dog")):
        np.testing.assert_allclose(a, b, atol=1e-5)


# ------------------------------------------------------------------------------------------------------- masks
def test_clipseg_masks_shapes_and_threshold(tiny_models, masker):
    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

    images = [_random_images(1, seed=60)[0], _random_images(1, seed=61, size=(48, 20))[0]]
    probabilities = masker.probabilities(images, ["dog", "teapot"])
    assert [p.shape for p in probabilities] == [(SIZE, SIZE), (20, 48)]
    assert all(p.dtype == np.float32 and p.min() >= 0 and p.max() <= 1 for p in probabilities)
    # At the model's own resolution the probability is exactly the sigmoid of CLIPSeg's logits.
    model = CLIPSegForImageSegmentation.from_pretrained(tiny_models["clipseg"]).eval()
    inputs = CLIPSegProcessor.from_pretrained(tiny_models["clipseg"])(
        text=["dog"], images=[images[0]], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        expected = torch.sigmoid(model(**inputs).logits)[0].numpy()
    np.testing.assert_allclose(probabilities[0], expected, atol=1e-5)
    threshold = float(np.median(probabilities[0]))
    masks = masker(images, ["dog", "teapot"], threshold=threshold)
    assert [m.shape for m in masks] == [(SIZE, SIZE), (20, 48)] and all(m.dtype == bool for m in masks)
    assert (masks[0] == (probabilities[0] >= threshold)).all()
    assert 0 < masks[0].mean() < 1
    assert all(m.all() for m in masker(images, "dog", threshold=0.0))
    with pytest.raises(EvaluationError, match="3 CLIPSeg prompts for 2 images"):
        masker(images, ["a", "b", "c"])
    with pytest.raises(EvaluationError, match="threshold"):
        CLIPSegMasker(tiny_models["clipseg"], threshold=1.5)


def test_user_masks_of_another_size_are_resized(tmp_path):
    image = Image.new("RGB", (64, 48), (10, 20, 30))  # width 64, height 48
    small = np.zeros((24, 32), dtype=np.uint8)  # half size
    small[6:18, 4:12] = 255
    mask = to_mask_array(Image.fromarray(small), size=image.size)
    expected = np.zeros((48, 64), dtype=bool)
    expected[12:36, 8:24] = True
    assert mask.shape == (48, 64) and (mask == expected).all()
    # Grey levels: >= 0.5 is on the concept; an alpha channel that is not opaque is the mask.
    grey = np.array([[200, 100], [128, 127]], dtype=np.uint8)
    assert (to_mask_array(Image.fromarray(grey)) == [[True, False], [True, False]]).all()
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., 3] = [[255, 0], [0, 255]]
    assert (to_mask_array(Image.fromarray(rgba, "RGBA")) == [[True, False], [False, True]]).all()
    # Matched by name from a folder, resized to each image.
    images_dir, masks_dir = tmp_path / "images", tmp_path / "masks"
    images_dir.mkdir()
    masks_dir.mkdir()
    image.save(images_dir / "b.jpg")
    Image.new("RGB", (20, 20)).save(images_dir / "a.png")
    Image.fromarray(small).save(masks_dir / "b_mask.png")
    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(masks_dir / "a.png")
    loaded = load_masks(str(masks_dir), str(images_dir))
    assert [m.shape for m in loaded] == [(20, 20), (48, 64)]
    assert loaded[0].all() and (loaded[1] == expected).all()
    # Masks saved beside the images (name_mask.png) are found too, and not taken for images.
    Image.fromarray(small).save(images_dir / "b_mask.png")
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(images_dir / "a_mask.png")
    beside = load_masks(str(images_dir), str(images_dir))
    assert not beside[0].any() and (beside[1] == expected).all()


def test_masks_that_do_not_match_images_give_clear_errors(tmp_path, clip):
    paths = []
    for name in ("cat1", "cat2", "cat3"):
        Image.new("RGB", (16, 16)).save(tmp_path / f"{name}.png")
        paths.append(str(tmp_path / f"{name}.png"))
    mask_dir = tmp_path / "masks"
    mask_dir.mkdir()
    for name in ("cat1_mask", "cat2_mask", "dog9_mask"):
        Image.new("L", (8, 8), 255).save(mask_dir / f"{name}.png")
    with pytest.raises(EvaluationError, match=r"no mask for 1 of 3 images: \['cat3'\]"):
        load_masks(str(mask_dir), paths)
    with pytest.raises(EvaluationError, match="Got 2 masks for 3 images"):
        load_masks([str(mask_dir / "cat1_mask.png"), str(mask_dir / "cat2_mask.png")], paths)
    wrong = [str(mask_dir / "cat1_mask.png"), str(mask_dir / "dog9_mask.png"), str(mask_dir / "cat2_mask.png")]
    with pytest.raises(EvaluationError, match="dog9_mask.png.*does not match image.*cat2.png"):
        load_masks(wrong, paths)
    assert len(load_masks(wrong, paths, match_names=False)) == 3
    with pytest.raises(EvaluationError, match="when the images are files"):
        load_masks(str(mask_dir), [Image.new("RGB", (4, 4))])
    with pytest.raises(EvaluationError):
        masked_clip_image_alignment(paths, paths, [np.ones((16, 16), bool)], [np.ones((16, 16), bool)] * 3, clip=clip)
    with pytest.raises(EvaluationError, match="2 prompts for 3 images"):
        clip_text_alignment(paths, ["a", "b"], clip=clip)
    assert issubclass(EvaluationError, CatVersionError)


def test_apply_mask_fill_and_crop():
    pixels = np.full((20, 30, 3), 77, dtype=np.uint8)
    mask = np.zeros((20, 30), dtype=bool)
    mask[5:9, 10:22] = True  # a 12 x 4 box
    black = np.asarray(apply_mask(Image.fromarray(pixels), mask))
    assert (black[mask] == 77).all() and (black[~mask] == 0).all()
    grey = np.asarray(apply_mask(Image.fromarray(pixels), mask, fill="mean", image_mean=(0.5, 0.25, 1.0)))
    assert (grey[~mask] == [128, 64, 255]).all()
    cropped = apply_mask(Image.fromarray(pixels), mask, fill="white", crop=True)
    assert cropped.size == (12, 12)  # the box, padded to a square
    crop = np.asarray(cropped)
    assert (crop[4:8] == 77).all() and (crop[:4] == 255).all() and (crop[8:] == 255).all()
    empty = apply_mask(Image.fromarray(pixels), np.zeros((20, 30), bool), crop=True)
    assert empty.size == (30, 20) and not np.asarray(empty).any()
    with pytest.raises(EvaluationError, match="fill"):
        apply_mask(Image.fromarray(pixels), mask, fill="purple")


def test_missing_models_raise_a_clear_error(tmp_path):
    missing = str(tmp_path / "no-such-clip")
    with pytest.raises(EvaluationModelNotFoundError, match="no-such-clip") as info:
        CLIPEmbedder(missing)
    assert "HF_HOME" in str(info.value) and "clip_model" in str(info.value)
    with pytest.raises(
        EvaluationModelNotFoundError, match=r"'nobody/not-a-real-dino'.*huggingface-cli download"
    ) as info:
        DINOEmbedder("nobody/not-a-real-dino", local_files_only=True)
    assert isinstance(info.value, CatVersionError)
    with pytest.raises(EvaluationModelNotFoundError, match="CLIPSeg"):
        CLIPSegMasker("nobody/not-a-real-clipseg", local_files_only=True)


def test_models_can_be_passed_as_objects(tiny_models, clip):
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(tiny_models["clip"])
    processor = CLIPProcessor.from_pretrained(tiny_models["clip"])
    embedder = CLIPEmbedder(model, processor=processor, show_progress=False)
    images = _random_images(2, seed=70)
    np.testing.assert_allclose(embedder.embed_images(images).numpy(), clip.embed_images(images).numpy(), atol=1e-6)
    np.testing.assert_allclose(embedder.embed_texts(["a dog"]).numpy(), clip.embed_texts(["a dog"]).numpy(), atol=1e-6)


# ----------------------------------------------------------------------------------------------------- prompts
def test_prompt_sets(tmp_path):
    assert len(DREAMBOOTH_OBJECT_PROMPTS) == 25 and len(DREAMBOOTH_LIVE_PROMPTS) == 25
    assert DREAMBOOTH_OBJECT_PROMPTS[:10] == DREAMBOOTH_LIVE_PROMPTS[:10]
    objects = [p.format("teapot") for p in DREAMBOOTH_OBJECT_PROMPTS]
    assert objects[0] == "a teapot in the jungle" and objects[9] == "a teapot on top of a purple rug in a forest"
    assert objects[-5:] == [
        "a red teapot",
        "a purple teapot",
        "a shiny teapot",
        "a wet teapot",
        "a cube shaped teapot",
    ]
    for text in (
        "a teapot floating in an ocean of milk",
        "a teapot on top of a dirt road",
        "a teapot on top of a white rug",
    ):
        assert text in objects
    assert len(set(objects)) == 25
    live = [p.format("dog") for p in get_prompt_set("dreambooth", class_word="dog")]
    assert "a dog wearing a santa hat" in live and "a dog in a purple wizard outfit" in live and len(set(live)) == 25
    assert get_prompt_set("dreambooth", class_word="teapot") == DREAMBOOTH_OBJECT_PROMPTS
    assert {p.category for p in CATVERSION_EDITING_PROMPTS} == {"attribute", "scene", "action", "concept_addition"}
    assert get_prompt_set("catversion")[5].format("dog") == "a dog in the snow"

    text_file = tmp_path / "prompts.txt"
    text_file.write_text("# my prompts\n[scene]\na {} in Paris\n\n[style]\nan oil painting of a {class_word}\n")
    prompts = get_prompt_set(str(text_file))
    assert [(p.format("cat"), p.category) for p in prompts] == [
        ("a cat in Paris", "scene"),
        ("an oil painting of a cat", "style"),
    ]
    json_file = tmp_path / "prompts.json"
    json_file.write_text(json.dumps({"action": ["a {} jumping"]}))
    assert get_prompt_set(str(json_file))[0].format("dog") == "a dog jumping"
    with pytest.raises(EvaluationError, match="Unknown prompt set"):
        get_prompt_set("no_such_set")


def test_aggregate_overall_is_geometric_mean_of_the_means():
    records = [
        dict(method="a", clip_t=0.36, clip_i_masked=0.25, overall=0.3),
        dict(method="a", clip_t=0.04, clip_i_masked=0.81, overall=0.18),
        dict(method="b", clip_t=0.16, clip_i_masked=1.0, overall=0.4),
    ]
    rows = aggregate(records, ["method"])
    assert [r["method"] for r in rows] == ["a", "b"] and [r["n"] for r in rows] == [2, 1]
    assert rows[0]["clip_t"] == pytest.approx(0.2) and rows[0]["clip_i_masked"] == pytest.approx(0.53)
    assert rows[0]["overall"] == pytest.approx(np.sqrt(0.2 * 0.53))  # not the mean of per-image overalls (0.24)
    assert rows[1]["overall"] == pytest.approx(0.4)


# ------------------------------------------------------------------------------------------------------ script
def _load_script():
    path = os.path.join(REPO, "examples", "evaluate_catversion.py")
    spec = importlib.util.spec_from_file_location("evaluate_catversion", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_evaluation_script_end_to_end(tmp_path, tiny_models):
    from diffusers import DiffusionPipeline
    from safetensors.torch import save_file

    import catversion_diffusers  # noqa: F401
    from catversion_diffusers.testing import tiny_stable_diffusion_pipeline

    if not hasattr(DiffusionPipeline, "load_catversion"):
        pytest.skip("pipe.load_catversion is not available yet")
    pipe_dir = str(tmp_path / "pipe")
    tiny_stable_diffusion_pipeline(str(tmp_path / "tok")).save_pretrained(pipe_dir)
    torch.manual_seed(0)
    residual = tmp_path / "my-dog" / "catversion.safetensors"
    residual.parent.mkdir()
    tensors = {
        f"text_encoder.layers.{i}.residual_{kind}": torch.randn(1, 32) for i in (2, 3, 4) for kind in ("key", "value")
    }
    save_file(
        tensors,
        str(residual),
        metadata={"format": "catversion", "format_version": "1", "logit_bias": "0.0", "class_word": "dog"},
    )
    references = tmp_path / "refs"
    references.mkdir()
    for k in range(2):
        _scene((40 * k, 150, 60), seed=80 + k)[0].resize((48, 48)).save(references / f"ref{k}.jpg")
    out = tmp_path / "eval"
    argv = [
        "--pretrained_model_name_or_path",
        pipe_dir,
        "--method",
        f"catversion={residual}",
        "--method",
        "base",
        "--reference_dir",
        str(references),
        "--scale",
        "0",
        "1.0",
        "--prompt_set",
        "dreambooth",
        "--max_prompts",
        "2",
        "--num_images_per_prompt",
        "2",
        "--num_inference_steps",
        "2",
        "--guidance_scale",
        "3.0",
        "--generation_batch_size",
        "1",
        "--clip_model",
        tiny_models["clip"],
        "--dino_model",
        tiny_models["dino"],
        "--clipseg_model",
        tiny_models["clipseg"],
        "--clip_score",
        "--local_files_only",
        "--device",
        "cpu",
        "--no_progress",
        "--output_dir",
        str(out),
    ]
    script = _load_script()
    results = script.main(argv)

    # 3 runs (catversion@0, catversion@1, base) x 2 prompts x 2 images; class word from the file's metadata.
    assert len(results["per_image"]) == 12
    assert results["config"]["concepts"][0]["class_word"] == "dog"
    assert {r["run"] for r in results["summary"]} == {"catversion@0", "catversion@1", "base"}
    assert results["per_image"][0]["prompt"] == "a dog in the jungle"  # live-subject DreamBooth prompts, class word
    for name in ("results.json", "summary.csv", "per_prompt.csv", "per_image.csv", "tradeoff.png", "grids/refs.png"):
        assert (out / name).is_file(), name
    with open(out / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12
    for row in rows:
        image = out / row["image"]
        assert image.is_file() and (out / row["mask"]).is_file()
        assert row["mask"] == row["image"][: -len(".png")] + "_mask.png"  # beside the image
        assert Image.open(image).size == (32, 32)
        for metric in ("clip_t", "clip_score", "clip_i", "clip_i_masked", "dino", "overall"):
            assert -1.0 <= float(row[metric]) <= 2.5
    assert (out / "references" / "refs" / "ref0_mask.png").is_file()
    # Same seeds for every method: image j of prompt i has seed i * 2 + j in every run.
    seeds = {(r["run"], r["prompt_index"], r["image_index"]): r["seed"] for r in results["per_image"]}
    assert all(seeds[(run, p, j)] == p * 2 + j for (run, p, j) in seeds)
    summary = {r["run"]: r for r in results["summary"]}
    for row in summary.values():
        assert row["overall"] == pytest.approx(np.sqrt(max(row["clip_t"], 0) * max(row["clip_i_masked"], 0)))
    with open(out / "summary.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 3
    # Paired seeds: at strength 0 the residual method reproduces the base model's images exactly; at strength 1 the
    # images differ.
    pixels = {
        (r["run"], r["prompt_index"], r["image_index"]): np.asarray(Image.open(out / r["image"]))
        for r in results["per_image"]
    }
    for p, j in [(0, 0), (0, 1), (1, 0), (1, 1)]:
        assert np.array_equal(pixels[("catversion@0", p, j)], pixels[("base", p, j)])
        assert not np.array_equal(pixels[("catversion@1", p, j)], pixels[("base", p, j)])
    assert not np.array_equal(pixels[("base", 0, 0)], pixels[("base", 0, 1)])  # different seeds, different images

    # A second run reuses the images on disk and gives the same scores.
    mtimes = {r["image"]: os.path.getmtime(out / r["image"]) for r in results["per_image"]}
    again = script.main(argv)
    assert {r["image"]: os.path.getmtime(out / r["image"]) for r in again["per_image"]} == mtimes
    np.testing.assert_allclose(
        [r["clip_i_masked"] for r in again["per_image"]], [r["clip_i_masked"] for r in results["per_image"]], atol=1e-6
    )
    # Without masks and DINO: no masked score, and the overall falls back to the plain CLIP image alignment.
    plain = script.main(argv + ["--no_masks", "--no_dino"])
    assert plain["image_alignment_metric"] == "clip_i"
    assert all("clip_i_masked" not in r and "dino" not in r for r in plain["per_image"])
    np.testing.assert_allclose(
        [r["clip_i"] for r in plain["per_image"]], [r["clip_i"] for r in results["per_image"]], atol=1e-6
    )


def test_evaluation_script_options(tmp_path):
    from safetensors.torch import save_file

    script = _load_script()
    assert script.parse_methods(["cv=./a.safetensors", "base", "sd=none"], ["./x/my-cat/catversion.safetensors"]) == {
        "cv": "./a.safetensors",
        "base": None,
        "sd": None,
        "my-cat": "./x/my-cat/catversion.safetensors",
    }
    with pytest.raises(EvaluationError, match="given twice"):
        script.parse_methods(["a=1", "a=2"], [])
    with pytest.raises(SystemExit):
        script.parse_args(["--pretrained_model_name_or_path", "m", "--output_dir", "o", "--reference_dir", "r"])

    refs = tmp_path / "refs"
    refs.mkdir()
    Image.new("RGB", (8, 8)).save(refs / "a.png")
    residual = tmp_path / "cat.safetensors"
    tensors = {f"text_encoder.layers.4.residual_{kind}": torch.zeros(1, 32) for kind in ("key", "value")}
    save_file(tensors, str(residual), metadata={"format": "catversion", "format_version": "1", "class_word": "cat"})
    concepts_file = tmp_path / "concepts.json"
    concepts_file.write_text(
        json.dumps(
            [
                {
                    "name": "kitty",
                    "reference_dir": str(refs),
                    "methods": {"cv": str(residual), "base": None},
                    "prompt_set": "dreambooth",
                },
                {"name": "toy", "class_word": "toy", "reference_dir": str(refs), "methods": {"base": None}},
            ]
        )
    )
    args = script.parse_args(
        [
            "--pretrained_model_name_or_path",
            "m",
            "--output_dir",
            str(tmp_path / "o"),
            "--concepts_file",
            str(concepts_file),
            "--scale",
            "0.5",
            "1",
            "--num_images_per_prompt",
            "3",
            "--max_prompts",
            "4",
            "--mask_fill",
            "1,2,3",
        ]
    )
    assert args.mask_fill == (1, 2, 3)
    kitty, toy = script.build_concepts(args)
    assert kitty.class_word == "cat" and kitty.prompts[3].format("cat") == "a cat on a cobblestone street"
    assert toy.class_word == "toy" and toy.prompts[0].category == "attribute"  # --prompt_set default: catversion
    runs = script.plan_runs([kitty, toy], args.scale, args.output_dir)
    assert [(r.concept.name, r.name) for r in runs] == [
        ("kitty", "cv@0.5"),
        ("kitty", "cv@1"),
        ("kitty", "base"),
        ("toy", "base"),
    ]
    records = script.plan_images(runs, args)
    assert len(records) == 4 * 4 * 3 and len({r["image"] for r in records}) == len(records)
    assert [r["seed"] for r in records[:6]] == [0, 1, 2, 3, 4, 5]

    concepts_file.write_text(json.dumps([{"name": "x", "reference_dir": str(refs), "methods": {"base": None}}]))
    with pytest.raises(EvaluationError, match="class word"):
        script.build_concepts(args)


def test_images_and_masks_given_as_folders(tmp_path, clip):
    refs = tmp_path / "refs"
    refs.mkdir()
    # Masks saved at half size: even box coordinates make the nearest-neighbour resize back exact.
    scenes = [_scene((200, 10 * k, 10), box=(4 + 2 * k, 6, 20 + 2 * k, 26), seed=90 + k) for k in range(2)]
    for k, (image, mask) in enumerate(scenes):
        image.save(refs / f"r{k}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).resize((16, 16), Image.NEAREST).save(refs / f"r{k}_mask.png")
    generated = [_scene((10, 10, 200), seed=95)[0]]
    gen_mask = [_scene((10, 10, 200), seed=95)[1]]
    from_folders = masked_clip_image_alignment(generated, str(refs), gen_mask, str(refs), clip=clip)
    from_arrays = masked_clip_image_alignment(
        generated, [s[0] for s in scenes], gen_mask, [s[1] for s in scenes], clip=clip
    )
    assert from_folders.shape == (1, 2)  # the *_mask.png files are not taken for reference images
    np.testing.assert_allclose(from_folders.numpy(), from_arrays.numpy(), atol=1e-6)
    result = evaluate_images(
        generated, "a dog", str(refs), generated_masks=gen_mask, reference_masks=str(refs), clip=clip
    )
    assert result["mean"]["clip_i_masked"] == pytest.approx(float(from_arrays.mean()), abs=1e-6)
