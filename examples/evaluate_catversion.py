#!/usr/bin/env python
"""Evaluate CatVersion concepts with the paper's metrics (section 4.3) and DreamBooth's.

For every concept and every method (a residual file, or the base model with no residuals), at every strength in
``--scale``, this script generates images for a prompt set with fixed seeds (the same seeds for every method, so the
comparison is paired), computes per image the CLIP text alignment, the masked CLIP image alignment (eq. 6), the
plain CLIP image alignment and the DINO similarity against the concept's reference images, and writes:

    OUTPUT_DIR/
      results.json          configuration, summaries, per-category, per-prompt and per-image scores
      summary.csv           one row per concept x method x scale (+ "all" rows over every concept)
      per_prompt.csv        one row per concept x method x scale x prompt
      per_image.csv         one row per generated image
      tradeoff.png          text alignment (editability) against image alignment (fidelity), one point per
                            method / strength
      grids/CONCEPT.png     references, then one row per method / strength, one column per prompt
      images/CONCEPT/RUN/   the generated images, each with its concept mask beside it (NAME_mask.png)
      references/CONCEPT/   copies of the reference images with their masks beside them

Images already on disk are reused (delete them or pass ``--overwrite`` to generate again), so metrics can be
recomputed with other options without generating again.

Example (one concept, CatVersion against the base model, a strength sweep):

    python examples/evaluate_catversion.py \
        --pretrained_model_name_or_path stable-diffusion-v1-5/stable-diffusion-v1-5 \
        --method catversion=./my-dog --method base \
        --reference_dir ./data/my_dog --class_word dog \
        --scale 0.5 0.75 1.0 --prompt_set catversion --num_images_per_prompt 4 \
        --output_dir ./eval/my-dog

Several concepts: ``--concepts_file concepts.json`` holding a list of
``{"name": ..., "class_word": ..., "reference_dir": ..., "reference_mask_dir": ..., "methods": {name: source or
null}, "prompt_set": ...}`` (``reference_mask_dir`` and ``prompt_set`` optional; ``methods`` defaults to the
``--method`` options). See docs/evaluation.md.
"""

import argparse
import gc
import json
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import torch
from tqdm.auto import tqdm

import catversion_diffusers  # noqa: F401  (adds load_catversion() & co. to diffusers pipelines)
from catversion_diffusers import load_catversion_state
from catversion_diffusers.evaluation import (
    DEFAULT_CLIP_MODEL,
    DEFAULT_CLIPSEG_MODEL,
    DEFAULT_CLIPSEG_THRESHOLD,
    DEFAULT_DINO_MODEL,
    METRIC_NAMES,
    CLIPEmbedder,
    CLIPSegMasker,
    DINOEmbedder,
    EvaluationError,
    EvaluationModelNotFoundError,
    PromptTemplate,
    aggregate,
    evaluate_images,
    get_prompt_set,
    list_images,
    load_image,
    load_masks,
    make_grid,
    mask_area,
    mask_path_for,
    plot_tradeoff,
    resolve_device,
    save_mask,
    write_csv,
    write_json,
)
from catversion_diffusers.utils import get_logger

logger = get_logger("evaluate_catversion")

BASE_SOURCES = ("", "none", "base", "null")


