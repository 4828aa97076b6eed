"""Train the pocket judge (``pocket/weights/pocket_judge.safetensors``) from a seed, on the CPU.

    .venv/bin/python -m devtools.train_judge [--seed 0] [--steps 1500] [--out PATH]

Data: world pictures, half plain and half patterned (``pocket.world.judge_set``), drawn once
from the seed; each step augments them (blur, noise, a 2x down-and-up resample, slight
colour jitter) so the judge also reads generated pictures, which are softer than drawn
ones. Reports per-head accuracy on held-out clean pictures and on degraded ones, and
stores it in the file's metadata. Pure PyTorch; no ComfyUI needed. About 16 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

# On a shared CPU, spinning OpenMP threads waste whole time slices: let them sleep (set before torch loads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from devtools.comfy_host import import_pack  # noqa: E402

import_pack()

from taptune.pocket import world  # noqa: E402
from taptune.pocket.judge import HEADS, WEIGHTS_FILE, Judge, label_indices, save_judge, scene_labels  # noqa: E402


def degrade(x: torch.Tensor, g: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """Random blur, elastic wobble, resampling, noise and colour jitter of ``[N, 3, H, W]`` pictures in 0..1."""
    n = x.shape[0]

    def pick(p: float) -> torch.Tensor:
        return (torch.rand(n, 1, 1, 1, generator=g) < p).float()

    # Gaussian blur, sigma up to 1.5 px (separable 5-tap kernel, per-sample sigma).
    sigma = 0.3 + torch.rand(n, generator=g) * 1.2 * strength
    taps = torch.arange(-2, 3).float()
    k = torch.exp(-(taps[None] ** 2) / (2 * sigma[:, None] ** 2))
    k = k / k.sum(dim=1, keepdim=True)
    xb = x.reshape(1, n * 3, *x.shape[2:])
    kx = k.repeat_interleave(3, dim=0)[:, None, None, :]
    xb = F.conv2d(F.pad(xb, (2, 2, 0, 0), mode="replicate"), kx, groups=n * 3)
    xb = F.conv2d(F.pad(xb, (0, 0, 2, 2), mode="replicate"), kx.transpose(2, 3), groups=n * 3)
    blurred = xb.reshape_as(x)
    m = pick(0.5)
    x = m * blurred + (1 - m) * x
    # Elastic wobble: a smooth random displacement of up to ~1.5 px (generated edges are not straight).
    coarse = (torch.rand(n, 2, 5, 5, generator=g) - 0.5) * (2 * 1.5 * strength / (x.shape[-1] / 2))
    flow = F.interpolate(coarse, size=x.shape[2:], mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    base = F.affine_grid(torch.eye(2, 3).expand(n, 2, 3), list(x.shape), align_corners=False)
    warped = F.grid_sample(x, base + flow, mode="bilinear", padding_mode="border", align_corners=False)
    m = pick(0.5)
    x = m * warped + (1 - m) * x
    # Down-and-up resampling (a codec's softness).
    small = F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False, antialias=True)
    m = pick(0.25)
    x = m * F.interpolate(small, size=x.shape[2:], mode="bilinear", align_corners=False) + (1 - m) * x
    # Colour jitter: per-channel gain and offset.
    gain = 1 + (torch.rand(n, 3, 1, 1, generator=g) - 0.5) * 0.14 * strength
    offset = (torch.rand(n, 3, 1, 1, generator=g) - 0.5) * 0.06 * strength
    m = pick(0.5)
    x = m * (x * gain + offset) + (1 - m) * x
    # Noise.
    noise = torch.randn(x.shape, generator=g) * (torch.rand(n, 1, 1, 1, generator=g) * 0.04 * strength)
    m = pick(0.5)
    x = x + m * noise
    return x.clamp(0, 1)


def accuracy(judge: Judge, x: torch.Tensor, labels: dict[str, torch.Tensor]) -> dict[str, float]:
    judge.eval()
    with torch.no_grad():
        logits = {k: [] for k in HEADS}
        for i in range(0, len(x), 500):
            _, out = judge(x[i : i + 500])
            for k in HEADS:
                logits[k].append(out[k])
    acc = {k: float((torch.cat(v).argmax(1) == labels[k]).float().mean()) for k, v in logits.items()}
    judge.train()
    return acc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--images", type=int, default=16000)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=WEIGHTS_FILE)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.perf_counter()

    images, scenes = world.judge_set(args.seed * 1000 + 11, args.images)
    x = Judge.prepare(images)
    y = label_indices([scene_labels(s) for s in scenes])
    val_images, val_scenes = world.judge_set(args.seed * 1000 + 12, 2000)
    vx = Judge.prepare(val_images)
    vy = label_indices([scene_labels(s) for s in val_scenes])
    print(f"data: {len(x)} training and {len(vx)} held-out pictures in {time.perf_counter() - start:.0f} s", flush=True)

    judge = Judge()
    g = torch.Generator().manual_seed(args.seed)
    optimiser = torch.optim.AdamW(judge.parameters(), lr=args.lr, weight_decay=1e-4)
    warmup = 100

    def lr_at(step: int) -> float:
        if step < warmup:
            return args.lr * (step + 1) / warmup
        return args.lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, args.steps - warmup)))

    curve = []
    judge.train()
    for step in range(args.steps):
        idx = torch.randint(0, len(x), (args.batch,), generator=g)
        xb = degrade(x[idx], g)
        if torch.rand(1, generator=g).item() < 0.5:  # mirror: shapes, colours and patterns keep their names
            xb = xb.flip(3)
        for group in optimiser.param_groups:
            group["lr"] = lr_at(step)
        _, logits = judge(xb)
        loss = sum(F.cross_entropy(logits[k], y[k][idx]) for k in HEADS)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        curve.append(loss.item())
        if step % 200 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {np.mean(curve[-50:]):.4f}  {time.perf_counter() - start:.0f} s", flush=True)

    judge.eval()
    clean = accuracy(judge, vx, vy)
    g_val = torch.Generator().manual_seed(12345)
    degraded = accuracy(judge, degrade(vx, g_val), vy)
    elapsed = time.perf_counter() - start
    print("held-out accuracy, clean:   ", json.dumps({k: round(v, 4) for k, v in clean.items()}))
    print("held-out accuracy, degraded:", json.dumps({k: round(v, 4) for k, v in degraded.items()}))
    info = {
        "width": 32,
        "seed": args.seed,
        "steps": args.steps,
        "batch": args.batch,
        "images": args.images,
        "seconds": round(elapsed, 1),
        "accuracy_clean": clean,
        "accuracy_degraded": degraded,
        "final_loss": float(np.mean(curve[-50:])),
    }
    save_judge(judge, args.out, info)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB) in {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
