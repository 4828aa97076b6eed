"""The kind contract, checked the same way for every registered adapter kind (issue 19 §2).

Every kind in ``adapter_core.registry.KINDS`` runs every clause below; nothing here names a
kind. A kind registered without passing them fails this suite, and a kind that breaks a
static clause is refused by the registry at import (the last tests show that). What a kind
gives the suite comes from its registry entry: its ``example_spec`` (the smallest spec that
runs every phase it trains) and its spec form.

Clauses, on every model family (SD 1.x, SD 2.x with v-prediction, SDXL with its extra
conditioning: narrow ComfyUI UNets; and the shipped pocket model):

* the spec builds on the family and the set fits it;
* training trains, in each phase the kind declares, that phase's parameter group and nothing
  else (the other groups and the base model stay as they were);
* the kind's constraint (COFT's radius) holds after every step of every phase;
* strength 0 gives the base bit for bit, strength 1 computes what training computed, the set
  at 1 stacked with the same set at -1 gives the base back, two sets stack; unloading restores
  the base;
* save and load are bit-exact (tensors and outputs);
* a resumed run equals a straight run, across phases;
* the spec's one JSON form round-trips (alone and in a job file) and holds every field;
* where the kind offers weight differences (export for LoRA-only tools), they reproduce it;
* damaged files of the kind are refused with the pack's error, never a raw one.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from devtools.checkpoints import SD2_TINY, SD15_TINY, SDXL_SMALL, build_model_patcher
from devtools.standins import FixedTextEncoder, PixelVAE
from taptune.adapter_core import load_adapter_set, save_adapter_file
from taptune.adapter_core.errors import TapTuneError, UnsupportedOperationError
from taptune.adapter_core.kind import AdapterKind, Phase, check_kind, trainable_parameters
from taptune.adapter_core.registry import KINDS, spec_from_json
from taptune.patching.apply import apply_adapter_set
from taptune.patching.model_access import DIFFUSION_PREFIX, model_architecture, model_view
from taptune.patching.pocket_model import load_pocket_model
from taptune.training.job_file import job_to_json, parse_job
from taptune.training.run_inputs import ImageSet, RunInputs
from taptune.training.settings import TrainSettings
from taptune.training.trainer import DreamBoothTrainer

from .training_helpers import smooth_image
from .unet_io import fixed_inputs, raw_output, unet_output

KIND_NAMES = list(KINDS)
#: (ComfyUI model config name, UNet config, prediction, pooled width) of the generated families.
GENERATED = {
    "sd15": ("SD15", SD15_TINY, "eps", None),
    "sd2-v": ("SD20", SD2_TINY, "v", None),
    "sdxl": ("SDXL", SDXL_SMALL, "eps", 1280),
}
FAMILIES = [*GENERATED, "pocket"]
PROMPT = "a photo of sks dog"
MAIN_STEPS = 3


@dataclasses.dataclass
class Family:
    name: str
    model: Any
    inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]
    encoder: FixedTextEncoder


@pytest.fixture(scope="module", params=FAMILIES)
def family(request) -> Family:
    name = request.param
    if name == "pocket":
        model, _, _ = load_pocket_model()
        context_dim, adm, pooled = model.model.model_config.unet_config["context_dim"], None, None
    else:
        config_name, config, prediction, pooled = GENERATED[name]
        model = build_model_patcher(config_name, config, seed=3, prediction=prediction)
        context_dim, adm = config["context_dim"], config.get("adm_in_channels")
    inputs = fixed_inputs(context_dim, seed=5, size=8, adm=adm)
    return Family(name, model, inputs, FixedTextEncoder(context_dim, pooled))


@pytest.fixture(scope="module")
def sd15() -> Family:
    config_name, config, prediction, _ = GENERATED["sd15"]
    model = build_model_patcher(config_name, config, seed=4, prediction=prediction)
    return Family("sd15", model, fixed_inputs(config["context_dim"], seed=6, size=8), FixedTextEncoder(768))


def _out(model: Any, family: Family) -> torch.Tensor:
    x, sigma, ctx, extra = family.inputs
    return unet_output(model, x, sigma, ctx, **extra)


def _example(kind: str) -> Any:
    example = KINDS[kind].example_spec
    assert example is not None
    return example()


def _perturbed(kind: str, family: Family, seed: int) -> Any:
    """A built set whose every parameter is moved off its start (a start may be the identity), constraint kept."""
    spec = _example(kind)
    adapter_set = spec.build(model_view(family.model), seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter_set.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
        for phase in Phase:
            spec.after_step(adapter_set, phase)
    return adapter_set


def _settings(**overrides: Any) -> TrainSettings:
    values: dict[str, Any] = {
        "steps": MAIN_STEPS,
        "learning_rate": 1e-2,
        "resolution": 64,
        "seed": 0,
        "batch_size": 2,
        "prior_loss_weight": 0.0,
    }
    return TrainSettings(**{**values, **overrides})


def _inputs(settings: TrainSettings) -> RunInputs:
    return RunInputs(ImageSet([smooth_image(i, size=64) for i in range(2)], PROMPT), settings=settings)


def _snapshot(adapter_set: Any) -> dict[str, list[torch.Tensor]]:
    return {name: [p.detach().clone() for p in group] for name, group in adapter_set.parameter_groups().items()}


def _changed(before: list[torch.Tensor], after: list[torch.Tensor]) -> list[bool]:
    return [not torch.equal(a, b) for a, b in zip(before, after, strict=True)]


# -- the contract itself ------------------------------------------------------------------------------


def test_every_kind_answers_for_every_phase_and_has_an_example():
    for kind in KINDS.values():
        check_kind(kind)  # what the registry checked at import
        assert set(kind.spec.phase_parameters) == set(Phase)
        assert kind.example_spec is not None and kind.spec_form is not None


@pytest.mark.parametrize(
    "breakage",
    [
        lambda k: dataclasses.replace(k, name="other"),
        lambda k: dataclasses.replace(
            k, spec=type("S", (k.spec,), {"phase_parameters": {Phase.MAIN: "adapter"}, "__module__": __name__})
        ),
        lambda k: dataclasses.replace(
            k,
            spec=type(
                "S",
                (k.spec,),
                {"phase_parameters": {Phase.MAIN: "nothing-declared", Phase.POST: None}, "__module__": __name__},
            ),
        ),
        lambda k: dataclasses.replace(k, example_spec=None),
    ],
    ids=["name", "a phase unanswered", "an undeclared group", "no example"],
)
@pytest.mark.parametrize("kind", KIND_NAMES)
def test_the_registry_refuses_a_kind_that_breaks_the_contract(kind, breakage):
    broken: AdapterKind = breakage(KINDS[kind])
    with pytest.raises(TypeError, match="kind contract"):
        check_kind(broken)


# -- on every family ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_builds_fits_and_strength(kind, family):
    base = _out(family.model, family)
    adapter_set = _perturbed(kind, family, 1)
    adapter_set.check_fits(model_view(family.model))
    assert adapter_set.num_parameters() > 0

    assert torch.equal(_out(apply_adapter_set(family.model, adapter_set, 0.0), family), base)
    one = _out(apply_adapter_set(family.model, adapter_set, 1.0), family)
    assert not torch.allclose(one, base, atol=1e-6)
    assert torch.equal(_out(family.model, family), base)  # unloading restored every weight and block

    # Two sets of the kind stack: together they differ from either alone.
    second = _perturbed(kind, family, 7)
    two = _out(apply_adapter_set(family.model, second, 1.0), family)
    stacked = _out(apply_adapter_set(apply_adapter_set(family.model, adapter_set, 1.0), second, 1.0), family)
    assert not torch.allclose(stacked, one, atol=1e-6) and not torch.allclose(stacked, two, atol=1e-6)

    # -1 undoes 1: the same set at both strengths gives the base back.
    undone = _out(apply_adapter_set(apply_adapter_set(family.model, adapter_set, 1.0), adapter_set, -1.0), family)
    torch.testing.assert_close(undone, base, rtol=1e-4, atol=1e-4)
    assert torch.equal(_out(family.model, family), base)


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_file_round_trip_is_bit_exact(kind, family, tmp_path):
    adapter_set = _perturbed(kind, family, 2)
    path = save_adapter_file(
        tmp_path / f"{kind}.safetensors", adapter_set.to_file(base=model_architecture(family.model))
    )
    adapter_file, loaded = load_adapter_set(path, model_view(family.model))
    assert adapter_file.kind == kind and type(loaded) is type(adapter_set)
    assert loaded.tensors().keys() == adapter_set.tensors().keys()
    for name, tensor in adapter_set.tensors().items():
        assert torch.equal(loaded.tensors()[name], tensor), name
    assert torch.equal(
        _out(apply_adapter_set(family.model, loaded), family),
        _out(apply_adapter_set(family.model, adapter_set), family),
    )


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_each_phase_trains_its_parameters_and_only_those(kind, family):
    """Fails on 0.2's OFT: its post-stage trained the rotations and left the magnitudes at 1."""
    spec = _example(kind)
    base = _out(family.model, family)
    snapshots: dict[int, dict[str, list[torch.Tensor]]] = {}
    violations: list[float] = []

    def report(step: int, total: int, loss: float, preview: Any) -> None:
        snapshots[step] = _snapshot(trainer.adapter_set)
        violations.append(trainer.adapter_set.constraint_violation())

    trainer = DreamBoothTrainer(family.model, family.encoder, PixelVAE(), spec, _inputs(_settings()), report)
    snapshots[0] = _snapshot(trainer.adapter_set)
    result = trainer.run()
    total = MAIN_STEPS + spec.post_steps
    assert result.steps_done == total and not result.cancelled and len(violations) == total

    ends = {Phase.MAIN: (0, MAIN_STEPS), Phase.POST: (MAIN_STEPS, total)}
    for phase, group in spec.phase_parameters.items():
        start, end = ends[phase]
        if group is None:
            assert start == end, f"{kind} has no {phase.value} phase but ran steps in it"
            continue
        assert end > start, f"the example spec of {kind} runs no {phase.value} steps"
        for name in snapshots[start]:
            changed = _changed(snapshots[start][name], snapshots[end][name])
            if name == group:
                assert changed and all(changed), f"{phase.value} left some of {kind}'s {name} unchanged"
            else:
                assert not any(changed), f"{phase.value} changed {kind}'s {name}, which it must not train"
        trained = {id(p) for p in trainable_parameters(spec, trainer.adapter_set, phase)}
        assert trained == {id(p) for p in trainer.adapter_set.parameter_groups()[group]}

    assert max(violations) <= 1e-5, f"{kind}'s constraint broken after a step: {max(violations)}"
    assert torch.equal(_out(family.model, family), base)  # nothing of the run stayed in the base model


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_bypassed_adapters_compute_the_given_model_and_come_back(kind, family):
    """The prior's teacher (``prior_target: base_model``): a loaded training clone with the run's adapters
    bypassed computes what the MODEL it was given computes, bit for bit; afterwards, its own output
    again. The MODEL given carries a tap adapter loaded for sampling (in the very blocks a tap run
    trains in): that one stays on, so the teacher is the MODEL given, not the bare checkpoint."""
    from taptune.adapter_core.bypass import adapters_bypassed
    from taptune.patching.model_access import diffusion_model
    from taptune.patching.training_clone import loaded_for_training, training_clone, training_memory

    loaded = _perturbed("tap", family, 11)
    given = apply_adapter_set(family.model, loaded, 1.0)
    spec = _example(kind)
    adapter_set = _perturbed(kind, family, 3)
    x, sigma, ctx, extra = family.inputs
    bare, expected = _out(family.model, family), _out(given, family)
    trained = training_clone(given, spec.training_plan(adapter_set, model_view(given)), gradient_checkpointing=False)
    memory = training_memory(trained, list(x.shape), adapter_set.num_parameters(), False)
    with loaded_for_training(trained, memory):
        adapted = raw_output(trained, x, sigma, ctx, **extra)
        with adapters_bypassed(diffusion_model(trained), adapter_set.parameters()) as switched:
            bypassed = raw_output(trained, x, sigma, ctx, **extra)
        again = raw_output(trained, x, sigma, ctx, **extra)
    assert switched > 0
    assert not torch.equal(expected, bare)  # the loaded adapter changes the output
    assert torch.equal(bypassed, expected)
    assert not torch.equal(adapted, expected)
    assert torch.equal(again, adapted)


