"""Reproduce the structure of the paper's Tables 1 and 3 in the bundled offline world.

    python examples/world/evidence.py --output_dir evidence_output            # full run (see docs/world.md)
    python examples/world/evidence.py --steps 20 --seeds 1 --quick            # smoke run

Methods, each trained on the same reference images of a personal concept with the same steps and learning rate:

- ``catversion``        CatVersion on the last three text-encoder layers (paper default; Table 1 "CatVersion");
- ``catversion_all``    CatVersion on every layer (Table 3 "w/o feature-dense space", all-layer variant);
- ``catversion_first``  CatVersion on the first three layers (shallow layers);
- ``textual_inversion`` a learned token embedding, saved in diffusers' format and loaded with diffusers' own
                        ``pipe.load_textual_inversion`` (Table 1 "Textual Inversion");
- ``base``              the untrained base model prompted with the class word.

Scores (see ``catversion_diffusers.demo.score_concept_images``): text alignment (prompt attributes present, from
pixels), masked image alignment with the world's CLIP (paper eq. 6, exact reference masks), overall (geometric mean),
and the exact concept-match rate; mean and 95% confidence interval over training seeds. Also the fidelity /
editability curve of CatVersion over the runtime scale.
"""

import argparse
import json
import math
import os
import tempfile
from typing import Dict, List

import numpy as np
import torch
import torch.nn.functional as F

from catversion_diffusers.demo import edit_prompts, generate, score_concept_images, train_world_concept
from catversion_diffusers.world import get_concept, load_eval_clip, load_world_pipeline

METHODS = ("catversion", "catversion_all", "catversion_first", "textual_inversion", "base")
PLACEHOLDER = "<concept>"


def train_catversion(concept, layers, steps: int, lr: float, seed: int, output_dir: str) -> str:
    return train_world_concept(concept, output_dir, steps, lr, seed, residual_layers=layers).path


