#!/usr/bin/env python3
"""PyTorch reference for the training benchmark (scripts/bench.sh train).

Subcommands:

  train        the training step of diffusers' train_unconditional example on
               random data of the training config's shape, on the CPU or
               (--device cuda) a GPU, in f32, TF32 or bf16 autocast (--math): DDPMScheduler.add_noise
               at random timesteps, UNet2DModel forward (channels-last), F.mse_loss,
               backward, clip_grad_norm_, AdamW step, EMAModel step; the model is
               the config's `model` (inline object or path), with its `dropout`.
               On a GPU, AdamW is the fused one and cuDNN's autotuner is on.
               Times whole steps (the random batch included, as a loader would
               serve it) after --warmup; then counts the model's FLOPs. One line:
                 bench train impl=torch config=PATH device=D math=M batch=N
                 params=P images_per_s=X (the best step) median_images_per_s=X
                 step_ms=T peak_rss_mb=M (cpu) | peak_gpu_mb=M (cuda: the
                 allocator's peak) fwd_gflop_per_image=F torch=V diffusers=V threads=T
  make-cifar   write a CIFAR-10 batch file of random pixels (1 label byte and
               3072 pixel bytes a record) for `diffc train` to read.

FLOPs per image (fwd_gflop_per_image) are counted with forward hooks on one
image: 2 x multiply-adds of every Conv2d (out elements x Cin/groups x kh x kw)
and Linear (out elements x in features), and of attention's two matrix
products (softmax(QK^T) V: 2 x L x L x inner channels each). Norms,
activations and elementwise ops are left out. A training step costs ~3x the
forward (the backward computes the input gradient and the weight gradient,
each as large as the forward's product), the usual count.

Run with the venv of scripts/make_unet_fixtures.py (diffusers over Debian's torch):
  /tmp/dvenv/bin/python scripts/bench_train_torch.py train --config configs/fashion-mnist.json --threads 2
"""
import argparse
import json
import os
import resource
import time

# Defaults of `diffc train` (train/options.c) for keys a config may leave out.
DEFAULTS = {"resolution": 64, "train_batch_size": 16, "learning_rate": 1e-4, "adam_beta1": 0.95,
            "adam_beta2": 0.999, "adam_weight_decay": 1e-6, "adam_epsilon": 1e-8, "max_grad_norm": 1.0,
            "ema_max_decay": 0.9999, "ema_inv_gamma": 1.0, "ema_power": 0.75, "ddpm_num_steps": 1000,
            "ddpm_beta_schedule": "linear", "dropout": None}


def load_train_config(path):
    with open(path) as f:
        cfg = {**DEFAULTS, **json.load(f)}
    model = cfg["model"]
    if isinstance(model, str):  # a config.json, or a folder holding one
        with open(os.path.join(model, "config.json") if os.path.isdir(model) else model) as f:
            model = json.load(f)
    model = {k: v for k, v in model.items() if not k.startswith("_")}
    if cfg["dropout"] is not None:
        model["dropout"] = cfg["dropout"]
    return cfg, model


def count_forward_flops(model, x, t, y):
    """FLOPs of one forward pass, from hooks (see the module comment)."""
    import torch
    from diffusers.models.attention_processor import Attention

    total = [0]

    def conv(m, inp, out):
        total[0] += 2 * out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear(m, inp, out):
        total[0] += 2 * out.numel() * m.in_features

    def attention(m, inp, out):
        h = inp[0]
        n, tokens = h.shape[0], h.shape[2] * h.shape[3] if h.ndim == 4 else h.shape[1]
        total[0] += 2 * 2 * n * tokens * tokens * m.to_q.out_features

    hooks = []
    for m in model.modules():  # isinstance: diffusers' LoRA-compatible layers subclass these
        for kind, hook in ((torch.nn.Conv2d, conv), (torch.nn.Linear, linear), (Attention, attention)):
            if isinstance(m, kind):
                hooks.append(m.register_forward_hook(hook))
    with torch.no_grad():
        model(x, t, class_labels=y)
    for h in hooks:
        h.remove()
    return total[0]


