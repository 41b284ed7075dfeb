"""The main job: CatVersion end to end on the bundled offline world, in a few minutes on a CPU.

    python -m catversion_diffusers.demo --output_dir demo_output

1. loads the bundled world model (a small Stable Diffusion pipeline, ``catversion_diffusers.world``);
2. trains CatVersion residuals on the reference images of one personal concept (a patterned shape the model never
   saw) with the library trainer, prompting with the class word only ("a circle");
3. loads the residual file into a fresh stock pipeline with ``pipe.load_catversion``;
4. generates the base-class prompt and edited prompts ("a circle on a blue background") with and without the
   concept, from the same seeds;
5. writes ``grid.png`` (labelled), ``references.png``, ``metrics.json`` and the residual file.

The functions here (``generate``, ``score_concept_images``, ``labelled_grid``) are also used by the evidence script
``examples/world/evidence.py``.
"""

import argparse
import json
import math
import os
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .utils import get_logger

logger = get_logger(__name__)


# ------------------------------------------------------------------------------------------------------ generation
def generate(
    pipe, prompts: Sequence[str], seeds: Sequence[int], num_inference_steps: int = 25, guidance_scale: float = 5.0
) -> List[np.ndarray]:
    """One uint8 image per (prompt, seed), prompt-major; seed ``s`` uses ``torch.Generator().manual_seed(s)``."""
    from .world import generator as G

    prompts_rep = [p for p in prompts for _ in seeds]
    generators = [torch.Generator("cpu").manual_seed(int(s)) for _ in prompts for s in seeds]
    out = pipe(
        prompts_rep,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        generator=generators,
        output_type="np",
    )
    return [G.to_uint8_array(image) for image in out.images]


def edit_prompts(class_word: str) -> List[str]:
    """The base-class prompt and one scene edit per world background."""
    from .world import BACKGROUNDS

    return [f"a {class_word}"] + [f"a {class_word} on a {bg} background" for bg in BACKGROUNDS]


# ------------------------------------------------------------------------------------------------------ metrics
def score_concept_images(
    images: Sequence[np.ndarray], prompts: Sequence[str], concept, eval_clip=None
) -> Dict[str, object]:
    """The paper's three numbers in the world, plus exact pixel checks.

    - ``text_alignment``: share of the prompt's stated attributes (shape, background) found in the image by the exact
      pixel checkers (the world's stand-in for CLIP text alignment, which is what it approximates);
    - ``image_alignment``: masked CLIP image alignment (paper eq. 6) with the world's own CLIP: cosine between the
      generated image and each reference, both with everything outside the object's mask set to black (generated:
      the detected object; references: exact masks), averaged over all pairs;
    - ``overall``: geometric mean of the two;
    - ``concept_match``: share of images in which the pixel checker finds the concept's pattern on the right shape.
    """
    from .world import clip_image_embeddings, concept_match, load_eval_clip
    from .world import generator as G

    if eval_clip is None:
        eval_clip = load_eval_clip()[0]
    text_scores, matches, masked = [], [], []
    for image, prompt in zip(images, prompts):
        wanted = G.parse_caption(prompt)
        found = G.analyze_image(image)
        checks = [found[k] == wanted[k] for k in ("shape", "background") if wanted.get(k) is not None]
        match = concept_match(image, concept)
        if match["shape_ok"] and wanted.get("shape") is not None:
            checks[0] = True  # a patterned object is the right shape even when its median colour is unusual
        text_scores.append(float(np.mean(checks)) if checks else 1.0)
        matches.append(bool(match["match"]))
        masked.append(image * match["mask"][..., None].astype(np.uint8))
    references = [image * mask[..., None].astype(np.uint8) for image, mask in concept.references()]
    generated_emb = clip_image_embeddings(eval_clip, masked)
    reference_emb = clip_image_embeddings(eval_clip, references)
    per_image_alignment = (generated_emb @ reference_emb.T).mean(dim=1).tolist()
    text = float(np.mean(text_scores))
    image_alignment = float(np.mean(per_image_alignment))
    return {
        "text_alignment": text,
        "image_alignment": image_alignment,
        "overall": math.sqrt(max(text, 0.0) * max(image_alignment, 0.0)),
        "concept_match": float(np.mean(matches)),
        "per_image": [
            {"prompt": p, "text_alignment": t, "image_alignment": a, "concept_match": m}
            for p, t, a, m in zip(prompts, text_scores, per_image_alignment, matches)
        ],
    }