# -- once (the SD 1.x family) ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_strength_one_computes_what_training_computed(kind, sd15):
    """The training plan (gradients flowing) and the inference plan (merged or hooked) agree."""
    from taptune.patching.training_clone import loaded_for_training, training_clone, training_memory

    spec = _example(kind)
    adapter_set = _perturbed(kind, sd15, 3)
    view = model_view(sd15.model)
    x, sigma, ctx, _ = sd15.inputs
    trained = training_clone(sd15.model, spec.training_plan(adapter_set, view), gradient_checkpointing=False)
    memory = training_memory(trained, [2, 4, 8, 8], adapter_set.num_parameters(), False)
    with loaded_for_training(trained, memory), torch.no_grad():
        during = trained.model.apply_model(x, sigma, c_crossattn=ctx, transformer_options={}).float()
    inference = _out(apply_adapter_set(sd15.model, adapter_set, 1.0), sd15)
    torch.testing.assert_close(during, inference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_a_resumed_run_equals_a_straight_run(kind, sd15, tmp_path):
    spec = _example(kind)
    total = MAIN_STEPS + spec.post_steps
    straight = DreamBoothTrainer(sd15.model, sd15.encoder, PixelVAE(), spec, _inputs(_settings())).run()
    first = DreamBoothTrainer(
        sd15.model, sd15.encoder, PixelVAE(), spec, _inputs(_settings(checkpoint_every=1, checkpoint_dir=str(tmp_path)))
    ).run()
    # Resume from the checkpoint one step into the run: the rest crosses every phase boundary.
    checkpoint = next(c for c in first.checkpoints if c.endswith("step_000001.ckpt"))
    resumed = DreamBoothTrainer(
        sd15.model, sd15.encoder, PixelVAE(), spec, _inputs(_settings(resume_from=checkpoint))
    ).run()
    assert straight.steps_done == resumed.steps_done == total
    for a, b in zip(straight.adapter_set.parameters(), resumed.adapter_set.parameters(), strict=True):
        assert torch.equal(a, b)
    assert straight.losses == resumed.losses


def _leaf_fields(value: Any, prefix: str = "") -> list[str]:
    if dataclasses.is_dataclass(value):
        return [name for f in dataclasses.fields(value) for name in _leaf_fields(getattr(value, f.name), f.name)]
    if isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
        return [name for v in value for name in _leaf_fields(v, prefix)]
    return [prefix]


def _json_keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _json_keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _json_keys(v)}
    return set()


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_the_spec_has_one_json_form_holding_every_field(kind, tmp_path):
    spec = _example(kind)
    text = json.dumps(spec.to_json())
    assert spec_from_json(json.loads(text)) == spec
    assert set(_leaf_fields(spec)) <= _json_keys(spec.to_json())
    # A default-built spec (the node's defaults) too.
    form = KINDS[kind].spec_form
    assert form is not None
    default = form.build(form.defaults())
    assert spec_from_json(json.loads(json.dumps(default.to_json()))) == default
    # In a job file, through the job reader.
    entry = job_to_json(
        checkpoint="model.safetensors",
        spec=spec,
        instance_folder="instance",
        instance_prompt=PROMPT,
        class_prompt="",
        class_folder=None,
        settings=_settings(),
        adapter="out.safetensors",
    )
    job = parse_job(json.loads(json.dumps(entry)), tmp_path / "job.json")
    assert job.spec == spec


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_weight_differences_reproduce_the_set_where_offered(kind, sd15):
    from taptune.patching.weight_export import lora_differences

    adapter_set = _perturbed(kind, sd15, 5)
    try:
        diffs = lora_differences(sd15.model, adapter_set)
    except UnsupportedOperationError as exc:
        assert kind in str(exc) or "weight" in str(exc)
        return
    patched = sd15.model.clone()
    # ComfyUI's own "diff" weight patch: what its stock LoRA loader makes of a .diff tensor.
    assert diffs and all(k.startswith(DIFFUSION_PREFIX) and k.endswith(".diff") for k in diffs)
    weights = {key[: -len(".diff")] + ".weight": ("diff", (value,)) for key, value in diffs.items()}
    applied = patched.add_patches(weights, 1.0)
    assert len(applied) == len(diffs)
    torch.testing.assert_close(
        _out(patched, sd15), _out(apply_adapter_set(sd15.model, adapter_set), sd15), rtol=1e-4, atol=1e-4
    )