def cmd_train(args):
    import statistics
    import torch
    import torch.nn.functional as F
    import diffusers
    from diffusers import DDPMScheduler, UNet2DModel
    from diffusers.training_utils import EMAModel

    cuda = args.device == "cuda"
    if args.math != "fp32" and not cuda:
        raise SystemExit(f"--math {args.math}: a GPU's mode, needs --device cuda")
    dev = torch.device(args.device)
    if cuda:  # TF32 for f32 products, cuDNN's autotuner: what a GPU user runs with
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.math != "fp32"
        torch.backends.cudnn.benchmark = True
    else:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg, mcfg = load_train_config(args.config)
    n = args.batch or cfg["train_batch_size"]
    size, c = cfg["resolution"], mcfg.get("in_channels", 3)
    classes = mcfg.get("num_class_embeds")
    model = UNet2DModel(**mcfg).to(dev, memory_format=torch.channels_last).train()
    sched = DDPMScheduler(num_train_timesteps=cfg["ddpm_num_steps"], beta_schedule=cfg["ddpm_beta_schedule"])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["learning_rate"],
                            betas=(cfg["adam_beta1"], cfg["adam_beta2"]),
                            weight_decay=cfg["adam_weight_decay"], eps=cfg["adam_epsilon"],
                            **({"fused": True} if cuda else {}))
    ema = EMAModel(model.parameters(), decay=cfg["ema_max_decay"], use_ema_warmup=True,
                   inv_gamma=cfg["ema_inv_gamma"], power=cfg["ema_power"])
    bf16 = args.math == "bf16"

    def step():
        clean = (torch.rand(n, c, size, size, device=dev) * 2 - 1).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, classes - 1, (n,), device=dev) if classes else None
        noise = torch.randn_like(clean)
        t = torch.randint(0, sched.config.num_train_timesteps, (n,), device=dev)
        noisy = sched.add_noise(clean, noise, t)
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=bf16):
            pred = model(noisy, t, class_labels=y).sample
        loss = F.mse_loss(pred.float(), noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["max_grad_norm"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.step(model.parameters())

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    times = []
    for r in range(args.warmup + args.steps):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        if r >= args.warmup:
            times.append(time.perf_counter() - t0)
    best = min(times)
    if cuda:
        peak = f"peak_gpu_mb={torch.cuda.max_memory_allocated() / 2**20:.0f}"
    else:
        peak = f"peak_rss_mb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}"
    x1 = torch.zeros(1, c, size, size, device=dev).contiguous(memory_format=torch.channels_last)
    flops = count_forward_flops(model, x1, torch.tensor([10], device=dev),
                                torch.tensor([0], device=dev) if classes else None)
    params = sum(p.numel() for p in model.parameters())
    print(f"bench train impl=torch config={args.config} device={args.device} math={args.math} batch={n} "
          f"params={params} images_per_s={n / best:.3f} median_images_per_s={n / statistics.median(times):.3f} "
          f"step_ms={best * 1e3:.1f} {peak} fwd_gflop_per_image={flops / 1e9:.4f} torch={torch.__version__} "
          f"diffusers={diffusers.__version__} threads={args.threads}", flush=True)


def cmd_make_cifar(args):
    data = bytearray(os.urandom(args.count * 3073))
    for i in range(args.count):
        data[i * 3073] = i % 10
    os.makedirs(os.path.dirname(args.path) or ".", exist_ok=True)
    with open(args.path, "wb") as f:
        f.write(data)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--config", required=True, help="a diffc training config (JSON)")
    t.add_argument("--batch", type=int, default=0, help="0: the config's train_batch_size")
    t.add_argument("--steps", type=int, default=5)
    t.add_argument("--warmup", type=int, default=2)
    t.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads (--device cpu)")
    t.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    t.add_argument("--math", choices=("fp32", "tf32", "bf16"), default="fp32",
                   help="GPU modes: tf32 products, or bf16 autocast (--device cuda)")
    m = sub.add_parser("make-cifar")
    m.add_argument("path")
    m.add_argument("--count", type=int, default=1000)
    args = p.parse_args()
    {"train": cmd_train, "make-cifar": cmd_make_cifar}[args.cmd](args)


if __name__ == "__main__":
    main()