# --------------------------------------------------------------------------------------------------------- options
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Generate images with fixed seeds and score them with CLIP text alignment, masked CLIP image "
        "alignment (CatVersion eq. 6), CLIP-I, DINO and the overall geometric mean.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = parser.add_argument_group("model and methods")
    g.add_argument(
        "--pretrained_model_name_or_path", required=True, help="Base diffusers pipeline (Hub id or folder)."
    )
    g.add_argument("--revision", default=None)
    g.add_argument("--variant", default=None, help="e.g. fp16")
    g.add_argument(
        "--method",
        action="append",
        default=[],
        metavar="NAME[=SOURCE]",
        help="A method to evaluate: NAME=SOURCE with SOURCE a residual file, folder or Hub repo id; NAME alone or "
        "SOURCE 'none' means the base model without residuals. Repeat to compare methods.",
    )
    g.add_argument(
        "--residual",
        action="append",
        default=[],
        metavar="SOURCE",
        help="Shorthand for --method NAME=SOURCE, NAME taken from the file or folder name.",
    )
    g.add_argument(
        "--scale",
        type=float,
        nargs="+",
        default=[1.0],
        help="CatVersion strengths to evaluate for every residual method (a sweep gives one point per strength).",
    )
    g = parser.add_argument_group("concept")
    g.add_argument("--reference_dir", default=None, help="Folder of the concept's reference (training) images.")
    g.add_argument("--reference_mask_dir", default=None, help="Folder of user masks for the reference images.")
    g.add_argument("--class_word", default=None, help="Class word (default: from the residual file's metadata).")
    g.add_argument("--concept_name", default=None, help="Default: the reference folder's name.")
    g.add_argument("--concepts_file", default=None, help="JSON list of concepts (see the module docstring).")
    g = parser.add_argument_group("generation")
    g.add_argument(
        "--prompt_set",
        default="catversion",
        help="'catversion' (the paper's four editing dimensions), 'dreambooth' (25 prompts, object or live subject "
        "by class word), 'dreambooth_object', 'dreambooth_live', or a prompt file (.txt / .json).",
    )
    g.add_argument("--max_prompts", type=int, default=None, help="Use only the first N prompts (quick runs).")
    g.add_argument("--num_images_per_prompt", type=int, default=4)
    g.add_argument(
        "--seed", type=int, default=0, help="Image j of prompt i uses seed + i * num_images_per_prompt + j."
    )
    g.add_argument("--num_inference_steps", type=int, default=50)
    g.add_argument("--guidance_scale", type=float, default=10.0)
    g.add_argument("--scheduler", choices=["ddim", "default"], default="ddim", help="Paper: DDIM, 50 steps, w = 10.")
    g.add_argument("--negative_prompt", default=None)
    g.add_argument("--height", type=int, default=None)
    g.add_argument("--width", type=int, default=None)
    g.add_argument("--generation_batch_size", type=int, default=4)
    g.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None, help="Default: fp16 on GPU.")
    g.add_argument("--disable_safety_checker", action="store_true", help="Blacked-out images would skew the scores.")
    g.add_argument("--overwrite", action="store_true", help="Generate again images that already exist.")
    g = parser.add_argument_group("metrics")
    g.add_argument("--clip_model", default=DEFAULT_CLIP_MODEL, help="CLIP for text and image alignment.")
    g.add_argument("--dino_model", default=DEFAULT_DINO_MODEL)
    g.add_argument("--no_dino", action="store_true", help="Skip the DINO similarity.")
    g.add_argument("--clipseg_model", default=DEFAULT_CLIPSEG_MODEL)
    g.add_argument(
        "--no_masks", action="store_true", help="Skip the masked CLIP image alignment (overall uses CLIP-I)."
    )
    g.add_argument("--mask_prompt", default=None, help="CLIPSeg prompt (default: the class word).")
    g.add_argument("--mask_threshold", type=float, default=DEFAULT_CLIPSEG_THRESHOLD, help="On CLIPSeg's sigmoid.")
    g.add_argument("--mask_fill", default="black", help="Colour outside the mask: black, white, mean, or R,G,B.")
    g.add_argument("--mask_crop", action="store_true", help="Crop masked images to the mask's box (padded square).")
    g.add_argument("--empty_mask", choices=["blank", "full", "error"], default="blank")
    g.add_argument("--clip_score", action="store_true", help="Also report CLIPScore = 2.5 * max(cos, 0).")
    g.add_argument("--batch_size", type=int, default=16, help="Images per forward pass of the metric models.")
    g.add_argument("--local_files_only", action="store_true", help="Never try to download models.")
    g = parser.add_argument_group("output")
    g.add_argument("--output_dir", required=True)
    g.add_argument("--grid_cell_size", type=int, default=128)
    g.add_argument("--device", default=None, help="Default: cuda when available.")
    g.add_argument("--no_progress", action="store_true")
    args = parser.parse_args(argv)
    if not args.method and not args.residual and not args.concepts_file:
        parser.error("give at least one --method or --residual (or a --concepts_file with methods)")
    if not args.concepts_file and not args.reference_dir:
        parser.error("give --reference_dir (or --concepts_file)")
    if args.num_images_per_prompt < 1 or args.generation_batch_size < 1 or args.batch_size < 1:
        parser.error("--num_images_per_prompt, --generation_batch_size and --batch_size must be at least 1")
    if "," in args.mask_fill:
        args.mask_fill = tuple(int(c) for c in args.mask_fill.split(","))
    return args


