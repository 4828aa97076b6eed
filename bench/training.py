"""Training cost on the full-size SD 1.5 UNet (random weights, CPU, 32x32 latents, instance + class batch).

Seconds per training step and peak resident memory for:
* ``tap``: the paper's recipe (attn2o -> ffni, mid_dim 60) with TapTuneDreamBoothTrain's loop,
* ``oft``: OFT r=4 COFT on the paper's targets, same loop,
* ``comfy_lora`` / ``comfy_oft``: ComfyUI's own TrainLoraNode, LoRA rank 8 and its OFT,
* ``full``: full fine-tuning of the UNet (what DreamBooth does), AdamW, same objective.
All fp32, no gradient checkpointing, batch = 1 instance + 1 class latent. Each variant runs
in its own process (so peak RSS is its own) and the orchestrator writes one table.

    python -m bench.training            # all variants, then bench/results/training.json + .png
    python -m bench.training --variant tap
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Any

import torch

from bench.common import RESULTS, peak_rss_bytes, setup_host, train_lora_node_step_times, write_result

VARIANTS = ("tap", "oft", "comfy_lora", "comfy_oft", "full")
STEPS = 4  # the first is warm-up; the median of the rest is reported


def _inputs() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [torch.rand(256, 256, 3, generator=g)], [torch.rand(256, 256, 3, generator=g)]


def _ours(kind: str) -> list[float]:
    from devtools.checkpoints import SD15_FULL, build_model_patcher
    from devtools.standins import FixedTextEncoder, PixelVAE
    from taptune.adapter_core import OFTConfig, OFTSpec, TapConfig, TapGroupSpec, TapSpec
    from taptune.training.run_inputs import ImageSet, RunInputs
    from taptune.training.settings import TrainSettings
    from taptune.training.trainer import DreamBoothTrainer

    model = build_model_patcher("SD15", SD15_FULL, seed=0)
    spec = (
        TapSpec((TapGroupSpec(TapConfig("attn2o", "ffni", mid_dim=60)),))
        if kind == "tap"
        else OFTSpec(OFTConfig(r=4, coft=True))
    )
    instance, classes = _inputs()
    stamps: list[float] = []
    settings = TrainSettings(steps=STEPS, resolution=256, batch_size=1, precision="fp32", seed=0)
    trainer = DreamBoothTrainer(
        model,
        FixedTextEncoder(768),
        PixelVAE(),
        spec,
        RunInputs(ImageSet(instance, "a photo of sks dog"), ImageSet(classes, "a photo of dog"), settings),
        report=lambda *args: stamps.append(time.perf_counter()),
    )
    start = time.perf_counter()
    trainer.run()
    return [b - a for a, b in zip([start, *stamps[:-1]], stamps, strict=True)]


def _comfy(algorithm: str) -> list[float]:
    from devtools.checkpoints import SD15_FULL, build_model_patcher

    model = build_model_patcher("SD15", SD15_FULL, seed=0)
    return train_lora_node_step_times(model, 256, STEPS, "fp32", algorithm)


def _full() -> list[float]:
    import comfy.model_management

    from devtools.checkpoints import SD15_FULL, build_model_patcher
    from taptune.training.objective import noisy_latents, prediction_error

    model = build_model_patcher("SD15", SD15_FULL, seed=0)
    comfy.model_management.load_models_gpu([model], force_full_load=True)
    unet = model.model.diffusion_model
    unet.requires_grad_(True)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-6, foreach=False)
    sampling = model.get_model_object("model_sampling")
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 4, 32, 32, generator=g)
    context = torch.randn(2, 77, 768, generator=g)
    times = []
    for _ in range(STEPS):
        start = time.perf_counter()
        sigma = sampling.sigmas[torch.randint(0, 1000, (2,), generator=g)]
        x_t = noisy_latents(sampling, sigma, torch.randn(x0.shape, generator=g), x0)
        loss = prediction_error(
            sampling, sigma, x_t, model.model.apply_model(x_t, sigma, c_crossattn=context), x0
        ).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return times


def run_variant(variant: str) -> dict[str, Any]:
    setup_host()
    runners = {
        "tap": lambda: _ours("tap"),
        "oft": lambda: _ours("oft"),
        "comfy_lora": lambda: _comfy("LoRA"),
        "comfy_oft": lambda: _comfy("OFT"),
        "full": _full,
    }
    with torch.inference_mode(False):
        times = runners[variant]()
    return {
        "variant": variant,
        "step_seconds": times,
        "seconds_per_step": statistics.median(times[1:]),
        "peak_rss_bytes": peak_rss_bytes(),
    }


def plot(rows: dict[str, dict[str, Any]], path: Any) -> None:
    """Two bar charts (seconds per step, peak memory) as a PNG for the README."""
    from PIL import Image, ImageDraw

    width, height = 760, 300
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    names = [v for v in VARIANTS if v in rows and "seconds_per_step" in rows[v]]
    panels = (("seconds per step", "seconds_per_step", 1.0), ("peak RSS (GiB)", "peak_rss_bytes", 1 / 2**30))
    for p, (title, key, unit) in enumerate(panels):
        left = 20 + p * (width // 2)
        draw.text((left, 8), title, fill=(0, 0, 0))
        values = [rows[n][key] * unit for n in names]
        top = max(values) if values else 1.0
        bar = (width // 2 - 60) // max(1, len(names))
        for i, (name, value) in enumerate(zip(names, values, strict=True)):
            x = left + 10 + i * bar
            h = int((height - 80) * value / top)
            draw.rectangle(
                [x, height - 40 - h, x + bar - 12, height - 40],
                fill=(40, 90, 170) if name in ("tap", "oft") else (150, 150, 150),
            )
            draw.text((x, height - 36), name, fill=(0, 0, 0))
            draw.text((x, height - 54 - h), f"{value:.1f}", fill=(0, 0, 0))
    image.save(path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", choices=VARIANTS)
    parser.add_argument("--only", nargs="*", default=list(VARIANTS))
    args = parser.parse_args()
    if args.variant:
        print("RESULT " + json.dumps(run_variant(args.variant)))
        return
    previous = RESULTS / "training.json"
    # --only re-measures some variants and keeps the others from the last full run.
    rows: dict[str, dict[str, Any]] = json.loads(previous.read_text())["variants"] if previous.exists() else {}
    for variant in args.only:
        done = subprocess.run(
            [sys.executable, "-m", "bench.training", "--variant", variant], capture_output=True, text=True
        )
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode == 0 and lines:
            rows[variant] = json.loads(lines[-1][len("RESULT ") :])
        else:
            rows[variant] = {
                "variant": variant,
                "error": f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}",
            }
        print(
            variant,
            rows[variant].get("seconds_per_step"),
            rows[variant].get("peak_rss_bytes", 0) / 2**30,
            rows[variant].get("error", ""),
            flush=True,
        )
    ratios = {}
    if "seconds_per_step" in rows.get("tap", {}) and "seconds_per_step" in rows.get("comfy_lora", {}):
        ratios["tap_over_comfy_lora_time"] = rows["tap"]["seconds_per_step"] / rows["comfy_lora"]["seconds_per_step"]
        ratios["tap_over_comfy_lora_memory"] = rows["tap"]["peak_rss_bytes"] / rows["comfy_lora"]["peak_rss_bytes"]
    path = write_result(
        "training",
        {
            "variants": rows,
            "ratios": ratios,
            "settings": {"latent": 32, "batch": "1 instance + 1 class", "precision": "fp32"},
        },
    )
    plot(rows, RESULTS / "training.png")
    print(json.dumps(ratios), f"wrote {path}")


if __name__ == "__main__":
    main()
