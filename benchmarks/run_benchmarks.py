#!/usr/bin/env python
"""CatVersion performance benchmarks against textual inversion (issue 6). Writes results.json and results.md.

Every figure is a ratio of variants measured side by side in one run (interleaved, order rotated each round), on the
same pipeline weights, device, dtype, resolution and batch:

1. train:     step time of the library's CatVersion step (fast path), a textual-inversion step as diffusers' example
              does it, a naive CatVersion step (the example's loop with residuals), and the frozen UNet's forward +
              backward to its inputs alone (the floor); medians after warm-up.
   memory:    peak memory of each of those steps, each in a process of its own (CUDA: torch's max allocated;
              CPU: sampled RSS).
2. inference: full pipeline call with 0, 1 and 4 concepts loaded against the stock pipeline; text encoder alone and
              encode_prompt alone; the overhead projected on a 50-step generation.
3. load:      load / unload latency of a residual file against load_textual_inversion / unload_textual_inversion.
4. scaling:   fast-path (and floor) step time against batch size, resolution and number of residual tokens.
5. sustained: (CUDA) N fast-path steps back to back: wall time and peak memory (the 1000-steps target).

    python benchmarks/run_benchmarks.py --model tiny                      # seconds
    python benchmarks/run_benchmarks.py --model sd15 --device cpu         # SD1.5-sized, random weights, 256 px
    python benchmarks/run_benchmarks.py --model sd15 --device cuda        # 512 px, bf16, + 1000 sustained steps
"""

import argparse
import datetime
import gc
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

import measure  # noqa: E402
from models import MODELS, build_components, default_resolution  # noqa: E402

SECTIONS = ("train", "memory", "inference", "load", "scaling", "sustained")
CHILD_MARKER = "BENCHMARK_CHILD_RESULT "
PROMPTS = {"world": "a red circle on a blue background"}
DEFAULT_PROMPT = "a photo of a dog on the beach"


def log(*args) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *args, file=sys.stderr, flush=True)


def _ints(text: str) -> List[int]:
    return [int(x) for x in str(text).split(",") if x.strip()]


