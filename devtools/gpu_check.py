"""The GPU check: what only a CUDA device can confirm, and the training benchmark at full SD 1.5 size.

``make gpu-check`` (``python -m devtools.gpu_check``) on a machine with one NVIDIA GPU writes
``bench/results/gpu_check.json`` and ``gpu_check.md`` (``--out`` elsewhere), after each item, so
that a run stopped by a time limit still leaves what it measured. It needs no network and no
weights: the UNet is the full SD 1.5 shape with random weights (``devtools/checkpoints.py``) and
the text encoder and VAE are the stand-ins of ``devtools/standins.py``.

Checks (pass or fail, with the numbers):

* ``oft_solve``: OFT's training rotation (the block inverse by matrix products, the fused
  activation rotation and its backward; the Cayley transform) on the
  device against a float64 CPU reference, values and gradients;
* ``autocast_<kind>_<precision>``: a short TapTuneDreamBoothTrain run (tap recipe, OFT r=4 COFT)
  under bf16 and fp16 autocast (fp16 with loss scaling): finite losses, fp32 adapter weights
  that moved;
* ``memory_given_back``: device memory after a run is what it was before (the training clone
  unloaded, nothing left behind).

Benchmark (SD 1.5 UNet, 512 px = 64x64 latents, batch 1 instance + 1 class, no gradient
checkpointing, bf16 and fp16): seconds per step (median after a warm-up step) and peak device
memory for the tap recipe (attn2o -> ffni, mid_dim 60), OFT r=4 COFT, ComfyUI's TrainLoraNode
(LoRA rank 8; "absent" when the host ComfyUI has none; it offers bf16 only) and full
fine-tuning (AdamW, fp32 master weights).

``--dry-run`` runs the same code paths on the CPU at a tiny size (a 64-channel UNet, 64 px,
2 steps, bf16 autocast only) to check that the script prepares and starts; its numbers mean
nothing. A time budget (``--budget``, default 450 s) skips the benchmark items left when it runs
out, recording them as skipped.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from devtools.comfy_host import ROOT, import_pack, init_nodes, prepare_comfy

OUT = ROOT / "bench" / "results"
PROMPT, CLASS_PROMPT = "a photo of sks dog", "a photo of dog"


class Check:
    """Where the results go, written whole after every item."""

    def __init__(self, out: Path, dry_run: bool, budget: float) -> None:
        self.out, self.dry_run, self.deadline = out, dry_run, time.monotonic() + budget
        self.results: dict[str, Any] = {"environment": environment(dry_run), "checks": {}, "benchmark": {}}

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def record(self, section: str, name: str, value: dict[str, Any]) -> None:
        self.results[section][name] = value
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu_check.json").write_text(json.dumps(self.results, indent=2) + "\n")
        (self.out / "gpu_check.md").write_text(markdown(self.results))
        print(f"[gpu-check] {section}/{name}: {json.dumps(value)[:300]}", flush=True)

    def run(self, section: str, name: str, fn: Callable[[], dict[str, Any]]) -> None:
        """Run one item; an exception is that item's failure, never the end of the check."""
        if section == "benchmark" and self.time_left() < 30:
            self.record(section, name, {"status": "skipped", "reason": "time budget spent"})
            return
        start = time.monotonic()
        try:
            value = fn()
        except Exception as exc:  # recorded, and the next item runs
            value = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:2000]}
            traceback.print_exc()
        value.setdefault("status", "ok")
        value["wall_seconds"] = round(time.monotonic() - start, 2)
        release_memory()
        self.record(section, name, value)


def environment(dry_run: bool) -> dict[str, Any]:
    cuda = torch.cuda.is_available() and not dry_run
    return {
        "dry_run": dry_run,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "bf16_supported": bool(cuda and torch.cuda.is_bf16_supported()),
    }