# ------------------------------------------------------------------------------------------------------ planning
@dataclass
class Concept:
    name: str
    class_word: str
    references: List[str]
    reference_mask_dir: Optional[str]
    methods: Dict[str, Optional[str]]
    prompts: List[PromptTemplate]
    states: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Run:
    concept: Concept
    method: str
    source: Optional[str]
    scale: Optional[float]
    name: str
    directory: str


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "x"


def _method_name_from_source(source: str) -> str:
    path = os.path.normpath(source)
    stem = os.path.splitext(os.path.basename(path))[0]
    if stem in ("catversion", "pytorch_adapter") and os.path.splitext(path)[1]:
        stem = os.path.basename(os.path.dirname(os.path.abspath(path)))
    return stem or "catversion"


def parse_methods(method_args: Sequence[str], residual_args: Sequence[str]) -> Dict[str, Optional[str]]:
    """``{name: source or None}`` from ``--method NAME[=SOURCE]`` and ``--residual SOURCE``."""
    methods: Dict[str, Optional[str]] = {}
    entries = [(m.split("=", 1) if "=" in m else (m, "")) for m in method_args]
    entries += [(_method_name_from_source(r), r) for r in residual_args]
    for name, source in entries:
        name = name.strip()
        if not name:
            raise EvaluationError(f"A method needs a name: --method NAME=SOURCE (got {source!r}).")
        if name in methods:
            raise EvaluationError(f"Method {name!r} is given twice; give each method a distinct name.")
        methods[name] = None if source.strip().lower() in BASE_SOURCES else source.strip()
    return methods


def build_concepts(args: argparse.Namespace) -> List[Concept]:
    default_methods = parse_methods(args.method, args.residual)
    if args.concepts_file:
        with open(args.concepts_file, encoding="utf-8") as f:
            specs = json.load(f)
        if isinstance(specs, dict):
            specs = [specs]
    else:
        specs = [
            dict(
                name=args.concept_name,
                class_word=args.class_word,
                reference_dir=args.reference_dir,
                reference_mask_dir=args.reference_mask_dir,
            )
        ]
    concepts, names = [], set()
    for spec in specs:
        if not spec.get("reference_dir"):
            raise EvaluationError(f"Concept {spec!r} has no 'reference_dir'.")
        references = list_images(spec["reference_dir"])
        name = spec.get("name") or os.path.basename(os.path.normpath(spec["reference_dir"]))
        if _safe(name) in names:
            raise EvaluationError(f"Two concepts are named {name!r}; give them distinct names.")
        names.add(_safe(name))
        methods = dict(default_methods)
        if spec.get("methods"):
            methods = {
                k: (None if (v is None or str(v).lower() in BASE_SOURCES) else str(v))
                for k, v in spec["methods"].items()
            }
        if not methods:
            raise EvaluationError(f"Concept {name!r} has no methods to evaluate.")
        states = {}
        for method, source in methods.items():
            if source is not None:
                states[method] = load_catversion_state(source)
        class_word = spec.get("class_word")
        if not class_word:
            found = {s.metadata.get("class_word") for s in states.values()} - {None, ""}
            if len(found) != 1:
                raise EvaluationError(
                    f"Give the class word of concept {name!r} (--class_word or 'class_word' in the concepts file): "
                    + (
                        "the residual files name none."
                        if not found
                        else f"the residual files disagree: {sorted(found)}."
                    )
                )
            class_word = found.pop()
        prompts = get_prompt_set(spec.get("prompt_set") or args.prompt_set, class_word=class_word)
        if args.max_prompts:
            prompts = prompts[: args.max_prompts]
        concepts.append(
            Concept(name, class_word, references, spec.get("reference_mask_dir") or None, methods, prompts, states)
        )
    return concepts


def plan_runs(concepts: Sequence[Concept], scales: Sequence[float], output_dir: str) -> List[Run]:
    runs = []
    for concept in concepts:
        for method, source in concept.methods.items():
            for scale in [None] if source is None else list(dict.fromkeys(scales)):
                name = method if scale is None or len(scales) == 1 else f"{method}@{scale:g}"
                dirname = _safe(method if scale is None or len(scales) == 1 else f"{method}_scale{scale:g}")
                directory = os.path.join(output_dir, "images", _safe(concept.name), dirname)
                runs.append(Run(concept, method, source, scale, name, directory))
    return runs


