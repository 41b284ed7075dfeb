"""results.json -> results.md (the tables docs/performance.md quotes)."""

import json
import sys
from typing import Dict, List, Optional

DESCRIPTIONS = {
    "ti": "textual inversion, diffusers' example (VAE encode, whole text encoder, embedding table in AdamW)",
    "naive": "CatVersion in the example's loop (VAE encode, whole text encoder, residuals trainable)",
    "fast": "CatVersion, library trainer step (cached latents, cached text-encoder prefix)",
    "floor": "frozen UNet forward + backward to encoder_hidden_states only",
    "fast_no_latent_cache": "library trainer, latent cache off (VAE encode every step)",
    "fast_no_text_cache": "library trainer, text-encoder cache off (whole text encoder every step)",
    "fast_no_cache": "library trainer, both caches off",
    "fast_channels_last": "library trainer step, UNet in channels-last memory format (experiment, not in the library)",
}


def _f(value: Optional[float], digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}"


def _ms(value: Optional[float]) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def _mib(value: Optional[float]) -> str:
    return "-" if value is None else f"{value / 2**20:,.0f}"


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:+.2f}%"


def _table(header: List[str], rows: List[List[str]]) -> List[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def render(results: Dict[str, object]) -> str:
    env, settings, model = results["environment"], results["settings"], results["model"]
    out = [f"# CatVersion benchmarks: {settings['model']} on {settings['device']}", ""]
    out += [f"Command: `{env['command']}`", ""]
    device = env.get("gpu") or f"{env['cpu']} ({env['cpu_count']} cores visible, {env['torch_threads']} torch threads)"
    out += [
        f"- Device: {device}; load average {env.get('load_average')} at start, {env.get('load_average_end')} at end "
        "(a shared machine: absolute times are noisy, ratios of interleaved variants much less so)",
        f"- Versions: torch {env['torch']}, diffusers {env['diffusers']}, transformers {env['transformers']}, "
        f"catversion_diffusers {env['catversion_diffusers']} (commit {env.get('git_commit')}), Python {env['python']}",
        f"- Model: {model['name']} (UNet {model['unet_parameters'] / 1e6:.1f}M, VAE {model['vae_parameters'] / 1e6:.1f}M, "
        f"text encoder {model['text_encoder_parameters'] / 1e6:.1f}M parameters, {model['text_encoder_layers']} layers, "
        f"vocabulary {model['vocab_size']})",
        f"- Setting: {settings['dtype']}, {settings['resolution']} px, batch {settings['batch_size']}, "
        f"{settings['num_tokens']} residual token(s); {settings['warmup']} warm-up + {settings['steps']} measured steps "
        f"per variant; total run {results.get('total_seconds')} s",
        "",
    ]

    train = results.get("train")
    memory = results.get("memory", {}).get("variants", {})
    if train:
        out += ["## Training step", ""]
        variants = train["variants"]
        ti = variants.get("ti", {}).get("median_s")
        floor = variants.get("floor", {}).get("median_s")
        rows = []
        for name, v in variants.items():
            m = memory.get(name, {})
            rows.append([
                f"`{name}`", DESCRIPTIONS.get(name, ""), f"{v['trainable_values']:,}", _f(v.get("median_s")),
                _f(v["median_s"] / ti if ti else None, 2), _f(v["median_s"] / floor if floor else None, 2),
                _mib(m.get("peak_bytes")), _mib(m.get("step_bytes")),
            ])
        out += _table(["variant", "what", "trainable values", "median step (s)", "x TI", "x floor",
                       "peak memory (MiB)", "step memory (MiB)"], rows)
        ratios = ", ".join(f"{k} = {_f(v, 3)}" for k, v in train["ratios"].items())
        paired = ", ".join(f"{k} = {_f(v, 3)}" for k, v in train.get("paired_ratios", {}).items())
        out += ["", f"Ratios of medians: {ratios}.", f"Median of per-round ratios: {paired}."]
        if memory:
            out += ["", f"Memory: {results['memory']['how']}; one process per variant: "
                    f"{results['memory']['process'] == 'subprocess'}."]
        out += [""]

    inference = results.get("inference")
    if inference:
        out += ["## Inference overhead", ""]
        full = inference.get("full_call", {}).get("variants", {})
        rows = []
        for name in inference["encode_prompt"]:
            te = inference["text_encoder"][name]["median"]
            enc = inference["encode_prompt"][name]["median"]
            call = full.get(name, {}).get("median")
            rows.append([
                name, _ms(te), _ms(enc), _f(call, 3),
                _pct(inference.get("full_call", {}).get("overhead", {}).get(name)) if name != "stock" else "",
                _pct(inference["projected_overhead_50_steps"].get(name)) if name != "stock" else "",
            ])
        steps = inference.get("full_call", {}).get("steps")
        out += _table(["pipeline", "text encoder (ms)", "encode_prompt with CFG (ms)",
                       f"full call, {steps} steps (s)" if steps else "full call (not run)", "full-call overhead",
                       "overhead on a 50-step call (projected)"], rows)
        out += ["", f"UNet step with classifier-free guidance (batch 2): {_ms(inference['unet_cfg_step']['median'])} ms; "
                f"VAE decode: {_ms(inference['vae_decode']['median'])} ms; projected 50-step call: "
                f"{_f(inference['projected_50_step_call_s'], 2)} s (stock encode_prompt + 50 UNet steps + decode). "
                "CatVersion changes encode_prompt only (the negative prompt is encoded a second time by the stock "
                "encoder), so its overhead is the encode_prompt difference.",
                f"Stock modules restored after unload: {inference['stock_modules_restored_after_unload']}.", ""]

    load = results.get("load")
    if load:
        out += ["## Load / unload", ""]
        rows = [[name, _ms(v["median"]), _ms(load["first_call_s"].get(name))] for name, v in load["warm"].items()]
        out += _table(["operation", "median, warm (ms)", "first call (ms)"], rows)
        out += ["", "Ratios: " + ", ".join(f"{k} = {_f(v, 3)}" for k, v in load["ratios"].items())
                + f". Files: CatVersion {load['file_bytes']['catversion']:,} bytes, TI {load['file_bytes']['ti']:,} bytes. "
                f"Restored after unload: {load['restored']}.", ""]

    scaling = results.get("scaling")
    if scaling:
        out += ["## Scaling (fast path)", "",
                f"{scaling['warmup']} warm-up + {scaling['steps']} measured steps per setting; fast and floor "
                "interleaved.", ""]
        rows = [[r["axis"], r["batch_size"], r["resolution"], r["num_tokens"], _f(r.get("fast_median_s")),
                 _f(r.get("floor_median_s")), _f(r.get("fast/floor"), 2), _f(r.get("fast_us_per_sample_pixel"), 2)]
                for r in scaling["rows"]]
        out += _table(["sweep", "batch", "resolution", "tokens", "fast (s)", "floor (s)", "fast / floor",
                       "fast, us per sample-pixel"], rows)
        out += [""]

    sustained = results.get("sustained")
    if sustained:
        out += ["## Sustained fast-path steps", "",
                f"{sustained['steps']} steps in {_f(sustained['wall_s'], 1)} s ({_ms(sustained['per_step_s'])} ms/step; "
                f"1000 steps: {_f(sustained['projected_1000_steps_s'], 1)} s); peak {_mib(sustained['peak_bytes'])} MiB "
                f"({sustained['note']}).", ""]

    if results.get("targets"):
        out += ["## Targets", ""]
        rows = []
        for t in results["targets"]:
            met = {True: "met", False: "NOT met", None: "(reported)"}[t["met"]]
            rows.append([t["target"], _f(t["measured"], 4), met, t["where"]])
        out += _table(["target", "measured", "", "where"], rows)
        out += [""]
    return "\n".join(out)


def write_markdown(results: Dict[str, object], path: str) -> None:
    with open(path, "w") as f:
        f.write(render(results))


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(render(json.load(f)))