def markdown(results: dict[str, Any]) -> str:
    env = results["environment"]
    lines = [
        "# GPU check" + (" (dry run on the CPU: the numbers mean nothing)" if env["dry_run"] else ""),
        "",
        f"{env['device']}, torch {env['torch']} (CUDA {env['cuda']}), Python {env['python']}",
        "",
        "| check | status | details |",
        "|---|---|---|",
    ]
    for name, value in results["checks"].items():
        details = {k: v for k, v in value.items() if k not in ("status",)}
        lines.append(f"| {name} | {value['status']} | {json.dumps(details)[:300]} |")
    lines += ["", "| benchmark | precision | s/step | peak memory (GiB) | status |", "|---|---|---|---|---|"]
    inverse = results["benchmark"].get("oft_inverse", {})
    for name, value in results["benchmark"].items():
        if name == "oft_inverse" or name.startswith("oft_lora_pair"):
            continue
        variant, _, precision = name.rpartition("_")
        seconds = value.get("seconds_per_step")
        peak = value.get("peak_memory_bytes")
        lines.append(
            f"| {variant} | {precision} | {'' if seconds is None else f'{seconds:.3f}'} | "
            f"{'' if peak is None else f'{peak / 2**30:.2f}'} | {value['status']} |"
        )
    pairs = {n: v for n, v in results["benchmark"].items() if n.startswith("oft_lora_pair") and "ratio" in v}
    if pairs:
        lines += [
            "",
            "| OFT r=4 COFT vs equal-size LoRA, alternated | OFT s/step | LoRA s/step | ratio |",
            "|---|---|---|---|",
        ]
        for name, v in pairs.items():
            lines.append(
                f"| {name.rpartition('_')[2]} | {v['oft_seconds_per_step']:.3f} | "
                f"{v['lora_seconds_per_step']:.3f} | {v['ratio']:.2f} |"
            )
    sizes = [key for key in inverse if key.startswith("k")]
    if sizes:
        ways = list(inverse[sizes[0]])
        lines += ["", "| OFT r=4 inverse, ms per call (largest error) | " + " | ".join(ways) + " |"]
        lines.append("|---" * (len(ways) + 1) + "|")
        for key in sizes:
            cells = [f"{inverse[key][w]['ms']:.3f} ({inverse[key][w]['error']:.0e})" for w in ways]
            lines.append(f"| {key[1:]} x {key[1:]} blocks | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# -- devices and memory ---------------------------------------------------------------------------


def device_memory() -> int:
    """Bytes of device memory allocated by tensors now (0 on the CPU, where there is no device memory)."""
    return torch.cuda.memory_allocated() if torch.cuda.is_available() and torch.cuda.is_initialized() else 0


def reset_peak() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_memory() -> int | None:
    """Peak device memory since :func:`reset_peak` (None on the CPU)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    return None


def release_memory() -> None:
    """Unload every model ComfyUI holds and give cached device memory back (before ComfyUI: the cache only)."""
    management = sys.modules.get("comfy.model_management")
    if management is None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
        return
    management.unload_all_models()
    management.soft_empty_cache()


# -- the pieces -----------------------------------------------------------------------------------


def tap_spec() -> Any:
    from taptune.adapter_core import TapConfig, TapGroupSpec, TapSpec

    return TapSpec((TapGroupSpec(TapConfig("attn2o", "ffni", mid_dim=60)),))


def coft_spec() -> Any:
    from taptune.adapter_core import OFTConfig, OFTSpec

    return OFTSpec(OFTConfig(r=4, coft=True))


def images(size: int, count: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(size, size, 3, generator=g) for _ in range(count)]


def train(model: Any, spec: Any, size: int, steps: int, precision: str) -> tuple[Any, list[float], Any]:
    """A DreamBoothTrainer run (the node's loop) with stand-in text encoder and VAE; (result, step times, trainer)."""
    from devtools.standins import FixedTextEncoder, PixelVAE
    from taptune.training.run_inputs import ImageSet, RunInputs
    from taptune.training.settings import TrainSettings
    from taptune.training.trainer import DreamBoothTrainer

    stamps: list[float] = []
    settings = TrainSettings(
        steps=steps, learning_rate=1e-4, resolution=size, batch_size=1, precision=precision, seed=0
    )
    trainer = DreamBoothTrainer(
        model,
        FixedTextEncoder(768),
        PixelVAE(),
        spec,
        RunInputs(ImageSet(images(size, 2, 1), PROMPT), ImageSet(images(size, 2, 2), CLASS_PROMPT), settings),
        report=lambda *args: stamps.append(time.perf_counter()),
    )
    start = time.perf_counter()
    result = trainer.run()
    times = [b - a for a, b in zip([start, *stamps[:-1]], stamps, strict=True)]
    return result, times, trainer


def per_step(times: list[float]) -> float:
    return statistics.median(times[1:] if len(times) > 1 else times)


# -- checks ---------------------------------------------------------------------------------------


def check_oft_solve(device: torch.device) -> dict[str, Any]:
    from taptune.adapter_core.oft.cayley import cayley, rotate_input_from_raw, skew

    g = torch.Generator().manual_seed(0)
    blocks, k, tokens, strength = 4, 160, 40, 1.0  # k 160: the block inverse recurses (matrix products)
    P = (torch.randn(blocks, k, k, generator=g) * 0.05).requires_grad_(True)
    x = torch.randn(tokens, blocks * k, generator=g).requires_grad_(True)
    weights = torch.randn(tokens, blocks * k, generator=g)
    P_dev = P.detach().to(device).requires_grad_(True)
    x_dev = x.detach().to(device).requires_grad_(True)
    y_dev = rotate_input_from_raw(x_dev, P_dev, strength)
    (y_dev * weights.to(device)).sum().backward()
    # Reference: float64 on the CPU, dense Cayley through torch.linalg.inv and autograd.
    P64, x64 = P.detach().double().requires_grad_(True), x.detach().double().requires_grad_(True)
    S = strength * (P64 - P64.transpose(-1, -2)) / 2
    eye = torch.eye(k, dtype=torch.float64)
    Rt = 2 * torch.linalg.inv(eye - S) - eye
    y64 = torch.einsum("nbk,bjk->nbj", x64.view(tokens, blocks, k), Rt).reshape(tokens, blocks * k)
    (y64 * weights.double()).sum().backward()

    def relative(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a.double().cpu() - b).norm() / b.norm())

    R = cayley(skew(P_dev.detach()))
    eye_dev = torch.eye(k, device=device)
    errors = {
        "solve": relative(y_dev.detach(), y64.detach()),
        "grad_P": relative(P_dev.grad, P64.grad),
        "grad_B": relative(x_dev.grad, x64.grad),
        "orthogonality": float((R @ R.transpose(-1, -2) - eye_dev).abs().max()),
    }
    ok = (
        errors["solve"] < 1e-4
        and errors["grad_P"] < 1e-3
        and errors["grad_B"] < 1e-4
        and errors["orthogonality"] < 1e-4
    )
    return {"status": "pass" if ok else "fail", "device": str(device), **errors}


def check_autocast(model: Any, kind: str, precision: str, size: int, steps: int) -> dict[str, Any]:
    spec = tap_spec() if kind == "tap" else coft_spec()
    result, _, trainer = train(model, spec, size, steps, precision)
    parameters = result.adapter_set.parameters()
    start = spec.build(trainer.view, 0).parameters()
    moved = max(
        float((p.detach().cpu() - q.detach().cpu()).abs().max()) for p, q in zip(parameters, start, strict=True)
    )
    finite = all(torch.isfinite(torch.tensor(result.losses)).tolist())
    fp32 = all(p.dtype == torch.float32 for p in parameters)
    scaled = trainer.autocast_dtype == torch.float16
    ok = finite and fp32 and moved > 0 and len(result.losses) == steps
    return {
        "status": "pass" if ok else "fail",
        "losses": result.losses,
        "adapter_fp32": fp32,
        "largest_change": moved,
        "loss_scaling": scaled,
        "autocast_dtype": str(trainer.autocast_dtype),
    }


def check_memory_given_back(model: Any, size: int, steps: int, precision: str) -> dict[str, Any]:
    release_memory()
    before = device_memory()
    train(model, coft_spec(), size, steps, precision)
    after_run = device_memory()
    release_memory()
    after_release = device_memory()
    # The trainer unloads its training clone itself: what stays after the run is at most allocator slack.
    # 8 MiB: before OFT's shared solve was fixed, a backward hook kept each run's parameters and
    # gradients (+40-51 MiB on this small UNet) and a 64 MiB bound let it pass; a clean run leaves 0.
    ok = after_run - before <= 8 * 2**20
    return {
        "status": "pass" if ok else "fail",
        "before_bytes": before,
        "after_run_bytes": after_run,
        "after_unload_all_bytes": after_release,
    }


# -- benchmark ------------------------------------------------------------------------------------


def lora_equal_spec(model: Any) -> Any:
    """TapTune's LoRA kind on the attention layers with as many trainable parameters as OFT r=4 there."""
    from taptune.adapter_core.lora import LoRAConfig, LoRASpec
    from taptune.patching.model_access import model_view

    view = model_view(model)
    oft = coft_spec().build(view, 0).num_parameters()
    per_rank = sum(p.numel() for p in LoRASpec(LoRAConfig(rank=1, alpha=1.0)).build(view, 0).parameters())
    rank = max(1, round(oft / per_rank))
    return LoRASpec(LoRAConfig(rank=rank, alpha=float(rank), targets="attention"))


def bench_ours(model: Any, kind: str, size: int, steps: int, precision: str) -> dict[str, Any]:
    reset_peak()
    spec = {"tap": tap_spec, "coft": coft_spec}[kind]() if kind != "lora" else lora_equal_spec(model)
    result, times, _ = train(model, spec, size, steps, precision)
    return {
        "seconds_per_step": per_step(times),
        "step_seconds": times,
        "peak_memory_bytes": peak_memory(),
        "trainable_parameters": result.adapter_set.num_parameters(),
    }


def bench_oft_lora_pair(model: Any, size: int, steps: int, precision: str, rounds: int = 3) -> dict[str, Any]:
    """OFT r=4 COFT against the equal-size LoRA kind, alternated ``rounds`` times (issue 19 §4's ratio).

    Alternating spreads a drifting machine (clocks, other tenants) over both; the ratio is of
    the medians over every step after each run's first.
    """
    lora = lora_equal_spec(model)
    steps_of: dict[str, list[float]] = {"coft": [], "lora": []}
    for _ in range(rounds):
        for name, spec in (("coft", coft_spec()), ("lora", lora)):
            _, times, _ = train(model, spec, size, steps, precision)
            steps_of[name] += times[1:]
    coft, lora_s = statistics.median(steps_of["coft"]), statistics.median(steps_of["lora"])
    return {"oft_seconds_per_step": coft, "lora_seconds_per_step": lora_s, "ratio": coft / lora_s, **steps_of}


def bench_comfy_lora(model: Any, size: int, steps: int, precision: str) -> dict[str, Any]:
    try:
        from comfy_extras.nodes_train import TrainLoraNode  # noqa: F401  (present in this ComfyUI?)
    except ImportError:
        return {"status": "absent", "reason": "this ComfyUI has no TrainLoraNode"}
    if precision != "bf16":
        return {"status": "n/a", "reason": "TrainLoraNode trains in bf16 or fp32 only"}
    from bench.common import train_lora_node_step_times

    reset_peak()
    times = train_lora_node_step_times(model, size, steps, "bf16")
    return {"seconds_per_step": per_step(times), "step_seconds": times, "peak_memory_bytes": peak_memory()}


def bench_full(model: Any, size: int, steps: int, precision: str) -> dict[str, Any]:
    import comfy.model_management

    from taptune.training.objective import noisy_latents, prediction_error

    comfy.model_management.load_models_gpu([model], force_full_load=True)
    unet = model.model.diffusion_model
    device = model.load_device
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    sampling = model.get_model_object("model_sampling")
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 4, size // 8, size // 8, generator=g).to(device)
    context = torch.randn(2, 77, 768, generator=g).to(device)
    reset_peak()
    times: list[float] = []
    try:
        unet.requires_grad_(True)
        optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-6)
        for _ in range(steps):
            start = time.perf_counter()
            sigma = sampling.sigmas[torch.randint(0, len(sampling.sigmas), (2,), generator=g)].to(device)
            x_t = noisy_latents(sampling, sigma, torch.randn(x0.shape, generator=g).to(device), x0)
            with torch.autocast(device.type, dtype=dtype):
                denoised = model.model.apply_model(x_t, sigma, c_crossattn=context)
            loss = prediction_error(sampling, sigma, x_t, denoised, x0).mean()
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        peak = peak_memory()
        del optimizer
    finally:
        unet.requires_grad_(False)
        for p in unet.parameters():
            p.grad = None
    return {
        "seconds_per_step": per_step(times),
        "step_seconds": times,
        "peak_memory_bytes": peak,
        "trainable_parameters": sum(p.numel() for p in unet.parameters()),
    }


