#!/usr/bin/env python
"""Train every weight of the bundled offline "world" text-to-image model, from scratch, on CPU.

    python examples/world/train_world.py            # all stages -> src/catversion_diffusers/world/weights

Stages (run in order; each later stage loads what the earlier ones saved in ``--out``):

1. ``clip``: a small CLIP (text tower: ``CLIPTextModel``, 6 layers, hidden 64; vision tower: ViT 32 px, patch 4)
   trained contrastively on the world's pretraining distribution (plain and patterned objects, the personal
   concepts' combinations held out). Its text tower becomes the pipeline's frozen ``text_encoder``; the whole CLIP
   is kept as the world's evaluation CLIP (``eval_clip/``).
2. ``vae``: an ``AutoencoderKL`` (32 px <-> 4 x 16 x 16 latents); its ``scaling_factor`` is set to 1 / latent std.
3. ``vae_decoder``: the decoder alone fine-tuned on plain and randomly patterned scenes (a general codec).
4. ``unet``: a ``UNet2DConditionModel`` (epsilon prediction with offset noise, SD's scaled-linear betas, 10 % empty
   captions for classifier-free guidance, min-SNR weighting, EMA) on VAE latents conditioned on the frozen text
   encoder; ``unet_more`` continues it at a lower rate with more patterned objects.
5. ``eval``: prompt following of the saved ``StableDiffusionPipeline`` measured with the pixel checkers.

Everything runs on the CPU (two torch threads by default) with fixed seeds. Run time: see docs/world.md.
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from catversion_diffusers.testing import tiny_clip_text_config
from catversion_diffusers.world import generator as G

DEFAULT_OUT = os.path.join(os.path.dirname(__file__), "..", "..", "src", "catversion_diffusers", "world", "weights")


def log(*args):
    print(time.strftime("%H:%M:%S"), *args, flush=True)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def lr_at(step, total, base, warmup=100, floor=0.1):
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


# ----------------------------------------------------------------------------------------------------------- CLIP


def image_features(model, pixel_values):
    out = model.get_image_features(pixel_values=pixel_values)
    return out if torch.is_tensor(out) else out.pooler_output  # transformers 5 returns an output object


def text_features(model, **kwargs):
    out = model.get_text_features(**kwargs)
    return out if torch.is_tensor(out) else out.pooler_output


def compatible(caption_attrs, scenes):
    """(n_captions, n_images) bool: caption names only attributes the scene has."""
    return np.array([[G.caption_matches_scene(attrs, s) for s in scenes] for attrs in caption_attrs], dtype=bool)


def train_clip(out, steps, batch, seed):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPVisionConfig

    torch.manual_seed(seed)
    tok_dir = os.path.join(out, "tokenizer")
    tokenizer = G.world_tokenizer(tok_dir, model_max_length=77)
    tokenizer.save_pretrained(tok_dir)
    text_config = tiny_clip_text_config(tokenizer, hidden_size=64, num_layers=6, num_heads=4, intermediate_size=256)
    vision_config = CLIPVisionConfig(
        hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4, image_size=G.IMAGE_SIZE,
        patch_size=4, projection_dim=64,
    )
    config = CLIPConfig(text_config=text_config.to_dict(), vision_config=vision_config.to_dict(), projection_dim=64)
    model = CLIPModel(config).train()
    log(f"clip: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params")

    captions = G.all_captions(include_empty=False, include_patterns=True)
    cap_index = {c: i for i, c in enumerate(captions)}
    cap_attrs = [G.parse_caption(c) for c in captions]
    # Causal attention: the EOS-pooled features never see later padding, so training on 16 tokens gives exactly the
    # features of the full 77-token input at a fraction of the cost.
    cap_ids = tokenizer(captions, padding="max_length", max_length=16, return_tensors="pt")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    rng = np.random.default_rng(seed)
    t0 = time.time()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, 1e-3)
        scenes = [G.sample_pretraining_scene(rng) for _ in range(batch)]
        images = np.stack([G.render(s)[0] for s in scenes])
        caps = [s.caption(G.sample_caption_style(rng, allow_empty=False, patterned=s.pattern is not None))
                for s in scenes]
        idx = torch.tensor([cap_index[c] for c in caps])
        img_emb = F.normalize(image_features(model, to_tensor(images)), dim=-1)
        txt_emb = F.normalize(text_features(model, input_ids=cap_ids.input_ids[idx]), dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * txt_emb @ img_emb.T  # (texts, images)
        comp = torch.from_numpy(compatible([cap_attrs[i] for i in idx.tolist()], scenes)).float()
        loss_t = -(F.log_softmax(logits, 1) * comp / comp.sum(1, keepdim=True)).sum(1).mean()
        loss_i = -(F.log_softmax(logits.T, 1) * comp.T / comp.T.sum(1, keepdim=True)).sum(1).mean()
        loss = (loss_t + loss_i) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"clip step {step}/{steps} loss {loss.item():.3f} scale {model.logit_scale.exp().item():.1f} "
                f"{time.time() - t0:.0f}s")
    model.eval()
    acc = clip_zero_shot(model, tokenizer, seed + 1)
    log("clip zero-shot accuracy", acc)
    model.text_model.save_pretrained(os.path.join(out, "text_encoder"))
    eval_dir = os.path.join(out, "eval_clip")
    model.save_pretrained(eval_dir)
    tokenizer.save_pretrained(eval_dir)
    CLIPImageProcessor(
        do_resize=False, do_center_crop=False, do_rescale=True, do_normalize=True, image_mean=[0.5] * 3,
        image_std=[0.5] * 3, do_convert_rgb=True,
    ).save_pretrained(eval_dir)
    return {"clip_zero_shot": acc, "clip_seconds": time.time() - t0}


@torch.no_grad()
def clip_zero_shot(model, tokenizer, seed, n=400):
    images, _, _, scenes = G.make_dataset(n, seed=10_000 + seed)
    img = F.normalize(image_features(model, to_tensor(images)), dim=-1)
    acc = {}
    for attr, names, style in (("shape", G.SHAPES, "shape"), ("colour", list(G.COLOURS), "colour"),
                               ("background", list(G.BACKGROUNDS), "background")):
        if attr == "shape":
            caps = [G.caption_for(s, style="shape") for s in names]
        elif attr == "colour":
            caps = None
        else:
            caps = [G.caption_for("circle", background=b, style="shape_background") for b in names]
        if caps is None:  # colour: score "a {c} {true shape}" to isolate colour
            correct = 0
            for k, s in enumerate(scenes):
                c = [G.caption_for(s.shape, c, style="shape_colour") for c in names]
                ids = tokenizer(c, padding="max_length", return_tensors="pt")
                t = F.normalize(text_features(model, **ids), dim=-1)
                correct += names[int((t @ img[k]).argmax())] == s.colour
            acc[attr] = correct / n
            continue
        t = F.normalize(text_features(model, **tokenizer(caps, padding="max_length", return_tensors="pt")), dim=-1)
        if attr == "background":  # average over shapes to isolate the background
            t = sum(
                F.normalize(text_features(model, **tokenizer(
                    [G.caption_for(sh, background=b, style="shape_background") for b in names],
                    padding="max_length", return_tensors="pt")), dim=-1) for sh in G.SHAPES)
        pred = (img @ t.T).argmax(1).tolist()
        acc[attr] = float(np.mean([names[p] == getattr(s, attr) for p, s in zip(pred, scenes)]))
    return acc


# ------------------------------------------------------------------------------------------------------------ VAE


def make_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64), layers_per_block=1, latent_channels=4,
        norm_num_groups=16, sample_size=G.IMAGE_SIZE, mid_block_add_attention=False,
    )


def train_vae(out, steps, batch, seed, kl_weight=1e-5):
    torch.manual_seed(seed)
    vae = make_vae().train()
    log(f"vae: {sum(p.numel() for p in vae.parameters()) / 1e6:.2f}M params")
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    t0 = time.time()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, 1e-3)
        x = to_tensor(np.stack([G.render(G.sample_scene(rng))[0] for _ in range(batch)]))
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        rec_loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x)
        kl = post.kl().mean() / x[0].numel()
        loss = rec_loss + kl_weight * kl
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"vae step {step}/{steps} rec {rec_loss.item():.4f} kl {kl.item():.2f} {time.time() - t0:.0f}s")
    vae.eval()
    with torch.no_grad():
        images, _, _, scenes = G.make_dataset(256, seed=20_000 + seed)
        x = to_tensor(images)
        lat = vae.encode(x).latent_dist.sample()
        std = lat.std().item()
        ok = np.mean([all(G.check_image(r, s.caption()).values()) for r, s in zip(vae_roundtrip(vae, images), scenes)])
    vae.register_to_config(scaling_factor=1.0 / std)
    vae.save_pretrained(os.path.join(out, "vae"))
    log(f"vae latent std {std:.3f} mean {lat.mean().item():.3f}; reconstructions pass all checks: {ok:.3f}")
    return {"vae_recon_all_checks": float(ok), "vae_latent_std": std, "vae_seconds": time.time() - t0}


#: (pattern kind, colour pair) never shown to the VAE decoder. Kept fixed so the bundled decoder stays reproducible.
VAE_EXCLUDED_PATTERNS = {("stripes", frozenset(("yellow", "purple"))), ("checker", frozenset(("red", "white"))),
                         ("halves", frozenset(("green", "red")))}


def random_pattern_scene(rng):
    """A shape painted with a random two-colour pattern (any kind, colours, period 3-6 px), excluding
    :data:`VAE_EXCLUDED_PATTERNS`."""
    banned = VAE_EXCLUDED_PATTERNS
    names = list(G.ALL_COLOURS)
    while True:
        kind = ("stripes", "checker", "halves")[rng.integers(3)]
        c1, c2 = rng.choice(len(names), size=2, replace=False)
        c1, c2 = names[c1], names[c2]
        if (kind, frozenset((c1, c2))) not in banned:
            break
    pattern = (kind, c1, c2) if kind == "halves" else (kind, c1, c2, float(rng.integers(3, 7)))
    return G.sample_scene(rng, pattern=pattern)


def finetune_vae_decoder(out, steps, batch, seed):
    """Make the VAE a general codec (as SD's is): fine-tune only its decoder on plain scenes mixed with random
    two-colour patterns. The encoder is frozen, so the latents (and the UNet trained on them) do not change."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed + 7)
    vae = AutoencoderKL.from_pretrained(os.path.join(out, "vae"))
    vae.requires_grad_(False)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for q in params:
        q.requires_grad_(True)
    vae.encoder.eval()
    opt = torch.optim.AdamW(params, lr=5e-4, weight_decay=0.0)
    rng = np.random.default_rng(seed + 7)
    t0 = time.time()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, 5e-4, warmup=20)
        scenes = [random_pattern_scene(rng) if i % 2 else G.sample_scene(rng) for i in range(batch)]
        x = to_tensor(np.stack([G.render(s)[0] for s in scenes]))
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample()
        rec = vae.decode(z).sample
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"vae decoder step {step}/{steps} rec {loss.item():.4f} {time.time() - t0:.0f}s")
    vae.eval()
    stats = vae_quality(vae, seed)
    vae.save_pretrained(os.path.join(out, "vae"))
    log("vae after decoder fine-tuning", stats)
    return {**stats, "vae_decoder_seconds": time.time() - t0}


