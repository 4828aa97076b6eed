"""The GPU check's own code on the CPU (what `make gpu-check --dry-run` runs), at a tiny size.

The check itself needs a CUDA device; here its pieces run on the CPU so that a mistake in them
shows before a GPU machine is spent on it. The numbers are not asserted, only that each piece
runs, passes its own criteria and lands in the result files.
"""

from __future__ import annotations

import json

import torch

from devtools import gpu_check
from devtools.checkpoints import SD15_TINY, build_model_patcher


def test_the_gpu_checks_pieces_run_on_the_cpu_and_record_their_results(tmp_path):
    import comfy.utils

    hook_before = comfy.utils.PROGRESS_BAR_HOOK
    check = gpu_check.Check(tmp_path, dry_run=True, budget=600)
    check.run("checks", "oft_solve", lambda: gpu_check.check_oft_solve(torch.device("cpu")))
    with torch.inference_mode(False):
        model = build_model_patcher("SD15", SD15_TINY, seed=0)
        check.run("checks", "autocast_tap_bf16", lambda: gpu_check.check_autocast(model, "tap", "bf16", 64, 2))
        check.run("checks", "memory_given_back", lambda: gpu_check.check_memory_given_back(model, 64, 1, "bf16"))
        check.run("benchmark", "tap_bf16", lambda: gpu_check.bench_ours(model, "tap", 64, 2, "bf16"))
        check.run("benchmark", "full_finetune_bf16", lambda: gpu_check.bench_full(model, 64, 2, "bf16"))
        check.run("benchmark", "comfy_lora_r8_fp16", lambda: gpu_check.bench_comfy_lora(model, 64, 2, "fp16"))
        check.run("benchmark", "comfy_lora_r8_bf16", lambda: gpu_check.bench_comfy_lora(model, 64, 2, "bf16"))
        check.run(
            "benchmark", "oft_lora_pair_bf16", lambda: gpu_check.bench_oft_lora_pair(model, 64, 2, "bf16", rounds=1)
        )
        check.run("benchmark", "profile_coft", lambda: gpu_check.profile_coft(model, 64, 2, "bf16", tmp_path))
    check.run("benchmark", "oft_inverse", lambda: gpu_check.bench_oft_inverse(torch.device("cpu"), 1))
    check.run("checks", "broken", lambda: {"value": 1 / 0})
    # The LoRA row times ComfyUI's progress bar: the process's own hook (here the test harness's) is back.
    assert comfy.utils.PROGRESS_BAR_HOOK is hook_before

    results = json.loads((tmp_path / "gpu_check.json").read_text())
    assert results["environment"]["dry_run"] and results["environment"]["device"] == "cpu"
    for name in ("oft_solve", "autocast_tap_bf16", "memory_given_back"):
        assert results["checks"][name]["status"] == "pass", results["checks"][name]
    assert results["checks"]["autocast_tap_bf16"]["autocast_dtype"] == "torch.bfloat16"
    assert (
        results["checks"]["broken"]["status"] == "error" and "ZeroDivisionError" in results["checks"]["broken"]["error"]
    )
    for name in ("tap_bf16", "full_finetune_bf16", "comfy_lora_r8_bf16"):
        row = results["benchmark"][name]
        assert row["status"] == "ok" and row["seconds_per_step"] > 0 and len(row["step_seconds"]) == 2
    assert results["benchmark"]["comfy_lora_r8_fp16"]["status"] == "n/a"  # TrainLoraNode trains bf16 or fp32 only
    pair = results["benchmark"]["oft_lora_pair_bf16"]
    assert pair["status"] == "ok" and len(pair["coft"]) == len(pair["lora"]) == 1
    assert pair["ratio"] == pair["oft_seconds_per_step"] / pair["lora_seconds_per_step"]
    inverse = results["benchmark"]["oft_inverse"]
    for k in ("k80", "k160", "k192", "k320"):  # every way agrees with the float64 inverse
        assert all(way["error"] < 1e-5 for way in inverse[k].values()), inverse[k]
    assert "aten::bmm" in (tmp_path / "oft_profile.txt").read_text()  # the rotations' products were profiled
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| full_finetune | bf16 |" in table and "| oft_solve | pass |" in table
    assert "| bf16 | " in table.split("alternated")[1] and "| 320 x 320 blocks |" in table
    # The full fine-tuning benchmark gives the model back as it found it: frozen, no gradients.
    assert not any(p.requires_grad or p.grad is not None for p in model.model.diffusion_model.parameters())