def train_textual_inversion(concept, steps: int, lr: float, seed: int, output_dir: str) -> str:
    """Textual inversion as in diffusers' example (one new token, initialised from the class word, only its row of
    the embedding table trains), with the same data, noise schedule and loss as CatVersion. Saved as
    ``{token: embedding}`` safetensors, the format ``load_textual_inversion`` reads."""
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    pipe = load_world_pipeline()
    tokenizer, text_encoder, unet, vae = pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae
    tokenizer.add_tokens([PLACEHOLDER])
    token_id = tokenizer.convert_tokens_to_ids(PLACEHOLDER)
    class_id = tokenizer(concept.class_word, add_special_tokens=False).input_ids[0]
    text_encoder.resize_token_embeddings(len(tokenizer))
    for module in (text_encoder, unet, vae):
        module.requires_grad_(False)
    table = text_encoder.get_input_embeddings().weight
    embedding = torch.nn.Parameter(table[class_id].detach().clone())
    optimizer = torch.optim.AdamW([embedding], lr=lr)

    images = []
    for image in concept.reference_images():
        array = torch.from_numpy(np.asarray(image)).permute(2, 0, 1).float() / 127.5 - 1.0
        images += [array, array.flip(-1)] if concept.mirror_invariant else [array]
    with torch.no_grad():
        posterior = vae.encode(torch.stack(images)).latent_dist
    ids = tokenizer(f"a {PLACEHOLDER}", padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    scheduler = pipe.scheduler
    alphas = scheduler.alphas_cumprod
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        index = torch.randint(len(images), (1,), generator=generator)
        latents = (posterior.mean[index] + posterior.std[index] * torch.randn(posterior.mean[index].shape, generator=generator))
        latents = latents * vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=generator)
        t = torch.randint(0, len(alphas), (1,), generator=generator)
        noisy = alphas[t].sqrt().view(-1, 1, 1, 1) * latents + (1 - alphas[t]).sqrt().view(-1, 1, 1, 1) * noise
        inputs = text_encoder.get_input_embeddings()(ids)
        inputs = torch.where((ids == token_id).unsqueeze(-1), embedding.expand_as(inputs), inputs)
        hidden = _encode_from_embeddings(text_encoder, inputs)
        loss = F.mse_loss(unet(noisy, t, hidden).sample, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    path = os.path.join(output_dir, "learned_embeds.safetensors")
    os.makedirs(output_dir, exist_ok=True)
    save_file({PLACEHOLDER: embedding.detach().clone()}, path)
    return path


def _encode_from_embeddings(text_encoder, token_embeddings):
    """Run the CLIP text model from token embeddings (position embeddings added as the model does)."""
    model = getattr(text_encoder, "text_model", text_encoder)
    positions = model.embeddings.position_embedding(model.embeddings.position_ids[:, : token_embeddings.shape[1]])
    hidden = token_embeddings + positions
    length = hidden.shape[1]
    causal = torch.full((length, length), torch.finfo(hidden.dtype).min).triu(1).view(1, 1, length, length)
    for layer in model.encoder.layers:
        hidden = layer(hidden, causal)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
    return model.final_layer_norm(hidden)


def images_for(method: str, source: str, concept, prompts, image_seeds, steps_inf, guidance, scale=1.0):
    pipe = load_world_pipeline()
    if method == "textual_inversion":
        pipe.load_textual_inversion(source, token=PLACEHOLDER)
        prompts = [p.replace(concept.class_word, PLACEHOLDER, 1) for p in prompts]
    elif method != "base":
        pipe.load_catversion(source, adapter_name="concept")
        pipe.set_catversion_scale(scale)
    return generate(pipe, prompts, image_seeds, steps_inf, guidance)


def mean_ci(values: List[float]) -> Dict[str, float]:
    values = np.asarray(values, dtype=np.float64)
    half = 1.96 * values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return {"mean": float(values.mean()), "ci95": float(half), "n": int(len(values))}


def main(argv=None):
    parser = argparse.ArgumentParser(description="CatVersion evidence in the offline world (Tables 1 and 3).")
    parser.add_argument("--output_dir", default="evidence_output")
    parser.add_argument("--concepts", nargs="+", default=["striped_circle"])
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per method")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--learning_rate", type=float, default=1e-2)
    parser.add_argument("--ti_learning_rate", type=float, default=5e-3)
    parser.add_argument("--image_seeds", type=int, default=4)
    parser.add_argument("--num_inference_steps", type=int, default=25)
    parser.add_argument("--guidance_scale", type=float, default=8.0)
    parser.add_argument("--scales", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0, 1.5, 2.0])
    parser.add_argument("--quick", action="store_true", help="skip the scale curve")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    os.makedirs(args.output_dir, exist_ok=True)
    eval_clip = load_eval_clip()[0]
    image_seeds = list(range(1000, 1000 + args.image_seeds))
    results = {"settings": vars(args), "runs": [], "tables": {}, "scale_curve": {}}
    work = tempfile.mkdtemp(prefix="evidence-")
    for concept_name in args.concepts:
        concept = get_concept(concept_name)
        prompts = edit_prompts(concept.class_word)
        prompts_rep = [p for p in prompts for _ in image_seeds]
        num_layers = len(load_world_pipeline().text_encoder.encoder.layers)
        layer_sets = {
            "catversion": None,
            "catversion_all": list(range(num_layers)),
            "catversion_first": [0, 1, 2],
        }
        for seed in range(args.seeds):
            for method in METHODS:
                if method == "base" and seed > 0:
                    continue
                out = os.path.join(work, concept_name, method, str(seed))
                if method == "base":
                    source = None
                elif method == "textual_inversion":
                    source = train_textual_inversion(concept, args.steps, args.ti_learning_rate, seed, out)
                else:
                    source = train_catversion(concept, layer_sets[method], args.steps, args.learning_rate, seed, out)
                images = images_for(method, source, concept, prompts, image_seeds, args.num_inference_steps, args.guidance_scale)
                scores = score_concept_images(images, prompts_rep, concept, eval_clip)
                scores.pop("per_image")
                results["runs"].append({"concept": concept_name, "method": method, "seed": seed, **scores})
                print(json.dumps(results["runs"][-1]), flush=True)
                if method == "catversion" and seed == 0 and not args.quick:
                    for scale in args.scales:
                        curve_images = images_for(method, source, concept, prompts, image_seeds, args.num_inference_steps, args.guidance_scale, scale)
                        s = score_concept_images(curve_images, prompts_rep, concept, eval_clip)
                        results["scale_curve"].setdefault(concept_name, []).append(
                            {"scale": scale, **{k: s[k] for k in ("text_alignment", "image_alignment", "overall", "concept_match")}}
                        )
    for method in METHODS:
        runs = [r for r in results["runs"] if r["method"] == method]
        results["tables"][method] = {
            k: mean_ci([r[k] for r in runs]) for k in ("text_alignment", "image_alignment", "overall", "concept_match")
        }
    with open(os.path.join(args.output_dir, "evidence.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    lines = ["| method | text alignment | masked image alignment | overall | concept match |", "| --- | --- | --- | --- | --- |"]
    for method, row in results["tables"].items():
        cells = [f"{row[k]['mean']:.3f} ± {row[k]['ci95']:.3f}" for k in ("text_alignment", "image_alignment", "overall", "concept_match")]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    with open(os.path.join(args.output_dir, "evidence.md"), "w", encoding="utf-8") as f:
        f.write(table + "\n")
    if results["scale_curve"]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 4))
        for name, curve in results["scale_curve"].items():
            ax.plot([c["image_alignment"] for c in curve], [c["text_alignment"] for c in curve], "o-", label=name)
            for c in curve:
                ax.annotate(f"{c['scale']:g}", (c["image_alignment"], c["text_alignment"]))
        ax.set_xlabel("masked image alignment (fidelity)")
        ax.set_ylabel("text alignment (editability)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(args.output_dir, "scale_curve.png"), dpi=120)
    print(table)
    return results


if __name__ == "__main__":
    main()