# ------------------------------------------------------------------------------------------------------ arguments
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--model", choices=MODELS, default="tiny")
    p.add_argument("--model_path", default=None, help="--model world: the pipeline folder (default: the bundled one)")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default=None, help="default: fp32 on CPU, bf16 on CUDA")
    p.add_argument("--resolution", type=int, default=None, help="default: 256 (sd15, CPU), 512 (sd15, GPU), native")
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--num_tokens", type=int, default=1, help="CatVersion residual tokens per layer")
    p.add_argument("--steps", type=int, default=None, help="measured steps per variant (default by model/device)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps per variant, not kept")
    p.add_argument("--sections", default=None, help=f"comma list of {','.join(SECTIONS)} (default: all that apply)")
    p.add_argument("--variants", default="ti,naive,fast,floor", help="training variants of the train section")
    p.add_argument("--ablations", action="store_true",
                   help="also time the trainer with its caches switched off (fast_no_latent_cache, ...)")
    p.add_argument("--memory", choices=("subprocess", "inprocess", "off"), default="subprocess",
                   help="how to measure peak memory (subprocess: one process per variant, the accurate way)")
    p.add_argument("--memory_steps", type=int, default=1, help="steps per variant in the memory measurement")
    p.add_argument("--full_call_steps", type=int, default=None,
                   help="denoising steps of the timed full pipeline calls (default 50; 0 = skip, sd15 on CPU)")
    p.add_argument("--full_call_rounds", type=int, default=None, help="full pipeline calls per variant")
    p.add_argument("--inference_repeats", type=int, default=None, help="repeats of the text-encoder timings")
    p.add_argument("--load_repeats", type=int, default=None, help="load/unload repeats")
    p.add_argument("--scaling_batch_sizes", default="1,2,4")
    p.add_argument("--scaling_resolutions", default=None, help="default: by model/device")
    p.add_argument("--scaling_tokens", default="1,4,16")
    p.add_argument("--scaling_resolution", type=int, default=None,
                   help="resolution of the batch-size and token sweeps (default: the run's; 128 for sd15 on CPU)")
    p.add_argument("--scaling_steps", type=int, default=None)
    p.add_argument("--scaling_warmup", type=int, default=None)
    p.add_argument("--sustained_steps", type=int, default=1000, help="CUDA: fast-path steps back to back")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: 1 for tiny/world on CPU, whose small operators otherwise wait "
                   "at OpenMP barriers on a shared machine; torch's default for sd15 and CUDA)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights_cache", default=None,
                   help="sd15: folder to save the random weights in / load them from (default: a temporary folder)")
    p.add_argument("--output_dir", default=None, help="default: outputs/benchmarks/<model>-<device>")
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return resolve_defaults(args)


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    big = args.model == "sd15"
    cpu_big = big and args.device == "cpu"
    args.dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    if args.threads is None and args.device == "cpu" and not big:
        args.threads = 1
    if args.steps is None:
        args.steps = 3 if cpu_big else 20
    if args.warmup is None:
        args.warmup = 1 if cpu_big else 3
    if args.full_call_steps is None:
        args.full_call_steps = 0 if cpu_big else 50
    if args.full_call_rounds is None:
        args.full_call_rounds = 3 if big else 5
    if args.inference_repeats is None:
        args.inference_repeats = 20
    if args.load_repeats is None:
        args.load_repeats = 10 if cpu_big else 20
    if args.scaling_steps is None:
        args.scaling_steps = 2 if cpu_big else max(3, args.steps // 2)
    if args.scaling_warmup is None:
        args.scaling_warmup = 1 if cpu_big else 2
    if args.output_dir is None:
        args.output_dir = os.path.join("outputs", "benchmarks", f"{args.model}-{args.device}")
    if args.sections:
        sections = args.sections.split(",")
    else:  # sustained needs a GPU
        sections = [s for s in SECTIONS if s != "sustained" or args.device == "cuda"]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    args.section_list = sections
    if args.memory == "off" and "memory" in sections:
        sections.remove("memory")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available here.")
    return args


def dtype_of(args) -> torch.dtype:
    from steps import DTYPES

    return DTYPES[args.dtype]


# ------------------------------------------------------------------------------------------------------ environment
def environment(args) -> Dict[str, object]:
    import diffusers
    import transformers

    import catversion_diffusers

    info = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": "python benchmarks/run_benchmarks.py " + " ".join(shlex.quote(a) for a in args.argv),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "catversion_diffusers": catversion_diffusers.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": _load_average(),
    }
    if args.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True)
        info["git_commit"] = commit.stdout.strip() or None
    except OSError:
        info["git_commit"] = None
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _load_average() -> Optional[List[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


# ------------------------------------------------------------------------------------------------------ setup
class Run:
    """The models of a run (built once), the setting, and the results being filled."""

    def __init__(self, args):
        self.args = args
        self.workdir = tempfile.mkdtemp(prefix="catversion-bench-")
        self.weights_cache = args.weights_cache
        if args.model == "sd15" and self.weights_cache is None:
            self.weights_cache = os.path.join(self.workdir, "sd15-weights")
        started = time.perf_counter()
        self.components = build_components(args.model, self.workdir, args.seed, args.model_path, self.weights_cache)
        self.build_seconds = time.perf_counter() - started
        if args.resolution is None:
            args.resolution = default_resolution(args.model, args.device, self.components)
        self.results: Dict[str, object] = {}
        # a word every model's tokenizer knows (the world model knows shapes and colours, not dogs)
        self.class_word = "circle" if args.model == "world" else "dog"

    def setting(self, **changes):
        from steps import Setting

        values = dict(
            device=self.args.device, dtype=dtype_of(self.args), resolution=self.args.resolution,
            batch_size=self.args.batch_size, num_tokens=self.args.num_tokens, seed=self.args.seed,
            class_word=self.class_word,
        )
        values.update(changes)
        return Setting(**values)

    def model_info(self) -> Dict[str, object]:
        c = self.components

        def count(module):
            return sum(p.numel() for p in module.parameters())

        return {
            "name": self.args.model,
            "unet_parameters": count(c["unet"]),
            "vae_parameters": count(c["vae"]),
            "text_encoder_parameters": count(c["text_encoder"]),
            "text_encoder_layers": c["text_encoder"].config.num_hidden_layers,
            "hidden_size": c["text_encoder"].config.hidden_size,
            "vocab_size": c["text_encoder"].config.vocab_size,
            "build_seconds": round(self.build_seconds, 1),
        }


# ------------------------------------------------------------------------------------------------------ 1. train
def train_section(run: Run) -> Dict[str, object]:
    from steps import ABLATIONS, Shared, close, make_step, trainable_values

    args = run.args
    names = [v for v in args.variants.split(",") if v]
    if args.ablations:
        names += [a for a in ABLATIONS if a not in names]
    setting = run.setting()
    log(f"train: building {names} at {setting.resolution}px, batch {setting.batch_size}, {args.dtype}")
    shared = Shared(run.components, setting)
    steps = {}
    for name in names:
        started = time.perf_counter()
        steps[name] = make_step(name, shared)
        log(f"train: {name} ready in {time.perf_counter() - started:.1f}s")
    losses: Dict[str, List[float]] = {n: [] for n in names}

    def wrap(name):
        def fn():
            losses[name].append(float(steps[name].step()))
        return fn

    times = measure.interleaved(
        {n: wrap(n) for n in names}, args.warmup, args.steps, args.device,
        on_round=lambda i, total: log(f"train: round {i + 1}/{total}"),
    )
    out = {"setting": _setting_dict(setting), "variants": {}}
    for name in names:
        out["variants"][name] = {
            "times_s": times[name],
            **{f"{k}_s" if k != "n" else k: v for k, v in measure.summary(times[name]).items()},
            "trainable_values": trainable_values(steps[name]),
            "losses_finite": all(math.isfinite(loss) for loss in losses[name]),
        }
    out["ratios"] = _train_ratios(out["variants"])
    out["paired_ratios"] = _paired_ratios(times)
    for step in steps.values():
        close(step)
    del steps, shared
    gc.collect()
    return out


def _train_ratios(variants: Dict[str, dict]) -> Dict[str, Optional[float]]:
    med = {n: v.get("median_s") for n, v in variants.items()}
    pairs = [("fast", "ti"), ("fast", "naive"), ("fast", "floor"), ("naive", "ti"), ("ti", "floor"), ("naive", "floor")]
    pairs += [(a, "fast") for a in med if a.startswith("fast_")]
    pairs += [(a, b) for a in med if a.startswith("fast_") for b in ("ti", "floor")]
    return {f"{a}/{b}": measure.ratio(med.get(a), med.get(b)) for a, b in pairs if a in med and b in med}


def _paired_ratios(times: Dict[str, List[float]]) -> Dict[str, Optional[float]]:
    """Median over rounds of the per-round ratio (each pair measured in the same round: robust to drifting load)."""
    import statistics

    out = {}
    for a, b in (("fast", "ti"), ("fast", "naive"), ("fast", "floor"), ("fast_channels_last", "ti"),
                 ("fast_channels_last", "fast")):
        if a in times and b in times and times[a] and times[b]:
            out[f"{a}/{b}"] = statistics.median(x / y for x, y in zip(times[a], times[b]))
    return out


def _setting_dict(setting) -> Dict[str, object]:
    return {
        "device": setting.device, "dtype": str(setting.dtype).replace("torch.", ""), "resolution": setting.resolution,
        "batch_size": setting.batch_size, "num_tokens": setting.num_tokens,
    }


# ------------------------------------------------------------------------------------------------------ memory
def memory_section(run: Run) -> Dict[str, object]:
    from steps import VARIANTS

    args = run.args
    names = [v for v in args.variants.split(",") if v in VARIANTS]
    out = {"how": None, "variants": {}}
    for name in names:
        log(f"memory: {name} ({args.memory})")
        if args.memory == "subprocess":
            result = _memory_subprocess(run, name)
        else:
            result = memory_child(run, name)
        out["variants"][name] = result
    out["how"] = (
        "torch.cuda.max_memory_allocated over the steps (absolute: every module and tensor on the GPU)"
        if args.device == "cuda"
        else "resident set size sampled every 2 ms over the steps (absolute: the whole process, Python and "
        "libraries included; `step` = peak minus the RSS just before the first step)"
    )
    out["process"] = args.memory
    fast = out["variants"].get("fast", {}).get("peak_bytes")
    ti = out["variants"].get("ti", {}).get("peak_bytes")
    naive = out["variants"].get("naive", {}).get("peak_bytes")
    out["ratios"] = {"fast/ti": measure.ratio(fast, ti), "fast/naive": measure.ratio(fast, naive)}
    return out


def _memory_subprocess(run: Run, name: str) -> Dict[str, object]:
    args = run.args
    argv = [sys.executable, os.path.abspath(__file__), "--_child", f"memory:{name}", "--model", args.model,
            "--device", args.device, "--dtype", args.dtype, "--resolution", str(args.resolution),
            "--batch_size", str(args.batch_size), "--num_tokens", str(args.num_tokens), "--seed", str(args.seed),
            "--memory_steps", str(args.memory_steps), "--output_dir", args.output_dir]
    if args.model_path:
        argv += ["--model_path", args.model_path]
    if run.weights_cache:
        argv += ["--weights_cache", run.weights_cache]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]))
    # glibc keeps freed heap memory (and raises its mmap threshold up to 32 MiB after the first frees), so the RSS of
    # a process stays high after the setup's temporaries are gone and later steps reuse that memory unseen. A fixed
    # 64 KiB threshold maps every tensor of consequence on its own and returns it to the system when freed: RSS then
    # follows the live memory, before and during the steps (glibc-specific; harmless elsewhere).
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    env.setdefault("MALLOC_TRIM_THRESHOLD_", "131072")
    completed = subprocess.run(argv, capture_output=True, text=True, env=env)
    for line in completed.stdout.splitlines():
        if line.startswith(CHILD_MARKER):
            return json.loads(line[len(CHILD_MARKER):])
    raise RuntimeError(f"memory child {name} failed ({completed.returncode}):\n{completed.stderr[-4000:]}")