def plan_images(runs: Sequence[Run], args: argparse.Namespace) -> List[Dict[str, Any]]:
    """One record per image to generate/evaluate (no metrics yet)."""
    records = []
    n = args.num_images_per_prompt
    for run in runs:
        for p_index, template in enumerate(run.concept.prompts):
            prompt = template.format(run.concept.class_word)
            for j in range(n):
                seed = args.seed + p_index * n + j
                path = os.path.join(run.directory, f"p{p_index:02d}_{j:02d}_seed{seed}.png")
                records.append(
                    dict(
                        concept=run.concept.name,
                        method=run.method,
                        scale=run.scale,
                        run=run.name,
                        prompt_index=p_index,
                        category=template.category,
                        template=template.template,
                        prompt=prompt,
                        image_index=j,
                        seed=seed,
                        image=path,
                        _run=run,
                    )
                )
    return records


# ---------------------------------------------------------------------------------------------------- generation
def _dtype(args: argparse.Namespace, device: torch.device) -> torch.dtype:
    precision = args.mixed_precision or ("fp16" if device.type == "cuda" else "no")
    return {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def load_pipeline(args: argparse.Namespace, device: torch.device):
    from diffusers import DDIMScheduler, DiffusionPipeline

    kwargs: Dict[str, Any] = dict(torch_dtype=_dtype(args, device))
    for key in ("revision", "variant"):
        if getattr(args, key):
            kwargs[key] = getattr(args, key)
    if args.local_files_only:
        kwargs["local_files_only"] = True
    if args.disable_safety_checker:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        pipe = DiffusionPipeline.from_pretrained(args.pretrained_model_name_or_path, **kwargs)
    except (OSError, ValueError) as error:
        raise EvaluationModelNotFoundError(
            f"Could not load the base pipeline {args.pretrained_model_name_or_path!r} ({type(error).__name__}: "
            f"{str(error).strip().splitlines()[0] if str(error).strip() else ''}). Pass a local folder saved with "
            "`save_pretrained` (download it elsewhere with `huggingface-cli download`), or set HF_HOME to a cache "
            "that holds it."
        ) from error
    if args.scheduler == "ddim":
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def generate_images(records: List[Dict[str, Any]], args: argparse.Namespace, device: torch.device) -> None:
    """Generate the images of ``records`` that are not on disk yet (all of them with ``--overwrite``)."""
    todo = [r for r in records if args.overwrite or not os.path.isfile(r["image"])]
    if not todo:
        logger.info("All images are already on disk: nothing to generate.")
        return
    logger.info(f"Generating {len(todo)} images ({len(records) - len(todo)} reused from disk).")
    pipe = load_pipeline(args, device)
    bar = tqdm(total=len(todo), desc="generating", disable=args.no_progress)
    by_run: Dict[int, List[Dict[str, Any]]] = {}
    runs: Dict[int, Run] = {}
    for record in todo:
        by_run.setdefault(id(record["_run"]), []).append(record)
        runs[id(record["_run"])] = record["_run"]
    try:
        for key, run_records in by_run.items():
            run = runs[key]
            pipe.unload_catversion()
            if run.source is not None:
                adapter = pipe.load_catversion(run.concept.states[run.method], adapter_name=_safe(run.method))
                pipe.set_catversion_scale({adapter: float(run.scale)})
            os.makedirs(run.directory, exist_ok=True)
            by_prompt: Dict[str, List[Dict[str, Any]]] = {}
            for record in run_records:
                by_prompt.setdefault(record["prompt"], []).append(record)
            for prompt, prompt_records in by_prompt.items():
                for start in range(0, len(prompt_records), args.generation_batch_size):
                    chunk = prompt_records[start : start + args.generation_batch_size]
                    generators = [torch.Generator("cpu").manual_seed(r["seed"]) for r in chunk]
                    images = pipe(
                        prompt=prompt,
                        negative_prompt=args.negative_prompt,
                        num_images_per_prompt=len(chunk),
                        generator=generators,
                        num_inference_steps=args.num_inference_steps,
                        guidance_scale=args.guidance_scale,
                        height=args.height,
                        width=args.width,
                    ).images
                    for record, image in zip(chunk, images):
                        image.save(record["image"])
                    bar.update(len(chunk))
    finally:
        bar.close()
        pipe.unload_catversion()
        del pipe
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------------- scoring
def prepare_references(concept: Concept, output_dir: str, masker: Optional[CLIPSegMasker], args) -> Dict[str, Any]:
    """Copy the references into the output folder, with their masks (user or CLIPSeg) saved beside them."""
    directory = os.path.join(output_dir, "references", _safe(concept.name))
    os.makedirs(directory, exist_ok=True)
    copies = []
    for path in concept.references:
        copy = os.path.join(directory, os.path.splitext(os.path.basename(path))[0] + ".png")
        load_image(path).save(copy)
        copies.append(copy)
    masks = None
    if not args.no_masks:
        if concept.reference_mask_dir:
            masks = load_masks(concept.reference_mask_dir, concept.references)
        else:
            masks = masker(copies, args.mask_prompt or concept.class_word)
        for copy, mask in zip(copies, masks):
            save_mask(mask, mask_path_for(copy))
    return dict(images=copies, masks=masks)


def score(records: List[Dict[str, Any]], concepts: Sequence[Concept], args: argparse.Namespace, device) -> str:
    """Fill the metrics into ``records``. Returns the name of the image metric used for the overall."""
    load = dict(device=device, batch_size=args.batch_size, show_progress=not args.no_progress)
    if args.local_files_only:
        load["local_files_only"] = True
    clip = CLIPEmbedder(args.clip_model, **load)
    dino = None if args.no_dino else DINOEmbedder(args.dino_model, **load)
    masker = None
    if not args.no_masks:
        masker = CLIPSegMasker(
            args.clipseg_model, threshold=args.mask_threshold, **dict(load, batch_size=min(args.batch_size, 8))
        )
    image_metric = "clip_i"
    for concept in concepts:
        references = prepare_references(concept, args.output_dir, masker, args)
        concept_records = [r for r in records if r["concept"] == concept.name]
        runs = list(dict.fromkeys(r["run"] for r in concept_records))
        for run in tqdm(runs, desc=f"scoring {concept.name}", disable=args.no_progress):
            run_records = [r for r in concept_records if r["run"] == run]
            images = [load_image(r["image"]) for r in run_records]
            gen_masks = None
            if masker is not None:
                gen_masks = masker(images, args.mask_prompt or concept.class_word)
                for record, mask in zip(run_records, gen_masks):
                    record["mask"] = save_mask(mask, mask_path_for(record["image"]))
                    record["mask_area"] = mask_area(mask)
            result = evaluate_images(
                images,
                [r["prompt"] for r in run_records],
                references["images"],
                generated_masks=gen_masks,
                reference_masks=references["masks"],
                clip=clip,
                dino=dino,
                masked=masker is not None,
                fill=args.mask_fill,
                crop=args.mask_crop,
                empty_mask=args.empty_mask,
                clip_score=args.clip_score,
            )
            image_metric = result["image_alignment"]
            for name, values in result["per_image"].items():
                for record, value in zip(run_records, values.tolist()):
                    record[name] = float(value)
    return image_metric


# ------------------------------------------------------------------------------------------------------- outputs
def write_outputs(
    records: List[Dict[str, Any]], concepts: Sequence[Concept], args: argparse.Namespace, image_metric: str
) -> Dict[str, Any]:
    out = args.output_dir
    rel = lambda p: os.path.relpath(p, out) if p else p  # noqa: E731
    per_image = []
    for record in records:
        row = {k: v for k, v in record.items() if not k.startswith("_")}
        row["image"] = rel(row["image"])
        if row.get("mask"):
            row["mask"] = rel(row["mask"])
        per_image.append(row)
    keys = ["concept", "method", "scale", "run"]
    summary = aggregate(per_image, keys, image_metric)
    across = aggregate(per_image, ["method", "scale", "run"], image_metric)
    for row in across:
        row["concept"] = "all"
    per_category = aggregate(per_image, keys + ["category"], image_metric)
    per_prompt = aggregate(per_image, keys + ["prompt_index", "category", "prompt"], image_metric)

    metric_columns = [m for m in METRIC_NAMES if any(m in row for row in per_image)]
    summary_rows = summary + (across if len(concepts) > 1 else [])
    write_csv(os.path.join(out, "summary.csv"), summary_rows, keys + ["n"] + metric_columns)
    write_csv(
        os.path.join(out, "per_prompt.csv"),
        per_prompt,
        keys + ["prompt_index", "category", "prompt", "n"] + metric_columns,
    )
    image_columns = keys + ["prompt_index", "category", "prompt", "image_index", "seed", "image", "mask", "mask_area"]
    write_csv(os.path.join(out, "per_image.csv"), per_image, image_columns + metric_columns)

    config = {k: v for k, v in vars(args).items()}
    config["versions"] = {
        "catversion_diffusers": catversion_diffusers.__version__,
        "torch": torch.__version__,
        "diffusers": __import__("diffusers").__version__,
        "transformers": __import__("transformers").__version__,
    }
    config["concepts"] = [
        dict(
            name=c.name,
            class_word=c.class_word,
            references=c.references,
            reference_mask_dir=c.reference_mask_dir,
            methods=c.methods,
            prompts=[dict(template=p.template, category=p.category) for p in c.prompts],
        )
        for c in concepts
    ]
    results = dict(
        config=config,
        image_alignment_metric=image_metric,
        overall_definition=f"sqrt(mean clip_t * mean {image_metric}) over the group's images",
        summary=summary,
        summary_all_concepts=across,
        per_category=per_category
        + [dict(r, concept="all") for r in aggregate(per_image, ["method", "scale", "run", "category"], image_metric)],
        per_prompt=per_prompt,
        per_image=per_image,
    )
    write_json(os.path.join(out, "results.json"), results)

    # Grids: references, then one row per run; one column per prompt (its first image).
    for concept in concepts:
        concept_records = [r for r in records if r["concept"] == concept.name]
        runs = list(dict.fromkeys(r["run"] for r in concept_records))
        ref_dir = os.path.join(out, "references", _safe(concept.name))
        ref_images = [
            os.path.join(ref_dir, os.path.splitext(os.path.basename(p))[0] + ".png") for p in concept.references
        ]
        rows = [("references", ref_images[: len(concept.prompts)])]
        for run in runs:
            first = {
                r["prompt_index"]: r["image"] for r in concept_records if r["run"] == run and r["image_index"] == 0
            }
            rows.append((run, [first.get(i) for i in range(len(concept.prompts))]))
        grid = make_grid(rows, [p.format(concept.class_word) for p in concept.prompts], cell_size=args.grid_cell_size)
        os.makedirs(os.path.join(out, "grids"), exist_ok=True)
        grid.save(os.path.join(out, "grids", f"{_safe(concept.name)}.png"))

    plot_tradeoff(
        across,
        os.path.join(out, "tradeoff.png"),
        title="fidelity / editability"
        + (f" ({concepts[0].name})" if len(concepts) == 1 else f" ({len(concepts)} concepts)"),
    )
    return results


def print_summary(results: Dict[str, Any]) -> None:
    metric = results["image_alignment_metric"]
    rows = results["summary"] + (results["summary_all_concepts"] if len(results["config"]["concepts"]) > 1 else [])
    columns = [m for m in ("clip_t", metric, "clip_i", "dino", "overall") if any(m in r for r in rows)]
    columns = list(dict.fromkeys(columns))
    header = f"{'concept':<16} {'run':<24} {'n':>4} " + " ".join(f"{c:>13}" for c in columns)
    print(header)
    for row in rows:
        values = " ".join(f"{row[c]:>13.4f}" if row.get(c) is not None else f"{'-':>13}" for c in columns)
        print(f"{str(row['concept'])[:16]:<16} {str(row['run'])[:24]:<24} {row['n']:>4} {values}")


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    device = resolve_device(args.device)
    os.makedirs(args.output_dir, exist_ok=True)
    concepts = build_concepts(args)
    runs = plan_runs(concepts, args.scale, args.output_dir)
    records = plan_images(runs, args)
    generate_images(records, args, device)
    image_metric = score(records, concepts, args, device)
    results = write_outputs(records, concepts, args, image_metric)
    print_summary(results)
    print(f"Results written to {args.output_dir}")
    return results


if __name__ == "__main__":
    try:
        main()
    except (EvaluationError, EvaluationModelNotFoundError, catversion_diffusers.CatVersionError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
