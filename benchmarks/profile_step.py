#!/usr/bin/env python
"""Profile one training step of a benchmark variant: where the time goes, before optimising anything.

Prints, per variant, (1) the Python-level breakdown (cProfile, cumulative time of the functions that matter: VAE
encode, text encoder, UNet forward, backward, optimizer, the trainer's batch sampling) and (2) the top torch
operators by self time (torch.profiler).

    python benchmarks/profile_step.py --model sd15 --resolution 256 --variants fast,ti
    python benchmarks/profile_step.py --model tiny --variants fast --steps 20
"""

import argparse
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import torch  # noqa: E402

from models import MODELS, build_components, default_resolution  # noqa: E402

# Python functions whose cumulative time is the step's breakdown (file suffix, function name) -> label
BREAKDOWN = [
    (("autoencoders/vae.py", "forward"), "VAE encoder forward"),
    (("modeling_clip.py", "forward"), "text encoder: outermost CLIP forward"),
    (("text_cache.py", "encode"), "text encoder, cached path (residual layers only)"),
    (("text_cache.py", "__call__"), "trainer text conditioning (incl. unique/index_select)"),
    (("unet_2d_condition.py", "forward"), "UNet forward"),
    (("torch/_tensor.py", "backward"), "backward (autograd)"),
    (("torch/optim/optimizer.py", "wrapper"), "optimizer.step"),
    (("training/trainer.py", "sample_batch"), "trainer sample_batch (random draws on CPU)"),
    (("training/trainer.py", "_latents"), "trainer latents (from cache or VAE)"),
    (("training/trainer.py", "compute_loss"), "trainer compute_loss (forward)"),
    (("training/trainer.py", "optimizer_step"), "trainer optimizer_step (whole)"),
    (("benchmarks/steps.py", "step"), "whole step"),
]


def breakdown(stats: pstats.Stats, steps: int):
    """Seconds per step of each BREAKDOWN function (the largest cumulative time among same-named functions)."""
    rows = {}
    for (filename, _line, function), (_cc, _nc, _tt, cumulative, _callers) in stats.stats.items():
        for (suffix, name), label in BREAKDOWN:
            if filename.replace("\\", "/").endswith(suffix) and function == name:
                rows[label] = max(rows.get(label, 0.0), cumulative / steps)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=MODELS, default="tiny")
    p.add_argument("--model_path", default=None)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default=None)
    p.add_argument("--resolution", type=int, default=None)
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--variants", default="fast,ti")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=1, help="profiled steps per variant")
    p.add_argument("--row_limit", type=int, default=15)
    p.add_argument("--weights_cache", default=None)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from steps import DTYPES, Setting, Shared, close, make_step

    dtype = DTYPES[args.dtype or ("bf16" if args.device == "cuda" else "fp32")]
    components = build_components(args.model, tempfile.mkdtemp(), 0, args.model_path, args.weights_cache)
    resolution = args.resolution or default_resolution(args.model, args.device, components)
    shared = Shared(components, Setting(device=args.device, dtype=dtype, resolution=resolution,
                                        batch_size=args.batch_size))
    print(f"# {args.model}, {args.device}, {dtype}, {resolution}px, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads")
    for name in [v for v in args.variants.split(",") if v]:
        step = make_step(name, shared)
        for _ in range(args.warmup):
            step.step()
        profiler = cProfile.Profile()
        started = time.perf_counter()
        profiler.enable()
        for _ in range(args.steps):
            step.step()
        if args.device == "cuda":
            torch.cuda.synchronize()
        profiler.disable()
        wall = (time.perf_counter() - started) / args.steps
        stats = pstats.Stats(profiler, stream=io.StringIO())
        print(f"\n## {name}: {wall:.3f} s/step (under cProfile)\n")
        for label, seconds in sorted(breakdown(stats, args.steps).items(), key=lambda kv: -kv[1]):
            print(f"  {seconds:8.3f} s  {100 * seconds / wall:5.1f}%  {label}")
        activities = [torch.profiler.ProfilerActivity.CPU]
        if args.device == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(args.steps):
                step.step()
        sort = "self_device_time_total" if args.device == "cuda" else "self_cpu_time_total"
        print()
        print(prof.key_averages().table(sort_by=sort, row_limit=args.row_limit))
        close(step)
        del step


if __name__ == "__main__":
    main()
