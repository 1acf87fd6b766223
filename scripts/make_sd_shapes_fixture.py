#!/usr/bin/env python3
"""A tiny Stable Diffusion pipeline that draws shapes, for the end-to-end
fine-tuning test of #17 (tests/fixtures/sd_shapes).

A random pipeline cannot show that fine-tuning teaches anything: its VAE does
not reconstruct and its UNet draws noise. This one is small (16x16 images from
8x8 latents, the architecture of tests/fixtures/sd_tiny with a wider UNet) but
trained here:
  vae    an AutoencoderKL trained to reconstruct 16x16 squares and discs of
         any colour on gray; scaling_factor = 1 / std of its latents.
  unet   a UNet2DConditionModel trained on those latents with captions that
         name the shape ("a window" for a square, "a ball" for a disc, as
         tests/test_train_caption.c names them) and, for 70% of the images,
         one of six colours (PALETTE: "a green ball"); the other images
         have random colours and no colour word, 10% have an empty caption.
         So it draws the shape and the colours it knows, and red or blue
         only by chance.
The test fine-tunes it (LoRA or full) on red and blue shapes captioned with
their colour and checks that the prompted colour appears more often than
chance. `--check` repeats that experiment here with diffusers + peft, to show
that the fixture can learn it in the test's budget.

Made with diffusers 0.42.1, transformers 5.25, torch 2.15, peft (see --check).
Run: /work/venv-torch/bin/python scripts/make_sd_shapes_fixture.py [--check]
"""
import argparse
import math
import os

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
OUT = os.path.join(ROOT, "sd_shapes")
SIDE = 16
SHAPES = ["window", "ball"]
# Colours the base model learns to name; red and blue are left for the test to teach.
PALETTE = ["green", "yellow", "purple", "orange", "cyan", "pink"]
PALETTE_RGB = torch.tensor([[40, 200, 40], [230, 220, 40], [140, 40, 180], [240, 140, 30], [40, 200, 210],
                            [240, 120, 180]]) / 255.0
BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


def shapes(gen, n, colours=None):
    """n images [n, 3, SIDE, SIDE] in [-1, 1]: a square or a disc (index in
    the second result), centre jittered by up to 2 pixels, of a random colour
    (or the given [n, 3] colours in [0, 1]) on gray."""
    kind = torch.randint(0, 2, (n,), generator=gen)
    if colours is None:
        colours = torch.rand(n, 3, generator=gen)
    centre = 7.5 + torch.randint(-2, 3, (n, 2), generator=gen).float()
    yy, xx = torch.meshgrid(torch.arange(SIDE).float(), torch.arange(SIDE).float(), indexing="ij")
    dy = yy[None] - centre[:, 0, None, None]
    dx = xx[None] - centre[:, 1, None, None]
    square = (dx.abs() <= 4) & (dy.abs() <= 4)
    disc = dx * dx + dy * dy <= 4.8 ** 2
    inside = torch.where(kind[:, None, None] == 0, square, disc)
    img = torch.where(inside[:, None], colours[:, :, None, None], torch.full((n, 3, 1, 1), 0.5))
    return img * 2 - 1, kind


def make_text():
    tokenizer = CLIPTokenizer.from_pretrained(os.path.join(ROOT, "clip_tiny"))
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                                        hidden_act="quick_gelu", bos_token_id=tokenizer.bos_token_id,
                                        eos_token_id=2, pad_token_id=1))
    return tokenizer, text.eval()


def embed(tokenizer, text, prompts):
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        return text(ids)[0]


def train_vae(gen, steps):
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                        block_out_channels=(16, 32), norm_num_groups=8, sample_size=SIDE,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3)
    for step in range(steps):
        x, _ = shapes(gen, 32)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        loss = F.mse_loss(rec, x) + 1e-6 * post.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 200 == 0 or step == steps - 1:
            print(f"vae {step}: mse {F.mse_loss(rec, x).item():.5f}")
    vae.eval()
    with torch.no_grad():
        x, _ = shapes(gen, 256)
        std = vae.encode(x).latent_dist.mean.std().item()
    vae.register_to_config(scaling_factor=round(1.0 / std, 5))
    return vae