@torch.no_grad()
def vae_roundtrip(vae, images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) -> encode (posterior mode) -> decode -> uint8 (N, H, W, 3)."""
    rec = vae.decode(vae.encode(to_tensor(images)).latent_dist.mode()).sample
    return ((rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def vae_quality(vae, seed):
    from catversion_diffusers.world.concepts import CONCEPTS, concept_match

    images, _, _, scenes = G.make_dataset(256, seed=20_000 + seed)
    ok = np.mean([all(G.check_image(r, s.caption()).values()) for r, s in zip(vae_roundtrip(vae, images), scenes)])
    concept_ok = {}
    for c in CONCEPTS.values():
        refs = np.stack([img for img, _ in c.references()])
        concept_ok[c.name] = float(np.mean([concept_match(r, c)["match"] for r in vae_roundtrip(vae, refs)]))
    return {"vae_recon_all_checks": float(ok), "vae_recon_concept_match": concept_ok}


# ----------------------------------------------------------------------------------------------------------- UNet


def make_unet(cross_attention_dim=64):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=G.IMAGE_SIZE // 2, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=16,
    )


def make_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
    )


def train_unet(out, steps, batch, seed, n_images=16000, snr_gamma=5.0, ema_decay=0.995, resume=False, lr=1e-3,
               offset_noise=0.1, pattern_prob=G.PRETRAINING_PATTERN_PROB):
    from diffusers import AutoencoderKL, DDPMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    tokenizer = CLIPTokenizer.from_pretrained(os.path.join(out, "tokenizer"))
    text_encoder = CLIPTextModel.from_pretrained(os.path.join(out, "text_encoder")).eval()
    vae = AutoencoderKL.from_pretrained(os.path.join(out, "vae")).eval()
    t0 = time.time()
    captions = G.all_captions(include_empty=True, include_patterns=True)
    cap_index = {c: i for i, c in enumerate(captions)}
    with torch.no_grad():
        ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        cap_emb = torch.cat([text_encoder(ids[i:i + 256])[0] for i in range(0, len(ids), 256)])
        images, _, _, scenes = G.make_dataset(n_images, seed=seed + (1000 if resume else 0), pattern_prob=pattern_prob)
        means, stds = [], []
        for i in range(0, n_images, 500):
            d = vae.encode(to_tensor(images[i:i + 500])).latent_dist
            means.append(d.mean)
            stds.append(d.std)
        lat_mean, lat_std = torch.cat(means), torch.cat(stds)
    # Caption of every image in every style; plain images use the plain styles' table, patterned ones the other.
    styles = [s for s, _ in G.PATTERN_CAPTION_STYLES]
    p_plain = dict(G.CAPTION_STYLES)
    style_p = np.array([[p_plain.get(st, 0.0) for st in styles], [p for _, p in G.PATTERN_CAPTION_STYLES]])
    cap_table = np.array([[cap_index[s.caption(st if s.pattern is not None or st in p_plain else "shape")]
                           for st in styles] for s in scenes])
    patterned = np.array([s.pattern is not None for s in scenes])
    log(f"unet data: {n_images} latents, {len(captions)} captions encoded in {time.time() - t0:.0f}s")

    if resume:  # continue from the saved (EMA) UNet with a fresh optimizer and a new data stream
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(os.path.join(out, "unet")).train()
        seed = seed + 1000
    else:
        unet = make_unet(text_encoder.config.hidden_size).train()
    log(f"unet: {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M params")
    ema = [p.detach().clone() for p in unet.parameters()]
    noise_sched = DDPMScheduler.from_config(make_scheduler().config)
    alphas_cumprod = noise_sched.alphas_cumprod
    snr = alphas_cumprod / (1 - alphas_cumprod)
    scale = vae.config.scaling_factor
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-3, weight_decay=0.01)
    rng = np.random.default_rng(seed + 1)
    if resume:
        torch.manual_seed(seed + 1)
    t0 = time.time()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup=200 if not resume else 50)
        idx = rng.integers(n_images, size=batch)
        st = np.array([rng.choice(len(styles), p=style_p[int(patterned[i])]) for i in idx])
        cond = cap_emb[torch.from_numpy(cap_table[idx, st])]
        i_t = torch.from_numpy(idx)
        latents = (lat_mean[i_t] + lat_std[i_t] * torch.randn_like(lat_mean[i_t])) * scale
        noise = torch.randn_like(latents)
        if offset_noise:  # offset noise: lets the model change an image's mean, so flat backgrounds stay saturated
            noise = noise + offset_noise * torch.randn(batch, latents.shape[1], 1, 1)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (batch,))
        noisy = noise_sched.add_noise(latents, noise, t)
        pred = unet(noisy, t, cond).sample
        w = torch.clamp(snr[t], max=snr_gamma) / snr[t]  # min-SNR weighting for epsilon prediction
        loss = (F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3)) * w).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        d = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema, unet.parameters()):
                e.mul_(d).add_(p.detach(), alpha=1 - d)
        if step % 100 == 0 or step == steps - 1:
            log(f"unet step {step}/{steps} loss {loss.item():.4f} {time.time() - t0:.0f}s")
        if (step + 1) % 400 == 0 or step == steps - 1:
            save_unet(unet, ema, out)
    return {"unet_seconds": time.time() - t0}


def save_unet(unet, ema, out):
    backup = [p.detach().clone() for p in unet.parameters()]
    with torch.no_grad():
        for p, e in zip(unet.parameters(), ema):
            p.copy_(e)
    unet.save_pretrained(os.path.join(out, "unet"))
    with torch.no_grad():
        for p, b in zip(unet.parameters(), backup):
            p.copy_(b)


def assemble(out):
    """Write scheduler/ and model_index.json so StableDiffusionPipeline.from_pretrained(out) works offline."""
    make_scheduler().save_pretrained(os.path.join(out, "scheduler"))
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(os.path.join(out, "vae")),
        text_encoder=CLIPTextModel.from_pretrained(os.path.join(out, "text_encoder")),
        tokenizer=CLIPTokenizer.from_pretrained(os.path.join(out, "tokenizer")),
        unet=UNet2DConditionModel.from_pretrained(os.path.join(out, "unet")),
        scheduler=make_scheduler(), safety_checker=None, feature_extractor=None, image_encoder=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    return pipe


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=DEFAULT_OUT, help="weights directory (default: the bundled one)")
    p.add_argument("--stages", default="clip,vae,vae_decoder,unet,unet_more,eval",
                   help="comma-separated subset of clip,vae,vae_decoder,unet,unet_more,eval (run in this order)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clip-steps", type=int, default=1600)
    p.add_argument("--vae-steps", type=int, default=500)
    p.add_argument("--vae-decoder-steps", type=int, default=300)
    p.add_argument("--unet-steps", type=int, default=3000)
    p.add_argument("--unet-more-steps", type=int, default=1200)
    p.add_argument("--unet-more-pattern-prob", type=float, default=0.5,
                   help="share of patterned objects in the unet_more stage (unet: generator.PRETRAINING_PATTERN_PROB)")
    p.add_argument("--unet-batch", type=int, default=64)
    p.add_argument("--unet-images", type=int, default=20000, help="size of the pre-encoded latent training set")
    p.add_argument("--eval-samples", type=int, default=200)
    p.add_argument("--threads", type=int, default=2, help="torch threads (the bundled weights: 2)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    stages = args.stages.split(",")
    stats_path = os.path.join(out, "training_stats.json")
    stats = {}
    if "clip" in stages:
        stats.update(train_clip(out, args.clip_steps, 128, args.seed))
    if "vae" in stages:
        stats.update(train_vae(out, args.vae_steps, 32, args.seed))
    if "vae_decoder" in stages:
        stats.update(finetune_vae_decoder(out, args.vae_decoder_steps, 32, args.seed))
    if "unet" in stages:
        stats.update(train_unet(out, args.unet_steps, args.unet_batch, args.seed, n_images=args.unet_images))
        stats.update({"unet_steps": args.unet_steps, "unet_batch": args.unet_batch})
    if "unet_more" in stages:  # second phase: continue from the saved UNet at a lower learning rate
        more = train_unet(out, args.unet_more_steps, args.unet_batch, args.seed, n_images=args.unet_images,
                          resume=True, lr=5e-4, pattern_prob=args.unet_more_pattern_prob)
        stats.update({"unet_more_seconds": more["unet_seconds"], "unet_more_steps": args.unet_more_steps})
    has_unet = os.path.isdir(os.path.join(out, "unet"))
    if {"unet", "unet_more", "assemble"} & set(stages) or ("vae_decoder" in stages and has_unet):
        assemble(out)
    if "eval" in stages:
        from catversion_diffusers.world import DEFAULT_GUIDANCE_SCALE, load_world_pipeline
        from catversion_diffusers.world.evaluation import evaluate_prompt_following

        pipe = load_world_pipeline(out)
        res = evaluate_prompt_following(pipe, n=args.eval_samples, seed=1234, guidance_scale=DEFAULT_GUIDANCE_SCALE)
        log("prompt following:", {k: v for k, v in res.items() if k != "records"})
        stats["prompt_following"] = {k: v for k, v in res.items() if k != "records"}
    old = json.load(open(stats_path)) if os.path.exists(stats_path) else {}  # re-read: stages may run in parallel
    stats = {**old, **stats}
    with open(stats_path, "w") as f:
        json.dump(stats, f, indent=2, sort_keys=True)
    log("done", json.dumps(stats, sort_keys=True))


if __name__ == "__main__":
    sys.exit(main())