# ------------------------------------------------------------------------------------------------------ pictures
def labelled_grid(
    rows: Sequence[Sequence[np.ndarray]], row_labels: Sequence[str], column_labels: Sequence[str], upscale: int = 4
):
    """A PIL image: a header row of column labels, then one row of images per label (nearest-neighbour upscaled)."""
    from PIL import Image, ImageDraw

    cell = rows[0][0].shape[0] * upscale
    label_width, header = 230, 22
    grid = Image.new("RGB", (label_width + cell * len(column_labels), header + cell * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    for j, text in enumerate(column_labels):
        draw.text((label_width + j * cell + 4, 5), text, fill="black")
    for i, (row, text) in enumerate(zip(rows, row_labels)):
        draw.text((4, header + i * cell + cell // 2 - 6), text, fill="black")
        for j, image in enumerate(row):
            tile = Image.fromarray(image).resize((cell, cell), Image.NEAREST)
            grid.paste(tile, (label_width + j * cell, header + i * cell))
    return grid


# ------------------------------------------------------------------------------------------------------ main job
def train_world_concept(
    concept, output_dir: str, max_train_steps: int, learning_rate: float, seed: int, residual_layers=None
):
    """Train CatVersion on a world concept's references with the library trainer; returns its training result."""
    from .training import CatVersionTrainer, CatVersionTrainingConfig
    from .world import load_world_pipeline

    config = CatVersionTrainingConfig(
        class_word=concept.class_word,
        output_dir=output_dir,
        adapter_name=concept.name,
        resolution=32,
        max_train_steps=max_train_steps,
        learning_rate=learning_rate,
        residual_layers=residual_layers,
        checkpointing_steps=None,
        report_to=None,
        seed=seed,
        overwrite_output_dir=True,
        mixed_precision="no",
        flip_p=0.5 if concept.mirror_invariant else 0.0,  # a flipped two-tone object is another object
    )
    return CatVersionTrainer(load_world_pipeline(), config).train(concept.reference_images())


def run_demo(
    output_dir: str = "demo_output",
    concept_name: str = "striped_circle",
    max_train_steps: int = 800,
    learning_rate: float = 1e-2,
    num_seeds: int = 3,
    num_inference_steps: int = 25,
    guidance_scale: float = 8.0,
    seed: int = 0,
) -> Dict[str, object]:
    """Train, save, reload into a stock pipeline, generate and score. Returns the metrics written to metrics.json."""
    from .world import get_concept, load_eval_clip, load_world_pipeline

    os.makedirs(output_dir, exist_ok=True)
    concept = get_concept(concept_name)
    started = time.perf_counter()

    # 1-2. Train on the references with the class word only.
    result = train_world_concept(concept, os.path.join(output_dir, concept.name), max_train_steps, learning_rate, seed)
    train_seconds = time.perf_counter() - started
    logger.info(f"Trained {concept.name} in {train_seconds:.1f} s; residual file: {result.path}")

    # 3. A fresh stock pipeline, the file loaded the way users load it.
    pipe = load_world_pipeline()
    adapter = pipe.load_catversion(result.path)

    # 4. Same prompts and seeds without (scale 0 is exactly the base model) and with the concept.
    prompts = edit_prompts(concept.class_word)
    seeds = list(range(seed, seed + num_seeds))
    pipe.set_catversion_scale(0.0)
    base_images = generate(pipe, prompts, seeds, num_inference_steps, guidance_scale)
    pipe.set_catversion_scale(1.0)
    personal_images = generate(pipe, prompts, seeds, num_inference_steps, guidance_scale)

    # 5. Pictures and numbers.
    eval_clip = load_eval_clip()[0]
    prompts_rep = [p for p in prompts for _ in seeds]
    metrics = {
        "concept": concept.name,
        "class_word": concept.class_word,
        "description": concept.description,
        "adapter_name": adapter,
        "residual_file": result.path,
        "train_steps": result.global_step,
        "train_seconds": round(train_seconds, 1),
        "final_loss": float(np.mean(result.losses[-20:])) if result.losses else None,
        "sampling": {"num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale, "seeds": seeds},
        "base_model": score_concept_images(base_images, prompts_rep, concept, eval_clip),
        "catversion": score_concept_images(personal_images, prompts_rep, concept, eval_clip),
    }
    rows, labels = [], []
    for i, prompt in enumerate(prompts):
        chunk = slice(i * len(seeds), (i + 1) * len(seeds))
        rows.append(base_images[chunk] + personal_images[chunk])
        labels.append(prompt)
    columns = [f"base seed {s}" for s in seeds] + [f"CatVersion seed {s}" for s in seeds]
    labelled_grid(rows, labels, columns).save(os.path.join(output_dir, "grid.png"))
    references = [image for image, _ in concept.references()]
    labelled_grid([references], ["references"], [f"ref {i}" for i in range(len(references))]).save(
        os.path.join(output_dir, "references.png")
    )
    with open(os.path.join(output_dir, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=2)
    return metrics


def main(argv: Optional[List[str]] = None) -> Dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="demo_output")
    parser.add_argument("--concept", default="striped_circle", help="one of catversion_diffusers.world.CONCEPTS")
    parser.add_argument("--max_train_steps", type=int, default=800)
    parser.add_argument("--learning_rate", type=float, default=1e-2, help="the authors' effective rate")
    parser.add_argument("--num_seeds", type=int, default=3)
    parser.add_argument("--num_inference_steps", type=int, default=25)
    parser.add_argument("--guidance_scale", type=float, default=8.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("catversion_diffusers").setLevel(logging.INFO)
    metrics = run_demo(
        output_dir=args.output_dir,
        concept_name=args.concept,
        max_train_steps=args.max_train_steps,
        learning_rate=args.learning_rate,
        num_seeds=args.num_seeds,
        num_inference_steps=args.num_inference_steps,
        guidance_scale=args.guidance_scale,
        seed=args.seed,
    )
    summary = {k: {m: round(metrics[k][m], 4) for m in ("text_alignment", "image_alignment", "overall", "concept_match")}
               for k in ("base_model", "catversion")}
    print(json.dumps({"output_dir": args.output_dir, **summary}, indent=2))
    return metrics


if __name__ == "__main__":
    main()