def make_unet():
    return UNet2DConditionModel(sample_size=SIDE // 2, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64), norm_num_groups=8, cross_attention_dim=32,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=4)


def latents_of(vae, x, gen):
    with torch.no_grad():
        post = vae.encode(x).latent_dist
        return (post.mean + post.std * torch.randn(post.mean.shape, generator=gen)) * vae.config.scaling_factor


def train_denoiser(unet, params, vae, cond, batches, steps, lr, gen):
    """`steps` AdamW steps of the epsilon loss; batches() gives (images,
    prompts); cond(prompts) their embeddings."""
    sched = DDIMScheduler(**BETAS)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0)
    for step in range(steps):
        x, prompts = batches()
        z = latents_of(vae, x, gen)
        noise = torch.randn(z.shape, generator=gen)
        t = torch.randint(0, 1000, (z.shape[0],), generator=gen)
        pred = unet(sched.add_noise(z, noise, t), t, cond(prompts)).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 250 == 0 or step == steps - 1:
            print(f"unet {step}: loss {loss.item():.4f}")


def pipeline(vae, text, tokenizer, unet):
    sched = DDIMScheduler(**BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def redness(images):
    """Per image: mean red minus mean blue over pixels far from the gray
    background ([n, H, W, 3] in [0, 1])."""
    far = (images - 0.5).abs().amax(-1) > 0.15
    diff = images[..., 0] - images[..., 2]
    return torch.stack([d[m].mean() if m.any() else torch.tensor(0.0) for d, m in zip(diff, far)])


def check(seed, steps, lr, rank):
    """LoRA fine-tune (peft, rank 4) on red/blue shapes captioned with their
    colour, then count how often "a red ..." comes out red."""
    from peft import LoraConfig
    pipe = StableDiffusionPipeline.from_pretrained(OUT)
    gen = torch.Generator().manual_seed(seed)
    rgb = torch.tensor([[220, 30, 30], [30, 40, 220]]) / 255.0
    for name in ("base", "lora"):
        if name == "lora":
            pipe.unet.requires_grad_(False)
            pipe.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                             target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
            params = [p for p in pipe.unet.parameters() if p.requires_grad]
            cache = {}

            def cond(prompts):
                return torch.cat([cache.setdefault(p, embed(pipe.tokenizer, pipe.text_encoder, [p]))
                                  for p in prompts])

            def batches():
                c = torch.randint(0, 2, (8,), generator=gen)
                x, kind = shapes(gen, 8, rgb[c])
                return x, [f"a {['red', 'blue'][ci]} {SHAPES[k]}" for ci, k in zip(c.tolist(), kind.tolist())]
            pipe.unet.train()
            train_denoiser(pipe.unet, params, pipe.vae, cond, batches, steps, lr, gen)
            pipe.unet.eval()
        hits = 0
        for colour in ("red", "blue"):
            out = pipe([f"a {colour} ball"] * 8, num_inference_steps=20, guidance_scale=4.0, output_type="np",
                       generator=torch.Generator().manual_seed(seed)).images
            r = redness(torch.from_numpy(out))
            hits += int(((r > 0) == (colour == "red")).sum())
        print(f"{name}: prompted colour in {hits} of 16 images")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true", help="the LoRA experiment on the saved fixture")
    ap.add_argument("--vae-steps", type=int, default=1500)
    ap.add_argument("--unet-steps", type=int, default=3000)
    ap.add_argument("--lora-steps", type=int, default=300)
    ap.add_argument("--lora-lr", type=float, default=1e-3)
    ap.add_argument("--lora-rank", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.check:
        check(1, args.lora_steps, args.lora_lr, args.lora_rank)
        return
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    tokenizer, text = make_text()
    vae = train_vae(gen, args.vae_steps)
    unet = make_unet()
    prompts = [""] + [f"a {c}{s}" for c in [""] + [p + " " for p in PALETTE] for s in SHAPES]
    cache = {p: embed(tokenizer, text, [p]) for p in prompts}

    def batches():
        c = torch.randint(0, len(PALETTE), (32,), generator=gen)
        named = torch.rand(32, generator=gen) < 0.7
        colours = torch.where(named[:, None], PALETTE_RGB[c], torch.rand(32, 3, generator=gen))
        x, kind = shapes(gen, 32, colours)
        drop = torch.rand(32, generator=gen) < 0.1
        return x, ["" if d else f"a {PALETTE[ci]} {SHAPES[k]}" if n else f"a {SHAPES[k]}"
                   for d, n, ci, k in zip(drop.tolist(), named.tolist(), c.tolist(), kind.tolist())]
    train_denoiser(unet, unet.parameters(), vae, lambda ps: torch.cat([cache[p] for p in ps]), batches,
                   args.unet_steps, 1e-3, gen)
    pipeline(vae, text, tokenizer, unet.eval()).save_pretrained(OUT)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
