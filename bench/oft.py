"""OFT cost on the full-size SD 1.5 UNet shapes (random weights, CPU): training step, sampling, parameters.

1. One training step (forward + backward, only adapter parameters trainable) with OFT r=4 on
   the paper's targets (to_q, to_k, to_v, to_out.0 of every attention layer), against
   * a LoRA with the same number of trainable parameters per layer on the same layers
     (rank = r k^2 / (in + out), applied to activations as PEFT does), and
   * the naive OFT of the official code: dense block-diagonal ``R`` (``torch.block_diag``),
     ``torch.inverse`` per block, ``W R^T`` as a dense matmul, every step.
   Measured twice: the whole UNet step (32x32 latents, batch 2), and the adapted layers alone
   (the same layers with the token counts they see in that step), which isolates the adapter.
   and, for the whole UNet step, TapTune's own LoRA kind (``adapter_core/lora``, rank chosen so
   its trainable parameters equal OFT's, through its own training plan: the trainer's step).
   OFT's generators sit on the COFT ball (every block at its radius, as after a few hundred
   steps), not at 0, so the exact Cayley transform runs as it does in a real run.
   Goals: OFT <= 1.0x the LoRA step (issue 19); >= 3x faster than the naive form.
2. One sampling step with the rotation merged (weight patch) against the base model. Goal: < 1 %.
3. Trainable parameters for r = 2, 4, 8, 16 on the paper's targets.
4. The Cayley-Neumann series against the exact Cayley transform: spectral error of ``R`` against
   ``||S||_2`` for 1..8 terms, its bound, and the fp32 rounding of the exact transform (the
   tolerance of the automatic choice); a figure in ``bench/results/oft_neumann_error.svg``.

    python -m bench.oft [--rounds 3] [--size 64 --skip-sampling] [--pair]

``--pair`` times only OFT r=4 COFT and the LoRA kind in the whole UNet step (no layer-level
timing, no PEFT-form or naive variants, no sampling): at 512 px a round of all four variants
takes minutes, and the pair is the comparison issue 19 asks for.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.common import RESULTS, interleaved, paired_ratio, setup_host, write_result


class LoRALinear(nn.Module):
    """The LoRA baseline: ``W x + b + B A x`` (activation side), frozen W."""

    def __init__(self, base: nn.Module, rank: int) -> None:
        super().__init__()
        object.__setattr__(self, "base_layer", base)
        self.down = nn.Parameter(torch.randn(rank, base.in_features) / base.in_features**0.5)
        self.up = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base_layer
        return F.linear(x, base.weight, base.bias) + F.linear(F.linear(x, self.down), self.up)


class RotatedLinear(nn.Module):
    """A single layer through TapTune's OFT training path (for the layer-level timing)."""

    def __init__(self, base: nn.Module, rotation: Any) -> None:
        super().__init__()
        object.__setattr__(self, "base_layer", base)
        self.rotation = rotation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rotation.linear(x, self.base_layer.weight, self.base_layer.bias)


