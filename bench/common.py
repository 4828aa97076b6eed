"""Shared benchmark plumbing: an in-process ComfyUI host, timers, and result files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devtools.comfy_host import ROOT, import_pack, init_nodes, prepare_comfy

RESULTS = ROOT / "bench" / "results"


def setup_host() -> None:
    """A ComfyUI with the pack, rooted in a throwaway base folder."""
    prepare_comfy(tempfile.mkdtemp(prefix="taptune-bench-"))
    init_nodes()
    import_pack()


def median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, list[float]]:
    """Median wall time of ``fn`` over ``repeats`` calls (after the caller's warm-up)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def interleaved(
    fns: dict[str, Callable[[], Any]], rounds: int, before: dict[str, Callable[[], Any]] | None = None
) -> dict[str, list[float]]:
    """Time several variants in alternation so that machine noise hits all alike.

    The order reverses every round (A B, B A, A B, ...): whatever the first or last place in
    a round costs (a cold cache after switching models, say) falls on every variant alike.
    ``before[name]`` runs untimed ahead of each timing (e.g. loading that variant's model, so
    that switching between clones is not counted as a sampling step).
    """
    out: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for index in range(rounds):
        for name in names if index % 2 == 0 else reversed(names):
            fn = fns[name]
            if before and name in before:
                before[name]()
            start = time.perf_counter()
            fn()
            out[name].append(time.perf_counter() - start)
    return out


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """Save a result as bench/results/<name>.json with the machine it ran on."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    import torch

    payload = {
        **payload,
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "platform": platform.platform(),
        },
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def paired_ratio(times: dict[str, list[float]], numerator: str, denominator: str) -> float:
    """Median over rounds of ``numerator / denominator`` measured side by side in each round.

    Each pair ran back to back, so slow drifts of a shared machine cancel out of the ratio.
    """
    return statistics.median(a / b for a, b in zip(times[numerator], times[denominator], strict=True))


def run_train_lora_node(
    model: Any,
    latents: list[dict[str, Any]],
    positive: list[Any],
    *,
    steps: int,
    learning_rate: float,
    seed: int,
    batch_size: int,
    training_dtype: str,
    rank: int = 8,
    algorithm: str = "LoRA",
    step_hook: Callable[..., Any] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """ComfyUI's own ``TrainLoraNode`` on LATENTs and one conditioning each; (the trained MODEL, its LoRA weights).

    Inputs newer ComfyUI versions add (offloading, bucket_mode...) are given at the node's own
    defaults. ``step_hook``, if given, holds ComfyUI's one global progress hook
    (``comfy.utils.PROGRESS_BAR_HOOK``, one call per step) during the run; whoever had it
    (the server, a test harness) gets it back.
    """
    import comfy.utils
    from comfy_extras.nodes_train import TrainLoraNode

    inputs: dict[str, Any] = {
        "model": [model],
        "latents": latents,
        "positive": positive,
        "batch_size": [batch_size],
        "grad_accumulation_steps": [1],
        "steps": [steps],
        "learning_rate": [learning_rate],
        "rank": [rank],
        "optimizer": ["AdamW"],
        "loss_function": ["MSE"],
        "seed": [seed],
        "training_dtype": [training_dtype],
        "lora_dtype": ["fp32"],
        "algorithm": [algorithm],
        "gradient_checkpointing": [False],
        "existing_lora": ["[None]"],
    }
    declared = TrainLoraNode.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, spec in declared.get(section, {}).items():
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if name not in inputs and "default" in options:
                inputs[name] = [options["default"]]
    previous_hook = getattr(comfy.utils, "PROGRESS_BAR_HOOK", None)
    if step_hook is not None:
        comfy.utils.set_progress_bar_global_hook(step_hook)
    try:
        out = TrainLoraNode.execute(**inputs)
    finally:
        comfy.utils.set_progress_bar_global_hook(previous_hook)
    result = out.result if hasattr(out, "result") else out
    return result[0], result[1]


def train_lora_node_step_times(
    model: Any, size: int, steps: int, training_dtype: str, algorithm: str = "LoRA"
) -> list[float]:
    """Seconds per step of ComfyUI's own ``TrainLoraNode`` (rank 8, AdamW, 1 instance + 1 class latent).

    The times come from ComfyUI's progress bar (one tick per step), so they cover exactly the
    node's training steps, not its setup.
    """
    import torch

    g = torch.Generator().manual_seed(0)
    latents = [{"samples": torch.randn(1, 4, size // 8, size // 8, generator=g)} for _ in range(2)]
    positive = [[[torch.randn(1, 77, 768, generator=g), {}]]]
    stamps: list[float] = []
    torch.manual_seed(0)  # its seed input does not seed its own initialisation
    start = time.perf_counter()
    run_train_lora_node(
        model,
        latents,
        positive,
        steps=steps,
        learning_rate=1e-4,
        seed=0,
        batch_size=2,
        training_dtype=training_dtype,
        algorithm=algorithm,
        step_hook=lambda *args, **kwargs: stamps.append(time.perf_counter()),
    )
    stamps = stamps[-steps:]
    return [b - a for a, b in zip([start, *stamps[:-1]], stamps, strict=True)]
