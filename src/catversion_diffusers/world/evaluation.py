"""Prompt following of a world pipeline, measured with the exact pixel checkers of :mod:`.generator`."""

from typing import Dict, List, Optional

import numpy as np

from . import generator as G


def world_prompts(n: int, seed: int = 0) -> List[str]:
    """``n`` full captions ("a {colour} {shape} on a {background} background"), balanced over shapes, shuffled
    deterministically; colours and backgrounds drawn from ``seed`` (a colour never equals its background)."""
    rng = np.random.default_rng(seed)
    prompts = []
    colours, bgs = list(G.COLOURS), list(G.BACKGROUNDS)
    for i in range(n):
        shape = G.SHAPES[i % len(G.SHAPES)]
        while True:
            c, b = colours[rng.integers(len(colours))], bgs[rng.integers(len(bgs))]
            if G.COLOURS[c] != G.BACKGROUNDS[b]:
                break
        prompts.append(G.caption_for(shape, c, b))
    order = rng.permutation(n)
    return [prompts[i] for i in order]


def generate(pipe, prompts: List[str], seed: int = 0, num_inference_steps: int = 25, guidance_scale: float = 5.0,
             batch_size: int = 50, **kwargs) -> np.ndarray:
    """Images (N, H, W, 3) uint8 for ``prompts``; prompt ``i`` uses ``torch.Generator().manual_seed(seed + i)``."""
    import torch

    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        gens = [torch.Generator("cpu").manual_seed(seed + start + j) for j in range(len(chunk))]
        res = pipe(chunk, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, generator=gens,
                   output_type="np", **kwargs)
        out.append(np.stack([G.to_uint8_array(im) for im in res.images]))
    return np.concatenate(out)


def score_images(images, prompts: List[str]) -> Dict[str, object]:
    """Per-attribute accuracy of images against the prompts they were generated from."""
    records = []
    for img, prompt in zip(images, prompts):
        found = G.analyze_image(img)
        want = G.parse_caption(prompt)
        rec = {"prompt": prompt, "found": {k: found[k] for k in ("shape", "colour", "background")}}
        rec.update({k: found[k] == want[k] for k in ("shape", "colour", "background") if want[k] is not None})
        records.append(rec)
    res: Dict[str, object] = {"n": len(records)}
    for k in ("shape", "colour", "background"):
        vals = [r[k] for r in records if k in r]
        res[k] = float(np.mean(vals)) if vals else None
    res["all"] = float(np.mean([all(r.get(k, True) for k in ("shape", "colour", "background")) for r in records]))
    res["records"] = records
    return res


def evaluate_prompt_following(pipe, n: int = 200, seed: int = 1234, num_inference_steps: int = 25,
                              guidance_scale: float = 5.0, prompts: Optional[List[str]] = None,
                              batch_size: int = 50) -> Dict[str, object]:
    """Generate ``n`` balanced world prompts with ``pipe`` and score shape / colour / background from pixels.

    Returns {"shape", "colour", "background", "all" (all three right), "n", "settings", "records"}."""
    prompts = prompts or world_prompts(n, seed)
    images = generate(pipe, prompts, seed=seed, num_inference_steps=num_inference_steps,
                      guidance_scale=guidance_scale, batch_size=batch_size)
    res = score_images(images, prompts)
    res["settings"] = {"num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale, "seed": seed,
                       "scheduler": type(pipe.scheduler).__name__}
    return res