class NaiveOFTLinear(nn.Module):
    """The official code's OFT forward: dense block-diagonal R and a dense ``W R^T`` every call."""

    def __init__(self, base: nn.Module, r: int) -> None:
        super().__init__()
        object.__setattr__(self, "base_layer", base)
        k = base.in_features // r
        self.R = nn.Parameter(torch.zeros(r, k, k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        S = 0.5 * (self.R - self.R.transpose(1, 2))
        eye = torch.eye(S.shape[-1], dtype=S.dtype)
        Q = torch.bmm(eye - S, torch.inverse(eye + S))
        dense = torch.block_diag(*Q)
        weight = torch.mm(dense, self.base_layer.weight.t()).t()
        return F.linear(x, weight, self.base_layer.bias)


def on_coft_ball(adapter_set: Any, seed: int = 0) -> Any:
    """Every generator block moved to its COFT radius in a random direction (where a COFT run ends up)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for rotation in adapter_set.rotations.values():
            P = rotation.blocks
            P.copy_(torch.randn(P.shape, generator=g))
            P.mul_((rotation.radius / torch.linalg.matrix_norm(P))[:, None, None])
    return adapter_set


def neumann_figures(block: int = 80, seed: int = 0) -> dict[str, Any]:
    """Spectral error of the Cayley-Neumann rotation against the exact one, by ``||S||_2`` and terms."""
    from taptune.adapter_core.oft.cayley import (
        AUTO_NEUMANN_TOLERANCE,
        cayley,
        cayley_neumann,
        neumann_bound_for_norm,
        neumann_terms_within,
    )

    g = torch.Generator().manual_seed(seed)
    P = torch.randn(4, block, block, generator=g, dtype=torch.float64)
    unit = (P - P.transpose(1, 2)) / 2
    unit = unit / torch.linalg.matrix_norm(unit, ord=2).max()
    rows = []
    for q in (1e-3, 3e-3, 0.01, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9):
        S = unit * q
        exact = cayley(S)
        fp32 = float(torch.linalg.matrix_norm(cayley(S.float()).double() - exact, ord=2).max())
        errors = {n: float(torch.linalg.matrix_norm(cayley_neumann(S, n) - exact, ord=2).max()) for n in range(1, 9)}
        bounds = {n: neumann_bound_for_norm(q, n) for n in range(1, 9)}
        rows.append(
            {"norm": q, "fp32_exact": fp32, "errors": errors, "bounds": bounds, "auto_terms": neumann_terms_within(q)}
        )
    return {"block": block, "tolerance": AUTO_NEUMANN_TOLERANCE, "rows": rows}


def neumann_svg(figures: dict[str, Any]) -> str:
    """A log-log plot of the Neumann error against ||S||_2 (one line per term count), as SVG text."""
    import math

    width, height, left, bottom = 560, 360, 60, 40
    xs = [r["norm"] for r in figures["rows"]]
    lo_x, hi_x, lo_y, hi_y = math.log10(min(xs)), math.log10(max(xs)), -17.0, 1.0

    def point(x: float, y: float) -> str:
        y = max(y, 10**lo_y)
        px = left + (math.log10(x) - lo_x) / (hi_x - lo_x) * (width - left - 10)
        py = (height - bottom) - (math.log10(y) - lo_y) / (hi_y - lo_y) * (height - bottom - 10)
        return f"{px:.1f},{py:.1f}"

    colours = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666"]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="11">']
    parts.append(f'<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>')
    for e in range(int(lo_y), int(hi_y) + 1, 2):
        y = point(min(xs), 10.0**e).split(",")[1]
        parts.append(f'<line x1="{left}" x2="{width - 10}" y1="{y}" y2="{y}" stroke="#eee"/>')
        parts.append(f'<text x="4" y="{y}">1e{e}</text>')
    for n, colour in zip(range(1, 9), colours, strict=True):
        line = " ".join(point(r["norm"], r["errors"][n]) for r in figures["rows"])
        parts.append(f'<polyline points="{line}" fill="none" stroke="{colour}"/>')
        bound = " ".join(point(r["norm"], r["bounds"][n]) for r in figures["rows"] if math.isfinite(r["bounds"][n]))
        parts.append(f'<polyline points="{bound}" fill="none" stroke="{colour}" stroke-dasharray="3,3"/>')
        parts.append(f'<text x="{width - 150}" y="{20 + 13 * n}" fill="{colour}">{n} terms (dashed: bound)</text>')
    exact = " ".join(point(r["norm"], r["fp32_exact"]) for r in figures["rows"])
    parts.append(f'<polyline points="{exact}" fill="none" stroke="black" stroke-width="2"/>')
    parts.append(f'<text x="{width - 150}" y="{20 + 13 * 9}">exact Cayley in fp32</text>')
    tol = point(min(xs), figures["tolerance"]).split(",")[1]
    parts.append(f'<line x1="{left}" x2="{width - 10}" y1="{tol}" y2="{tol}" stroke="red" stroke-dasharray="6,2"/>')
    parts.append(f'<text x="{left + 4}" y="{float(tol) - 3}" fill="red">automatic-choice tolerance</text>')
    parts.append(
        f'<text x="{left}" y="{height - 8}">||S||_2 from {min(xs):g} to {max(xs):g} (log); spectral error of R vs the exact '
        f"Cayley transform (log), blocks {figures['block']}</text>"
    )
    parts.append("</svg>")
    return "\n".join(parts)


def lora_kind_clone(base: Any, parameters: int) -> tuple[Any, list[torch.Tensor], int] | None:
    """A training clone with TapTune's LoRA kind on the attention layers, rank matching ``parameters``; None if absent."""
    try:
        from taptune.adapter_core.lora import LoRAConfig, LoRASpec
    except ImportError:
        return None
    from taptune.patching.install import install_plan
    from taptune.patching.model_access import model_view

    view = model_view(base)
    probe = LoRASpec(LoRAConfig(rank=1, alpha=1.0, targets="attention")).build(view, 0)
    per_rank = sum(p.numel() for p in probe.parameters())
    rank = max(1, round(parameters / per_rank))
    spec = LoRASpec(LoRAConfig(rank=rank, alpha=float(rank), targets="attention"))
    adapter_set = spec.build(view, 0)
    return install_plan(base.clone(), spec.training_plan(adapter_set, view)), adapter_set.parameters(), rank


def patched_with(model: Any, make: Any, layers: dict[str, tuple[int, int]]) -> Any:
    from taptune.patching.model_access import DIFFUSION_PREFIX, model_object

    clone = model.clone()
    modules = []
    for path in layers:
        module = make(model_object(clone, path))
        modules.append(module)
        clone.add_object_patch(DIFFUSION_PREFIX + path, module)
    return clone, [p for m in modules for p in m.parameters()]


def train_step(model: Any, params: list[torch.Tensor], x: torch.Tensor, sigma: torch.Tensor, ctx: torch.Tensor):
    import comfy.model_management

    def step() -> None:
        comfy.model_management.load_models_gpu([model])
        for p in params:
            p.grad = None
        out = model.model.apply_model(x, sigma, c_crossattn=ctx)
        out.square().mean().backward()

    return step


def layer_steps(layers: dict[str, tuple[int, int]], tokens: dict[str, int], make: Any) -> Any:
    """Forward + backward through every adapted layer alone, with its token count.

    The input requires a gradient, as inside a UNet (every layer passes gradients on), so
    ``frozen_only`` (the layer without any adapter) is the floor every variant pays.
    """
    g = torch.Generator().manual_seed(0)
    items = []
    for path, (in_features, out_features) in layers.items():
        base = nn.Linear(in_features, out_features)
        base.requires_grad_(False)
        module = make(base)
        x = torch.randn(tokens[path], in_features, generator=g).requires_grad_(True)
        items.append((module, x, [*module.parameters(), x]))

    def step() -> None:
        for module, x, params in items:
            for p in params:
                p.grad = None
            module(x).square().mean().backward()

    return step


def token_counts(
    model: Any, layers: dict[str, tuple[int, int]], x: torch.Tensor, sigma: torch.Tensor, ctx: torch.Tensor
) -> dict[str, int]:
    """How many tokens each target layer sees in one UNet step (recorded with forward hooks)."""
    import comfy.model_management

    comfy.model_management.load_models_gpu([model])
    unet = model.model.diffusion_model
    seen: dict[str, int] = {}
    handles = []
    for path in layers:
        module = unet.get_submodule(path)

        def hook(m, args, out, path=path):
            seen[path] = args[0].numel() // args[0].shape[-1]

        handles.append(module.register_forward_hook(hook))
    with torch.no_grad():
        model.model.apply_model(x, sigma, c_crossattn=ctx)
    for handle in handles:
        handle.remove()
    return seen


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=32, help="latent side for the training step")
    parser.add_argument("--sample-size", type=int, default=64, help="latent side for the sampling step")
    parser.add_argument("--skip-unet", action="store_true", help="only the layer-level and parameter measurements")
    parser.add_argument("--skip-sampling", action="store_true", help="no sampling-step measurement")
    parser.add_argument("--pair", action="store_true", help="only OFT and the LoRA kind, whole UNet step")
    args = parser.parse_args()
    if args.pair:
        args.skip_sampling = True
    setup_host()
    import comfy.sample

    from devtools.checkpoints import SD15_FULL, build_model_patcher
    from taptune.adapter_core import OFTAdapterSet, OFTConfig, OFTSpec, oft_targets
    from taptune.patching.apply import apply_adapter_set
    from taptune.patching.install import install_plan
    from taptune.patching.model_access import model_view
    from taptune.patching.training_clone import release

    def with_oft_merged(model, oft_set):
        return apply_adapter_set(model, oft_set)

    def with_oft_trainable(model, oft_set):
        return install_plan(model.clone(), OFTSpec().training_plan(oft_set, model_view(model)))

    torch.manual_seed(0)
    base = build_model_patcher("SD15", SD15_FULL, seed=0)
    base.model.requires_grad_(False)
    layers = oft_targets(model_view(base), "attention")
    oft_set = on_coft_ball(OFTAdapterSet.create(layers, OFTConfig(r=4, coft=True)))
    ranks = {path: max(1, round(oft_set.rotations[path].num_parameters() / (i + o))) for path, (i, o) in layers.items()}
    lora_parameters = sum(ranks[p] * (i + o) for p, (i, o) in layers.items())

    parameters = {}
    for r in (2, 4, 8, 16):
        counted = OFTAdapterSet.create(layers, OFTConfig(r=r))
        parameters[r] = {"stored": counted.num_parameters(), "free": counted.num_parameters(free_only=True)}

    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, args.size, args.size, generator=g)
    sigma = torch.tensor([3.0, 8.0])
    ctx = torch.randn(2, 77, 768, generator=g)
    tokens = token_counts(base, layers, x, sigma, ctx)

    def make_oft(layer: nn.Module) -> nn.Module:
        single = OFTAdapterSet.create({"x": (layer.in_features, layer.out_features)}, OFTConfig(r=4, coft=True))
        return RotatedLinear(layer, on_coft_ball(single).rotations["x"])

    results: dict[str, Any] = {
        "parameters_by_r": parameters,
        "oft_r4_parameters": oft_set.num_parameters(),
        "lora_parameters": lora_parameters,
    }
    rank_by_shape = {(i, o): ranks[p] for p, (i, o) in layers.items()}
    makers = {
        "frozen_only": lambda layer: layer,
        "oft": make_oft,
        "lora": lambda layer: LoRALinear(layer, rank_by_shape[(layer.in_features, layer.out_features)]),
        "naive_oft": lambda layer: NaiveOFTLinear(layer, 4),
    }
    if args.pair:
        makers = {"oft": make_oft}
    else:
        layer_times = interleaved(
            {name: layer_steps(layers, tokens, make) for name, make in makers.items()}, args.rounds + 1
        )
        layer_times = {name: t[1:] for name, t in layer_times.items()}  # the first round warms up
        results["layer_seconds"] = {name: statistics.median(t) for name, t in layer_times.items()}

    if not args.skip_unet:
        steps = {}
        clones = []
        for name, make in makers.items():
            if name == "frozen_only":
                continue
            if name == "oft":
                trainable = on_coft_ball(OFTAdapterSet.create(layers, OFTConfig(r=4, coft=True)))
                clone, params = with_oft_trainable(base, trainable), trainable.parameters()
            else:
                clone, params = patched_with(base, make, layers)
            clones.append(clone)
            steps[name] = train_step(clone, params, x, sigma, ctx)
        kind = lora_kind_clone(base, oft_set.num_parameters())
        if kind is not None:
            clone, params, results["lora_kind_rank"] = kind
            results["lora_kind_parameters"] = sum(p.numel() for p in params)
            clones.append(clone)
            steps["lora_kind"] = train_step(clone, params, x, sigma, ctx)
        with torch.inference_mode(False), torch.enable_grad():
            unet_times = interleaved(steps, args.rounds + 1)
        unet_times = {name: t[1:] for name, t in unet_times.items()}
        results["unet_step_seconds"] = {name: statistics.median(t) for name, t in unet_times.items()}
        results["unet_step_rounds"] = unet_times
        for clone in clones:
            release(clone)  # unload: their object patches leave the shared model

    if not (args.skip_unet or args.skip_sampling):
        trained = OFTAdapterSet.create(layers, OFTConfig(r=4, coft=False))
        with torch.no_grad():
            for rotation in trained.rotations.values():
                rotation.P.normal_(0, 1e-3)
        merged = with_oft_merged(base, trained)
        latent = torch.zeros(1, 4, args.sample_size, args.sample_size)
        noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(3))
        positive = [[torch.randn(1, 77, 768, generator=g), {}]]
        negative = [[torch.randn(1, 77, 768, generator=g), {}]]

        def sample(model: Any) -> Any:
            return lambda: comfy.sample.sample(
                model, noise, 2, 5.0, "euler", "normal", positive, negative, latent, disable_pbar=True, seed=1
            )

        import comfy.model_management

        loads = {
            "base": lambda: comfy.model_management.load_models_gpu([base]),
            "merged_oft": lambda: comfy.model_management.load_models_gpu([merged]),
        }
        with torch.inference_mode():
            sample_times = interleaved(
                {"base": sample(base), "merged_oft": sample(merged)}, args.rounds + 1, before=loads
            )
        sample_times = {name: t[1:] for name, t in sample_times.items()}
        results["sampling_seconds_per_step"] = {name: statistics.median(t) / 2 for name, t in sample_times.items()}

    def ratio(table: str, a: str, b: str) -> float:
        return results[table][a] / results[table][b]

    results["ratios"] = {}
    if "layer_seconds" in results:
        frozen = results["layer_seconds"]["frozen_only"]
        results["layer_adapter_overhead_seconds"] = {
            k: v - frozen for k, v in results["layer_seconds"].items() if k != "frozen_only"
        }
        results["ratios"].update(
            layers_oft_over_lora=paired_ratio(layer_times, "oft", "lora"),
            layers_naive_over_oft=paired_ratio(layer_times, "naive_oft", "oft"),
            overhead_naive_over_oft=results["layer_adapter_overhead_seconds"]["naive_oft"]
            / results["layer_adapter_overhead_seconds"]["oft"],
            overhead_oft_over_lora=results["layer_adapter_overhead_seconds"]["oft"]
            / results["layer_adapter_overhead_seconds"]["lora"],
        )
    if "unet_step_seconds" in results:
        for other in ("lora", "lora_kind"):
            if other in unet_times:
                pairs = sorted(a / b for a, b in zip(unet_times["oft"], unet_times[other], strict=True))
                results["ratios"][f"unet_oft_over_{other}_spread"] = {"min": pairs[0], "max": pairs[-1], "all": pairs}
        if "lora_kind" in unet_times:
            results["ratios"]["unet_oft_over_lora_kind"] = paired_ratio(unet_times, "oft", "lora_kind")
        if "lora" in unet_times:
            results["ratios"].update(
                unet_oft_over_lora=paired_ratio(unet_times, "oft", "lora"),
                unet_naive_over_oft=paired_ratio(unet_times, "naive_oft", "oft"),
            )
        if "sampling_seconds_per_step" in results:
            results["ratios"]["sampling_merged_over_base"] = paired_ratio(sample_times, "merged_oft", "base")
    results["neumann"] = neumann_figures()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "oft_neumann_error.svg").write_text(neumann_svg(results["neumann"]) + "\n")
    results["settings"] = vars(args)
    # Another latent size is another table: it must not replace the default run's figures.
    name = "oft" if args.size == 32 else f"oft_size{args.size}"
    path = write_result(f"{name}_pair" if args.pair else name, results)
    for key, value in results.items():
        if key not in ("settings", "neumann", "unet_step_rounds"):
            print(f"{key}: {value}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