# -- damaged files of the kind ----------------------------------------------------------------------------

Damage = Callable[[dict[str, torch.Tensor], torch.Generator], dict[str, torch.Tensor]]


def _pick(tensors: dict[str, torch.Tensor], g: torch.Generator) -> str:
    names = sorted(tensors)
    return names[int(torch.randint(len(names), (1,), generator=g))]


def _with(tensors: dict[str, torch.Tensor], name: str, value: torch.Tensor) -> dict[str, torch.Tensor]:
    return {**tensors, name: value}


DAMAGES: dict[str, Damage] = {
    "extra tensor": lambda t, g: {**t, f"{_pick(t, g)}_extra": torch.zeros(3)},
    "stray module": lambda t, g: {**t, "output_blocks.99.1.weird.weight": torch.zeros(2)},
    "wrong shape": lambda t, g: _with(t, (n := _pick(t, g)), torch.zeros(*[s + 1 for s in t[n].shape] or [2])),
    "reshaped": lambda t, g: _with(t, (n := _pick(t, g)), t[n].flatten() if t[n].dim() > 1 else t[n].reshape(-1, 1)),
    "nan": lambda t, g: _with(t, (n := _pick(t, g)), torch.full_like(t[n], float("nan"))),
    "inf": lambda t, g: _with(t, (n := _pick(t, g)), torch.full_like(t[n], float("inf"))),
    "integer dtype": lambda t, g: _with(t, (n := _pick(t, g)), t[n].to(torch.int32)),
    "zero-size": lambda t, g: _with(t, _pick(t, g), torch.zeros(0)),
    "everything gone": lambda t, g: {},
}


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_damaged_files_of_the_kind_are_refused_with_the_packs_error(kind, sd15, tmp_path):
    adapter_set = _perturbed(kind, sd15, 6)
    good = save_adapter_file(tmp_path / "good.safetensors", adapter_set.to_file(base=model_architecture(sd15.model)))
    tensors = load_file(str(good))
    with open(good, "rb") as handle:
        header_size = int.from_bytes(handle.read(8), "little")
        metadata = json.loads(handle.read(header_size)).get("__metadata__", {})
    prefixes = [adapter_set.tensor_prefix(m) for m in adapter_set.members]
    modules_gone = {  # every tensor of one module gone (the module still listed in the metadata)
        f"module {i}": (lambda t, g, p=prefix: {k: v for k, v in t.items() if not k.startswith(p + ".")})
        for i, prefix in enumerate(prefixes[:3])
    }
    accepted: list[str] = []
    for name, damage in {**DAMAGES, **modules_gone}.items():
        for seed in range(5):
            damaged = damage(tensors, torch.Generator().manual_seed(seed))
            path: Path = tmp_path / f"{name.replace(' ', '_')}_{seed}.safetensors"
            if not damaged:
                path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
            else:
                save_file(damaged, str(path), metadata=metadata)
            try:
                load_adapter_set(path, model_view(sd15.model))[1].check_fits(model_view(sd15.model))
            except TapTuneError as exc:
                assert type(exc).__module__.startswith("taptune"), (name, exc)
            else:
                accepted.append(f"{name} #{seed}")
    assert not accepted, f"damaged {kind} files accepted: {accepted}"
