"""Launchers that run the pack's training core without the ComfyUI server (not part of the published archive).

* ``python -m headless.train JOB.json``: one job file (``taptune-job/1``), alone or under
  ``torchrun --nproc_per_node N`` (data parallel);
* ``python -m headless.sweep PLAN.yaml``: a plan of configurations x subjects x seeds, one job
  after another or as Ray tasks.

They use ComfyUI as a library (its checkpoint loader, model management, conditioning) through
``devtools/comfy_host.py`` and call the very function the node calls
(``training/run.py``); see docs/distributed.md.
"""