def memory_child(run: Run, name: str) -> Dict[str, object]:
    """Peak memory of ``memory_steps`` steps of one variant, from just before its first step."""
    from steps import Shared, close, make_step

    args = run.args
    setting = run.setting()
    shared = Shared(run.components, setting)
    step = make_step(name, shared)
    if args.memory == "subprocess":
        # This process is the variant's alone: drop what the step does not use, the fp32 master of the text encoder
        # (every step has its own copy) and, unless the step encodes with it every step, the shared VAE (the trainer
        # has its own copy, which it moves off the GPU after caching the latents).
        shared.text_encoder = None
        run.components.pop("text_encoder", None)
        if name not in ("ti", "naive"):
            shared.vae = None
            run.components.pop("vae", None)
    gc.collect()
    if args.device == "cuda":
        torch.cuda.empty_cache()
        with measure.CUDAPeak() as peak:
            for _ in range(args.memory_steps):
                step.step()
        result = {"peak_bytes": peak.peak, "before_bytes": peak.baseline, "step_bytes": peak.peak - peak.baseline,
                  "peak_reserved_bytes": peak.peak_reserved}
    else:
        with measure.RSSSampler() as sampler:
            for _ in range(args.memory_steps):
                step.step()
        result = {"peak_bytes": sampler.peak, "before_bytes": sampler.baseline,
                  "step_bytes": sampler.peak - sampler.baseline}
    close(step)
    return result