def bench_oft_inverse(device: torch.device, repeats: int) -> dict[str, Any]:
    """Milliseconds per call of each way to invert ``I - S`` for OFT r=4's SD 1.5 blocks (k 80 to 320).

    ``split``: the block elimination down to 48 (the CPU's way); ``direct``: one batched LU
    without the status check (the GPU's way); ``checked``: ``torch.linalg.inv``, which syncs;
    ``neumann5``: the 5-term series; each with its error against the float64 inverse.
    """
    from taptune.adapter_core.oft.cayley import (
        DIRECT_INVERSE_MAX,
        inverse_identity_plus_skew,
        neumann_inverse_series,
        skew,
    )

    def timed(fn: Callable[[], torch.Tensor]) -> float:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / repeats * 1e3

    g = torch.Generator().manual_seed(0)
    rows: dict[str, Any] = {}
    for k in (80, 160, 192, 320):
        S = skew(torch.randn(4, k, k, generator=g) * (0.1 / k)).to(device)
        A = torch.eye(k, device=device) - S
        exact = torch.linalg.inv(A.double().cpu())
        ways: dict[str, Callable[[], torch.Tensor]] = {
            "split": lambda A=A: inverse_identity_plus_skew(A, DIRECT_INVERSE_MAX),
            "direct": lambda A=A: inverse_identity_plus_skew(A, 1 << 30),
            "checked": lambda A=A: torch.linalg.inv(A),
            "neumann5": lambda S=S: neumann_inverse_series(S, 5),
        }
        rows[f"k{k}"] = {
            name: {
                "ms": round(timed(fn), 4),
                "error": float((fn().double().cpu() - exact).abs().max()),
            }
            for name, fn in ways.items()
        }
    return rows


