"""Sampling cost of the paper's tap recipe on the full-size SD 1.5 UNet (random weights, CPU).

Measures one ComfyUI sampler run (euler, a few steps, 64x64 latent, cfg 5: the UNet sees
a batch of 2 each step, cond + uncond) with and without the recipe adapter (attn2o -> ffni,
mid_dim 60, in all 16 transformer blocks), interleaved, and reports the ratio; also counts
the recipe's parameters against the UNet. Goal: under 3 % overhead.

    python -m bench.tap_sampling [--steps 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics

from bench.common import interleaved, paired_ratio, setup_host, write_result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=64, help="latent side (64 = 512 px)")
    args = parser.parse_args()
    setup_host()
    import comfy.model_management
    import comfy.sample
    import torch

    from devtools.checkpoints import SD15_FULL, build_model_patcher
    from taptune.adapter_core import TapAdapterSet, TapConfig
    from taptune.patching.apply import apply_adapter_set
    from taptune.patching.model_access import model_sites, unet_parameter_count

    torch.manual_seed(0)
    base = build_model_patcher("SD15", SD15_FULL, seed=0)
    sites = model_sites(base)
    recipe = TapAdapterSet.create(sites, TapConfig("attn2o", "ffni", mid_dim=60), init="paper", seed=0)
    adapted = apply_adapter_set(base, recipe)
    unet_parameters = unet_parameter_count(base)
    adapter_parameters = recipe.num_parameters()

    latent = torch.zeros(1, 4, args.size, args.size)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    positive = [[torch.randn(1, 77, 768, generator=g), {}]]
    negative = [[torch.randn(1, 77, 768, generator=g), {}]]

    def run(model):
        return lambda: comfy.sample.sample(
            model,
            noise,
            args.steps,
            5.0,
            "euler",
            "normal",
            positive,
            negative,
            latent,
            denoise=1.0,
            disable_pbar=True,
            seed=1,
        )

    with torch.inference_mode():
        run(base)()  # warm-up (and the first load of the model)
        run(adapted)()
        loads = {
            "base": lambda: comfy.model_management.load_models_gpu([base]),
            "adapted": lambda: comfy.model_management.load_models_gpu([adapted]),
        }
        times = interleaved({"base": run(base), "adapted": run(adapted)}, args.rounds, before=loads)
    base_s = statistics.median(times["base"]) / args.steps
    adapted_s = statistics.median(times["adapted"]) / args.steps
    result = {
        "unet_parameters": unet_parameters,
        "recipe_parameters": adapter_parameters,
        "recipe_share_percent": 100.0 * adapter_parameters / unet_parameters,
        "transformer_blocks": len(recipe.adapters),
        "seconds_per_step_base": base_s,
        "seconds_per_step_adapted": adapted_s,
        "overhead_ratio": paired_ratio(times, "adapted", "base"),
        "raw_seconds": times,
        "settings": vars(args),
    }
    path = write_result("tap_sampling", result)
    print(
        f"UNet parameters {unet_parameters:,}; recipe {adapter_parameters:,} ({result['recipe_share_percent']:.3f} %)"
    )
    print(f"sampling s/step: base {base_s:.2f}, with recipe {adapted_s:.2f}, ratio {result['overhead_ratio']:.3f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