# ------------------------------------------------------------------------------------------------------ 2. inference
def _random_concepts(run: Run, directory: str, count: int) -> List[str]:
    """``count`` residual files (random residuals of a trained concept's scale: std 1.15, 1 token, default layers)."""
    from catversion_diffusers import CatVersionState, default_catversion_layers, save_state

    te = run.components["text_encoder"]
    hidden = te.config.hidden_size
    paths = []
    for index in range(count):
        generator = torch.Generator().manual_seed(1000 + index)
        residuals = {
            i: tuple(torch.randn(run.args.num_tokens, hidden, generator=generator) * 1.15 for _ in range(2))
            for i in default_catversion_layers(te)
        }
        state = CatVersionState({"text_encoder": residuals}, metadata={"class_word": run.class_word})
        paths.append(save_state(state, os.path.join(directory, f"concept{index}", "catversion.safetensors")))
    return paths


def _pipeline(run: Run):
    from diffusers import StableDiffusionPipeline

    c = run.components
    pipe = StableDiffusionPipeline(
        unet=c["unet"], vae=c["vae"], text_encoder=c["text_encoder"], tokenizer=c["tokenizer"],
        scheduler=c["scheduler"], safety_checker=None, feature_extractor=None, image_encoder=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.to(run.args.device, dtype_of(run.args))
    return pipe


def inference_section(run: Run) -> Dict[str, object]:
    from catversion_diffusers.text_encoder import get_encoder_layers

    args = run.args
    prompt = PROMPTS.get(args.model, DEFAULT_PROMPT)
    device = args.device
    pipe = _pipeline(run)
    concepts = _random_concepts(run, os.path.join(run.workdir, "concepts"), 4)
    stock_types = [type(layer.self_attn) for layer in get_encoder_layers(pipe.text_encoder)]

    def state(count: int, cycle: bool = False):
        if pipe.get_catversion_adapters():
            pipe.unload_catversion()
        if cycle:  # "0 concepts": one loaded then unloaded
            pipe.load_catversion(concepts[0], adapter_name="c0")
            pipe.unload_catversion()
        for i in range(count):
            pipe.load_catversion(concepts[i], adapter_name=f"c{i}")

    variants = {"stock": (0, False), "0 (load+unload)": (0, True), "1 concept": (1, False), "4 concepts": (4, False)}
    res = args.resolution
    out: Dict[str, object] = {"resolution": res, "guidance_scale": 7.5, "prompt": prompt}

    # text encoder alone, and encode_prompt (tokenization + positive and negative embeddings)
    ids = pipe.tokenizer([prompt], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids.to(device)
    te_times: Dict[str, List[float]] = {}
    enc_times: Dict[str, List[float]] = {}
    with torch.no_grad():
        for _ in range(2):  # warm-up of every variant
            for name, (count, cycle) in variants.items():
                state(count, cycle)
                pipe.text_encoder(ids)
                pipe.encode_prompt(prompt, device, 1, True)
        for r in range(args.inference_repeats):
            names = list(variants)
            names = names[r % len(names):] + names[: r % len(names)]
            for name in names:
                state(*variants[name])
                te_times.setdefault(name, []).append(measure.timed(lambda: pipe.text_encoder(ids), device))
                enc_times.setdefault(name, []).append(
                    measure.timed(lambda: pipe.encode_prompt(prompt, device, 1, True), device))
    state(0)
    restored = [type(layer.self_attn) for layer in get_encoder_layers(pipe.text_encoder)] == stock_types
    out["stock_modules_restored_after_unload"] = restored
    out["text_encoder"] = {n: measure.summary(t) for n, t in te_times.items()}
    out["encode_prompt"] = {n: measure.summary(t) for n, t in enc_times.items()}
    log("inference: text encoder done")

    # one denoising step of the UNet with classifier-free guidance (batch 2), and the VAE decode
    latents = torch.randn(1, pipe.unet.config.in_channels, res // pipe.vae_scale_factor, res // pipe.vae_scale_factor,
                          generator=torch.Generator().manual_seed(0)).to(device, pipe.unet.dtype)
    embeds = torch.cat(list(pipe.encode_prompt(prompt, device, 1, True)[::-1]))
    t = torch.tensor(500, device=device)
    unet_times, vae_times = [], []
    with torch.no_grad():
        repeats = max(1, min(3, args.inference_repeats // 4))
        for r in range(repeats + 1):
            elapsed = measure.timed(lambda: pipe.unet(torch.cat([latents] * 2), t, embeds), device)
            if r:
                unet_times.append(elapsed)
        for r in range(repeats + 1):
            elapsed = measure.timed(lambda: pipe.vae.decode(latents / pipe.vae.config.scaling_factor), device)
            if r:
                vae_times.append(elapsed)
    out["unet_cfg_step"] = measure.summary(unet_times)
    out["vae_decode"] = measure.summary(vae_times)
    log("inference: unet step and vae decode done")

    # full pipeline calls
    if args.full_call_steps > 0:
        calls: Dict[str, List[float]] = {}

        def call():
            pipe(prompt, num_inference_steps=args.full_call_steps, guidance_scale=7.5, height=res, width=res,
                 generator=torch.Generator().manual_seed(0))

        state(0)
        call()  # warm-up
        for r in range(args.full_call_rounds):
            names = list(variants)
            names = names[r % len(names):] + names[: r % len(names)]
            for name in names:
                state(*variants[name])
                calls.setdefault(name, []).append(measure.timed(call, device))
            log(f"inference: full calls round {r + 1}/{args.full_call_rounds}")
        state(0)
        out["full_call"] = {"steps": args.full_call_steps, "rounds": args.full_call_rounds,
                            "variants": {n: dict(measure.summary(t), times_s=t) for n, t in calls.items()}}
        stock = out["full_call"]["variants"]["stock"]["median"]
        out["full_call"]["overhead"] = {
            n: (v["median"] - stock) / stock for n, v in out["full_call"]["variants"].items() if n != "stock"
        }

    # the overhead on a 50-step generation: CatVersion only changes encode_prompt (the denoising loop is the stock one)
    stock_encode = out["encode_prompt"]["stock"]["median"]
    projected = stock_encode + 50 * out["unet_cfg_step"]["median"] + out["vae_decode"]["median"]
    out["projected_50_step_call_s"] = projected
    out["projected_overhead_50_steps"] = {
        n: (out["encode_prompt"][n]["median"] - stock_encode) / projected for n in variants if n != "stock"
    }
    state(0)
    return out


# ------------------------------------------------------------------------------------------------------ 3. load
def load_section(run: Run) -> Dict[str, object]:
    from safetensors.torch import save_file

    from catversion_diffusers.text_encoder import get_encoder_layers

    args = run.args
    pipe = _pipeline(run)
    concept = _random_concepts(run, os.path.join(run.workdir, "load"), 1)[0]
    hidden = pipe.text_encoder.config.hidden_size
    ti_dir = os.path.join(run.workdir, "ti")
    os.makedirs(ti_dir, exist_ok=True)
    ti_file = os.path.join(ti_dir, "learned_embeds.safetensors")
    save_file({"<sks>": torch.randn(1, hidden, generator=torch.Generator().manual_seed(0))}, ti_file)
    vocab_before = len(pipe.tokenizer)
    table_before = pipe.text_encoder.get_input_embeddings().weight.shape[0]
    types_before = [type(layer.self_attn) for layer in get_encoder_layers(pipe.text_encoder)]

    times: Dict[str, List[float]] = {"catversion load": [], "catversion unload": [], "ti load": [], "ti unload": []}
    first: Dict[str, float] = {}

    def catversion():
        a = time.perf_counter()
        pipe.load_catversion(concept, adapter_name="bench")
        b = time.perf_counter()
        pipe.unload_catversion("bench")
        return b - a, time.perf_counter() - b

    def ti():
        a = time.perf_counter()
        pipe.load_textual_inversion(ti_file)
        b = time.perf_counter()
        pipe.unload_textual_inversion("<sks>")
        return b - a, time.perf_counter() - b

    ops = {"catversion": catversion, "ti": ti}
    for r in range(args.load_repeats + 1):
        names = list(ops) if r % 2 == 0 else list(ops)[::-1]
        for name in names:
            load_s, unload_s = ops[name]()
            if r == 0:
                first[f"{name} load"], first[f"{name} unload"] = load_s, unload_s
            else:
                times[f"{name} load"].append(load_s)
                times[f"{name} unload"].append(unload_s)
    out = {n: measure.summary(t) for n, t in times.items()}
    out = {"warm": out, "first_call_s": first,
           "file_bytes": {"catversion": os.path.getsize(concept), "ti": os.path.getsize(ti_file)},
           "restored": {
               "tokenizer_length": len(pipe.tokenizer) == vocab_before,
               "embedding_rows": pipe.text_encoder.get_input_embeddings().weight.shape[0] == table_before,
               "attention_modules": [type(layer.self_attn) for layer in get_encoder_layers(pipe.text_encoder)]
               == types_before,
           },
           "ratios": {
               "catversion load / ti load": measure.ratio(out["catversion load"]["median"], out["ti load"]["median"]),
               "catversion unload / ti unload": measure.ratio(out["catversion unload"]["median"],
                                                              out["ti unload"]["median"]),
           }}
    return out


# ------------------------------------------------------------------------------------------------------ 4. scaling
def scaling_section(run: Run) -> Dict[str, object]:
    from steps import Shared, close, make_step

    args = run.args
    base_res = args.scaling_resolution or (128 if args.model == "sd15" and args.device == "cpu" else args.resolution)
    if args.scaling_resolutions:
        resolutions = _ints(args.scaling_resolutions)
    elif args.model == "sd15":
        resolutions = [128, 256] if args.device == "cpu" else [256, 512, 768]
    else:
        resolutions = [args.resolution, 2 * args.resolution, 4 * args.resolution]
    settings = []
    for b in _ints(args.scaling_batch_sizes):
        settings.append(("batch_size", dict(batch_size=b, resolution=base_res, num_tokens=1), True))
    for r in resolutions:
        settings.append(("resolution", dict(batch_size=1, resolution=r, num_tokens=1), True))
    for n in _ints(args.scaling_tokens):
        settings.append(("num_tokens", dict(batch_size=1, resolution=base_res, num_tokens=n), False))
    rows, done = [], {}
    train = run.results.get("train", {}).get("variants", {})
    if "fast" in train and "floor" in train:  # the train section's own setting: measured there already
        key = (args.batch_size, args.resolution, args.num_tokens)
        done[key] = {"batch_size": key[0], "resolution": key[1], "num_tokens": key[2],
                     "fast_median_s": train["fast"]["median_s"], "floor_median_s": train["floor"]["median_s"],
                     "fast/floor": measure.ratio(train["fast"]["median_s"], train["floor"]["median_s"]),
                     "fast_us_per_sample_pixel": 1e6 * train["fast"]["median_s"] / (key[0] * key[1] ** 2),
                     "from": "train section"}
    for axis, values, with_floor in settings:
        key = (values["batch_size"], values["resolution"], values["num_tokens"])
        if key in done:  # the same setting in two sweeps: measured once
            rows.append(dict(done[key], axis=axis))
            continue
        setting = run.setting(**values)
        shared = Shared(run.components, setting)
        steps = {"fast": make_step("fast", shared)}
        if with_floor or key[2] == 1:
            steps["floor"] = make_step("floor", shared)
        times = measure.interleaved({n: s.step for n, s in steps.items()}, args.scaling_warmup, args.scaling_steps,
                                    args.device)
        row = dict(axis=axis, **values)
        for name, t in times.items():
            row[f"{name}_median_s"] = measure.summary(t)["median"]
        row["fast/floor"] = measure.ratio(row.get("fast_median_s"), row.get("floor_median_s"))
        pixels = values["batch_size"] * values["resolution"] ** 2
        row["fast_us_per_sample_pixel"] = 1e6 * row["fast_median_s"] / pixels
        rows.append(row)
        done[key] = row
        for s in steps.values():
            close(s)
        del steps, shared
        gc.collect()
        log(f"scaling: {axis} {values}: fast {row['fast_median_s']:.3f}s")
    return {"steps": args.scaling_steps, "warmup": args.scaling_warmup, "rows": rows}


# ------------------------------------------------------------------------------------------------------ 5. sustained
def sustained_section(run: Run) -> Dict[str, object]:
    """N fast-path steps back to back (the trainer's own loop body), wall time and peak memory."""
    from steps import Shared, close, make_step

    args = run.args
    shared = Shared(run.components, run.setting())
    step = make_step("fast", shared)
    shared.vae.to("cpu")
    for _ in range(5):
        step.step()
    measure.sync(args.device)
    peak = measure.CUDAPeak() if args.device == "cuda" else measure.RSSSampler()
    with peak:
        started = time.perf_counter()
        for _ in range(args.sustained_steps):
            step.step()
        measure.sync(args.device)
        wall = time.perf_counter() - started
    close(step)
    return {"steps": args.sustained_steps, "wall_s": wall, "per_step_s": wall / args.sustained_steps,
            "projected_1000_steps_s": 1000 * wall / args.sustained_steps, "peak_bytes": peak.peak,
            "note": "peak includes the models on the device (the VAE was moved off after caching)"}


# ------------------------------------------------------------------------------------------------------ targets
def targets(run: Run) -> List[Dict[str, object]]:
    r, args = run.results, run.args
    rows = []
    train = r.get("train", {})
    ratios = train.get("ratios", {})
    if "fast/ti" in ratios:
        rows.append({"target": "training step <= 0.6 x textual-inversion step", "measured": ratios["fast/ti"],
                     "limit": 0.6, "met": ratios["fast/ti"] is not None and ratios["fast/ti"] <= 0.6,
                     "where": f"{args.model}, {args.device}, {args.dtype}, {args.resolution}px, batch {args.batch_size}"})
    if "fast_channels_last/ti" in ratios:
        rows.append({"target": "(experiment) fast path with a channels-last UNet <= 0.6 x TI step",
                     "measured": ratios["fast_channels_last/ti"], "limit": 0.6,
                     "met": ratios["fast_channels_last/ti"] <= 0.6, "where": f"{args.model}, {args.device}, {args.dtype}"})
    if "fast/floor" in ratios:
        rows.append({"target": "(report) training step / UNet floor", "measured": ratios["fast/floor"], "limit": None,
                     "met": None, "where": f"{args.model}, {args.device}"})
    inference = r.get("inference", {})
    if inference:
        over = inference["projected_overhead_50_steps"]["1 concept"]
        rows.append({"target": "pipeline overhead with one concept <= 1% of a 50-step generation", "measured": over,
                     "limit": 0.01, "met": over <= 0.01,
                     "where": f"{args.model}, {args.device}, {args.resolution}px (projected from encode_prompt and UNet step)"})
        if "full_call" in inference and inference["full_call"]["steps"] == 50:
            over = inference["full_call"]["overhead"]["1 concept"]
            rows.append({"target": "pipeline overhead with one concept <= 1% (measured full 50-step calls)",
                         "measured": over, "limit": 0.01, "met": over <= 0.01, "where": f"{args.model}, {args.device}"})
    load = r.get("load", {})
    if load and args.device == "cpu":
        value = load["warm"]["catversion load"]["median"]
        rows.append({"target": "load of a residual file <= 50 ms on CPU", "measured": value, "limit": 0.05,
                     "met": value <= 0.05, "where": f"{args.model}, warm (first call {load['first_call_s']['catversion load']:.3f}s)"})
    sustained = r.get("sustained", {})
    if sustained:
        rows.append({"target": "1000 steps <= 60 s (H100, SD1.5, 512px, bf16, batch 1)",
                     "measured": sustained["projected_1000_steps_s"], "limit": 60.0,
                     "met": sustained["projected_1000_steps_s"] <= 60.0, "where": run.results["environment"].get("gpu")})
        rows.append({"target": "peak memory <= 8 GB (same setting)", "measured": sustained["peak_bytes"] / 1e9,
                     "limit": 8.0, "met": sustained["peak_bytes"] / 1e9 <= 8.0, "where": run.results["environment"].get("gpu")})
    return rows


# ------------------------------------------------------------------------------------------------------ main
def main(argv=None) -> Dict[str, object]:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _child_main(args) if args._child else _main(args)
    finally:
        torch.set_num_threads(threads)  # main() may run inside another process (the smoke test)


def _main(args) -> Dict[str, object]:
    from report import write_markdown

    os.makedirs(args.output_dir, exist_ok=True)
    started = time.perf_counter()
    log(f"building {args.model} ...")
    run = Run(args)
    run.results["environment"] = environment(args)
    run.results["model"] = run.model_info()
    run.results["settings"] = {k: getattr(args, k) for k in (
        "model", "device", "dtype", "resolution", "batch_size", "num_tokens", "steps", "warmup", "memory",
        "memory_steps", "full_call_steps", "full_call_rounds", "inference_repeats", "load_repeats",
        "scaling_steps", "scaling_warmup", "threads", "seed")}
    run.results["settings"]["sections"] = args.section_list
    log(f"built in {run.build_seconds:.1f}s; sections {args.section_list}")
    functions = {"memory": memory_section, "train": train_section, "scaling": scaling_section,
                 "inference": inference_section, "load": load_section, "sustained": sustained_section}
    # memory first: its processes then share the machine with a parent that holds only the built models
    for section in ("memory", "train", "scaling", "sustained", "inference", "load"):
        if section in args.section_list:
            section_started = time.perf_counter()
            run.results[section] = functions[section](run)
            run.results[section]["section_seconds"] = round(time.perf_counter() - section_started, 1)
            log(f"{section} done in {run.results[section]['section_seconds']}s")
    run.results["targets"] = targets(run)
    run.results["total_seconds"] = round(time.perf_counter() - started, 1)
    run.results["environment"]["load_average_end"] = _load_average()
    path = os.path.join(args.output_dir, "results.json")
    with open(path, "w") as f:
        json.dump(run.results, f, indent=2, default=str)
    write_markdown(run.results, os.path.join(args.output_dir, "results.md"))
    log(f"wrote {path} and results.md in {run.results['total_seconds']}s")
    shutil.rmtree(run.workdir, ignore_errors=True)
    return run.results


def _child_main(args) -> Dict[str, object]:
    kind, _, name = args._child.partition(":")
    if kind != "memory":
        raise SystemExit(f"unknown child {args._child!r}")
    args.memory = "subprocess"
    run = Run(args)
    try:
        result = memory_child(run, name)
    finally:
        shutil.rmtree(run.workdir, ignore_errors=True)
    print(CHILD_MARKER + json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
