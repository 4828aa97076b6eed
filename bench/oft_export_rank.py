"""OFT exported for LoRA-only tools: error and file size against the rank of the export.

On the full-size SD 1.5 UNet (random weights, ``devtools/checkpoints.py``) with an OFT r=4 adapter
on the paper's targets (the 128 attention projections) whose generators sit on the COFT ball
(paper eps 6e-5, every block at its radius: the most a COFT run can move), for each rank:

* the relative Frobenius error of the weight differences, ``||D - D_r|| / ||D||`` over all layers
  together (and the worst layer);
* the relative error of one UNet output (64x64 latent, batch 2) loaded through ComfyUI's stock LoRA
  path (``comfy.sd.load_lora_for_models``, what ``LoraLoaderModelOnly`` runs) against the merged OFT
  model: ``||out_r - out_oft|| / ||out_oft - out_base||`` (of the adapter's effect) and
  ``/ ||out_oft||``;
* the file size in fp16 (what the node writes by default).

Rank 0 is the full ``.diff`` export. Random base weights and random generators spread a
difference over all singular values, so these errors are an upper end: a trained adapter's
differences are more compressible.

    python -m bench.oft_export_rank [--ranks 4 8 16 32 64 0]
    python -m bench.oft_export_rank --pocket-adapter .demo/models/adapters/taptune/pocket_striped_star_coft.safetensors \\
        --size 8 --ranks 1 2 4 8 16 0
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import setup_host, write_result


def coft_ball_adapter(layers: dict[str, tuple[int, int]], seed: int) -> Any:
    """OFT r=4 COFT (eps 6e-5) with every generator block on its ball: random direction, norm = radius."""
    from taptune.adapter_core import OFTAdapterSet, OFTConfig

    adapter_set = OFTAdapterSet.create(layers, OFTConfig(r=4, coft=True, eps=6e-5))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for rotation in adapter_set.rotations.values():
            P = torch.randn(rotation.P.shape, generator=g)
            norms = torch.linalg.matrix_norm(P if P.dim() == 3 else P[None])
            rotation.P.copy_(P * (rotation.radius / norms)[:, None, None])
    return adapter_set


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ranks", type=int, nargs="+", default=[4, 8, 16, 32, 64, 128, 0])
    parser.add_argument("--size", type=int, default=64, help="latent side of the UNet output compared")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--pocket-adapter",
        default=None,
        help="a trained OFT file of the pocket model (make demo trains pocket_striped_star_coft.safetensors): "
        "measure that adapter on the pocket model instead of a random one on SD 1.5",
    )
    args = parser.parse_args()
    setup_host()
    import comfy.model_management
    import comfy.sd

    from devtools.checkpoints import SD15_FULL, build_model_patcher
    from taptune.adapter_core import oft_targets
    from taptune.patching.apply import apply_adapter_set
    from taptune.patching.model_access import model_view
    from taptune.patching.weight_export import kohya_names, lora_differences, lora_low_rank, original_weight_of

    if args.pocket_adapter:
        from taptune.adapter_core.registry import load_adapter_set
        from taptune.patching.pocket_model import load_pocket_model

        base = load_pocket_model()[0]
        adapter_set = load_adapter_set(args.pocket_adapter, model_view(base))[1]
        layers = dict.fromkeys(adapter_set.members)
    else:
        base = build_model_patcher("SD15", SD15_FULL, seed=args.seed)
        layers = oft_targets(model_view(base), "attention")
        adapter_set = coft_ball_adapter(layers, args.seed + 1)
    context = base.model.model_config.unet_config["context_dim"]

    g = torch.Generator().manual_seed(args.seed + 2)
    x = torch.randn(2, 4, args.size, args.size, generator=g)
    sigma = torch.tensor([1.5, 7.0])
    ctx = torch.randn(2, 77, context, generator=g)

    @torch.no_grad()
    def output(model: Any) -> torch.Tensor:
        comfy.model_management.load_models_gpu([model])
        return model.model.apply_model(x, sigma, c_crossattn=ctx).float()

    out_base = output(base)
    out_oft = output(apply_adapter_set(base, adapter_set))
    effect = float((out_oft - out_base).norm())

    full = lora_differences(base, adapter_set, 1.0, torch.float32)
    names = kohya_names(base)
    weight_of = original_weight_of(base)
    diff_norms = {k: float(v.norm()) for k, v in full.items()}
    total = math.sqrt(sum(n * n for n in diff_norms.values()))
    weight_norm = math.sqrt(sum(float(weight_of(p).norm()) ** 2 for p in layers))

    rows = []
    for rank in args.ranks:
        start = time.perf_counter()
        if rank:
            tensors = lora_low_rank(base, adapter_set, rank, 1.0, torch.float32)
            seconds = time.perf_counter() - start
            errors = []
            for path in layers:
                key = f"diffusion_model.{path}.diff"
                name = names.get(path, "lora_unet_" + path.replace(".", "_"))
                approx = tensors[f"{name}.lora_up.weight"] @ tensors[f"{name}.lora_down.weight"]
                errors.append((float((approx - full[key]).norm()), diff_norms[key]))
            weight_error = math.sqrt(sum(e * e for e, _ in errors)) / total
            worst_layer = max(e / n for e, n in errors)
            size_fp16 = sum(t.numel() * 2 for t in tensors.values())
        else:
            tensors, seconds = full, time.perf_counter() - start
            weight_error = worst_layer = 0.0
            size_fp16 = sum(t.numel() * 2 for t in full.values())
        lora = {k: v.to(torch.float16).to(torch.float32) for k, v in tensors.items()}  # as written in fp16
        model, _ = comfy.sd.load_lora_for_models(base, None, lora, 1.0, 0)
        out = output(model)
        rows.append(
            {
                "rank": rank or "full (.diff)",
                "weight_difference_error": weight_error,
                "worst_layer_error": worst_layer,
                "output_error_of_effect": float((out - out_oft).norm()) / effect,
                "output_error_relative": float((out - out_oft).norm() / out_oft.norm()),
                "file_bytes_fp16": size_fp16,
                "export_seconds": seconds,
            }
        )
        print(rows[-1])
    results = {
        "setup": f"the pocket model with the trained OFT file {Path(args.pocket_adapter).name}; UNet output at "
        f"{args.size}x{args.size} latents, batch 2"
        if args.pocket_adapter
        else "SD 1.5 UNet (random weights), OFT r=4 COFT eps 6e-5 on the 128 attention projections, "
        "every generator block at its COFT radius (random direction); UNet output at "
        f"{args.size}x{args.size} latents, batch 2, through comfy.sd.load_lora_for_models (fp16 tensors)",
        "difference_norm_over_weight_norm": total / weight_norm,
        "effect_over_output": effect / float(out_oft.norm()),
        "rows": rows,
        "settings": vars(args),
    }
    path = write_result("oft_export_rank_pocket" if args.pocket_adapter else "oft_export_rank", results)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