def profile_coft(model: Any, size: int, steps: int, precision: str, out: Path) -> dict[str, Any]:
    """OFT r=4 COFT training steps under torch.profiler: the busiest operators to ``oft_profile.txt``."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        _, times, _ = train(model, coft_spec(), size, steps, precision)
    table = prof.key_averages()
    device_key = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    text = table.table(sort_by=device_key, row_limit=30) + "\n" + table.table(sort_by="cpu_time_total", row_limit=30)
    (out / "oft_profile.txt").write_text(text)
    launches = sum(e.count for e in table if e.key.startswith("cudaLaunchKernel"))
    return {"seconds_per_step": per_step(times), "kernel_launches_per_step": launches / max(1, steps)}


# -- the run ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dry-run", action="store_true", help="the same code paths on the CPU, tiny (checks it starts)"
    )
    parser.add_argument("--out", default=str(OUT), help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--profile", action="store_true", help="also profile OFT's training steps (oft_profile.txt)")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds; benchmark items after it are skipped")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("[gpu-check] no CUDA device: run it on a GPU machine, or use --dry-run", file=sys.stderr)
        return 2
    check = Check(Path(args.out), args.dry_run, args.budget)
    import_pack()
    device = torch.device("cpu") if args.dry_run else torch.device("cuda")
    # Pure PyTorch: runs even where ComfyUI cannot be imported.
    check.run("checks", "oft_solve", lambda: check_oft_solve(device))
    try:
        prepare_comfy(tempfile.mkdtemp(prefix="taptune-gpu-check-"), cpu=args.dry_run)
        init_nodes()
    except Exception as exc:  # recorded: the rest needs ComfyUI (COMFYUI_DIR, and its requirements installed)
        check.record("checks", "comfyui", {"status": "fail", "error": f"{type(exc).__name__}: {exc}"[:2000]})
        return 1
    from devtools.checkpoints import SD15_FULL, SD15_SMALL, SD15_TINY, build_model_patcher

    # Dry run: bf16 autocast only (CPU autocast's fp16 path is not what a GPU runs); tiny sizes.
    precisions = ("bf16",) if args.dry_run else ("bf16", "fp16")
    small_size, big_size, steps, check_steps = (64, 64, 2, 2) if args.dry_run else (256, 512, 10, 3)
    with torch.inference_mode(False):
        small = build_model_patcher("SD15", SD15_TINY if args.dry_run else SD15_SMALL, seed=0)
        for precision in precisions:
            for kind in ("tap", "coft"):
                check.run(
                    "checks",
                    f"autocast_{kind}_{precision}",
                    lambda k=kind, p=precision, m=small: check_autocast(m, k, p, small_size, check_steps),
                )
        check.run(
            "checks",
            "memory_given_back",
            lambda m=small: check_memory_given_back(m, small_size, 2, precisions[-1]),
        )
        check.run("benchmark", "oft_inverse", lambda: bench_oft_inverse(device, 3 if args.dry_run else 50))
        small = None  # its weights go before the full-size UNet comes
        release_memory()
        big = build_model_patcher("SD15", SD15_TINY if args.dry_run else SD15_FULL, seed=0)
        for p in precisions:
            check.run("benchmark", f"tap_{p}", lambda p=p: bench_ours(big, "tap", big_size, steps, p))
            check.run("benchmark", f"coft_r4_{p}", lambda p=p: bench_ours(big, "coft", big_size, steps, p))
            # TapTune's LoRA kind with OFT r=4's trainable-parameter count, same trainer (issue 19 §4: OFT <= 1.0x).
            check.run("benchmark", f"lora_kind_equal_{p}", lambda p=p: bench_ours(big, "lora", big_size, steps, p))
            check.run("benchmark", f"oft_lora_pair_{p}", lambda p=p: bench_oft_lora_pair(big, big_size, steps, p))
            check.run("benchmark", f"comfy_lora_r8_{p}", lambda p=p: bench_comfy_lora(big, big_size, steps, p))
            check.run("benchmark", f"full_finetune_{p}", lambda p=p: bench_full(big, big_size, steps, p))
        if args.profile:
            check.run("benchmark", "profile_coft", lambda: profile_coft(big, big_size, 4, "bf16", check.out))
    failed = [n for n, v in check.results["checks"].items() if v["status"] != "pass"]
    errors = [n for n, v in check.results["benchmark"].items() if v["status"] == "error"]
    print(
        f"[gpu-check] wrote {check.out / 'gpu_check.json'}; failed checks: {failed or 'none'}; errors: {errors or 'none'}"
    )
    return 1 if failed or errors else 0


if __name__ == "__main__":
    sys.exit(main())
