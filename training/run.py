"""One DreamBooth run from inputs to a trained adapter: what the node and the headless runner both call.

``TapTuneDreamBoothTrain`` (in the graph) and ``headless/train.py`` (a job file, alone or under
``torchrun``) differ only in where their inputs come from and where the adapter goes; the run
itself, and the facts a shared adapter file records about it, are made here, once.
"""

from __future__ import annotations

from typing import Any

from ..patching.model_access import model_architecture
from .run_inputs import RunInputs
from .run_result import TrainResult
from .sync import GradientSync
from .trained_adapter import TrainedAdapter
from .trainer import DreamBoothTrainer, Reporter


def run_dreambooth(
    model: Any,
    clip: Any,
    vae: Any,
    spec: Any,
    inputs: RunInputs,
    report: Reporter | None = None,
    sync: GradientSync | None = None,
) -> tuple[TrainResult, TrainedAdapter]:
    """Train ``spec`` on ``model`` with prior preservation; the run's result and the adapter to save.

    Raises the pack's training errors (each naming the input at fault) as the trainer does.
    """
    result = DreamBoothTrainer(model, clip, vae, spec, inputs, report, sync).run()
    return result, trained_adapter(result, model, inputs)


def trained_adapter(result: TrainResult, model: Any, inputs: RunInputs) -> TrainedAdapter:
    """The adapter to save from a finished (or cancelled) run, with the facts its file records.

    Also for callers that drive :class:`DreamBoothTrainer` themselves (the node reaches the
    adapter set while it trains, for numbered saves).
    """
    settings = inputs.settings
    info = {
        "trigger_word": result.trigger_word,
        "class_word": result.class_word,
        "steps": result.steps_done,
        "final_loss": result.final_loss,
        "learning_rate": result.learning_rate,
        "training": result.spec,
        "instance_prompt": inputs.instance.prompt,
        "class_prompt": inputs.classes.prompt,
        "prior_loss_weight": settings.prior_loss_weight,
        "prior_target": settings.prior_target,
        "trigger_word_prior": settings.trigger_word_prior,
    }
    if result.cancelled:
        info["cancelled_at_step"] = result.steps_done
    return TrainedAdapter(result.adapter_set, model_architecture(model), info)
