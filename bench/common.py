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
