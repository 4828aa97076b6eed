"""What an adapter kind is: the typed protocols every kind implements, and their shared skeleton.

An adapter *kind* (``tap``, ``oft``; see ``registry.py``) is one folder under ``adapter_core/``
providing:

* a **config** dataclass (one group's settings) that reads and writes its file-metadata form;
* an **adapter set** (:class:`AdapterSetBase` subclass): the trained modules of one file, keyed
  by module path; it describes what it changes in a model as a :class:`PatchPlan`;
* a **spec** (:class:`AdapterSpec`): the recipe a training run builds a fresh set from, with the
  kind's own training behaviour (which parameter group each :class:`Phase` trains, post-stage
  steps, what runs after each optimiser step, the paper's learning rate), its one JSON form
  (``to_json``/``from_json``) and the form of its spec node (:class:`~.spec_form.SpecForm`).

``patching/``, ``training/`` and ``nodes/`` only ever use these protocols and the registry, which
checks every kind against them when it is registered (:func:`check_kind`).
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, is_dataclass
from enum import Enum
from typing import Any, ClassVar, Generic, Protocol, TypeVar, runtime_checkable

import torch
from torch import nn

from .errors import AdapterFileError, UnsupportedOperationError
from .file_format import AdapterFile, split_by_prefix
from .json_values import str_list_field
from .model_view import ModelView
from .patch_plan import PatchPlan
from .spec_form import SpecForm

#: A group config: a frozen dataclass that converts to and from its file-metadata form.
ConfigT = TypeVar("ConfigT", bound="GroupConfig")
SetT = TypeVar("SetT", bound="AdapterSetBase")
#: Most groups a file may hold (ours hold one or two).
MAX_GROUPS = 1024
#: Most modules a file may adapt, over all its groups (SDXL has 70 transformer blocks of 10 linear
#: layers each; rebuilding a module costs about 0.1 ms, so this also bounds the time a file takes).
MAX_MODULES = 4096


class Phase(str, Enum):
    """The phases of a training run, in order. Every kind says what each one trains."""

    #: The main optimisation (every kind has it).
    MAIN = "main"
    #: A post-stage after the main steps with other parameters (OFT's magnitude fitting).
    POST = "post"


@runtime_checkable
class GroupConfig(Protocol):
    """One group's settings, as stored in a file's ``adapters`` entries."""

    def to_json(self) -> dict[str, Any]: ...

    @classmethod
    def from_json(cls, entry: Mapping[str, Any], where: str) -> Any: ...


@dataclass
class AdapterGroup(Generic[ConfigT]):
    """One entry of a file's ``adapters`` list: a configuration and the module paths it covers."""

    config: ConfigT
    modules: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The metadata form of this group."""
        return {**self.config.to_json(), "modules": list(self.modules)}


class AdapterSetBase(ABC, Generic[ConfigT]):
    """The trained modules of one adapter file, keyed by module path inside ``diffusion_model``.

    Subclasses set :attr:`kind`, :attr:`marker` (the tensor-name marker), :attr:`config_type`
    and implement the abstract methods; reading a file (:meth:`from_file`) is shared.
    """

    kind: ClassVar[str]
    marker: ClassVar[str]
    config_type: ClassVar[type]
    #: The names :meth:`parameter_groups` returns (what a spec's phases may train), known statically.
    parameter_group_names: ClassVar[tuple[str, ...]] = ("adapter",)

    def __init__(self) -> None:
        self.groups: list[AdapterGroup[ConfigT]] = []
        self.members: dict[str, nn.Module] = {}

    # -- the file form ------------------------------------------------------------------------------

    @classmethod
    def from_file(cls: type[SetT], adapter_file: AdapterFile, view: ModelView | None = None) -> SetT:
        """Rebuild a set from a parsed file, checking every group, module and tensor.

        ``view`` (the model the file is for) is needed only where a kind's tensors do not
        say every size themselves; the set is checked against it separately by :meth:`check_fits`.
        """
        if adapter_file.kind != cls.kind:
            raise AdapterFileError(f"expected a {cls.kind!r} adapter file, got kind {adapter_file.kind!r}")
        if len(adapter_file.adapters) > MAX_GROUPS:
            raise AdapterFileError(f"more than {MAX_GROUPS} adapter groups")
        out = cls()
        for index, entry in enumerate(adapter_file.adapters):
            where = f"adapter group {index + 1}"
            config = cls.config_type.from_json(entry, where)
            modules = str_list_field(entry, "modules", where, max_items=MAX_MODULES)
            if not modules:
                raise AdapterFileError(f"{where} lists no modules")
            if len(out.members) + len(modules) > MAX_MODULES:
                raise AdapterFileError(f"more than {MAX_MODULES} modules in the file")
            counts = Counter(modules)
            repeated = sorted({m for m, n in counts.items() if n > 1} | (counts.keys() & out.members.keys()))
            if repeated:
                raise AdapterFileError(f"module {repeated[0][:200]} is listed twice; one adapter per module")
            out.groups.append(AdapterGroup(config, modules))
            for path in modules:
                out.members[path] = None  # type: ignore[assignment]  # claimed; built below
        by_module, stray = split_by_prefix(adapter_file.tensors, {cls.tensor_prefix(m): m for m in out.members})
        if stray:
            raise AdapterFileError(f"tensor {stray[0][:200]} belongs to no module listed in 'adapters'")
        for group in out.groups:
            for path in group.modules:
                out.members[path] = cls.member_from_tensors(path, by_module[path], group.config, view)
        return out

    @classmethod
    def tensor_prefix(cls, path: str) -> str:
        """What a module's tensor names start with in a file (``<prefix>.<name>``); the module path by default.

        A kind whose files must also be read by other tools (LoRA's standard key names) says so here.
        """
        return path

    @classmethod
    @abstractmethod
    def member_from_tensors(
        cls, path: str, tensors: Mapping[str, torch.Tensor], config: ConfigT, view: ModelView | None
    ) -> nn.Module:
        """One module rebuilt from its file tensors (keys relative to :meth:`tensor_prefix`), fully checked first."""

    @abstractmethod
    def member_tensors(self, member: nn.Module) -> dict[str, torch.Tensor]:
        """A module's file tensors, keyed relative to :meth:`tensor_prefix` (e.g. ``<marker>.<name>``)."""

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every file tensor: ``<tensor prefix>.<name>``."""
        return {
            f"{self.tensor_prefix(path)}.{name}": t
            for path, m in self.members.items()
            for name, t in self.member_tensors(m).items()
        }

    def to_file(self, base: dict[str, Any] | None = None, **info: Any) -> AdapterFile:
        """The :class:`AdapterFile` to save, with an optional architecture signature and info fields."""
        return AdapterFile(self.kind, [g.to_json() for g in self.groups], self.tensors(), base, dict(info))

    # -- on a model ---------------------------------------------------------------------------------

    @abstractmethod
    def check_fits(self, view: ModelView) -> None:
        """Raise (a :class:`~.errors.TapTuneError`) unless every module fits the model in ``view``."""

    @abstractmethod
    def inference_plan(self, view: ModelView) -> PatchPlan:
        """What sampling with this set changes in the model; the host applies the strength (``install_plan``)."""

    def weight_differences(
        self, weight_of: Callable[[str], torch.Tensor], strength: float, dtype: torch.dtype
    ) -> dict[str, torch.Tensor]:
        """``{layer path: new weight - weight}`` for kinds that change weights only (LoRA-style export)."""
        raise UnsupportedOperationError(
            f"{self.kind} adapters change activations, not weights; they cannot be written as weight differences"
        )

    # -- parameters and summaries -------------------------------------------------------------------

    def parameters(self) -> list[nn.Parameter]:
        """All trainable parameters, in module order (for an optimiser and for checkpoints)."""
        return [p for m in self.members.values() for p in m.parameters()]

    def constraint_violation(self) -> float:
        """How far the set lies outside the constraint its kind keeps (COFT's radius), relative; 0 without one."""
        return 0.0

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by group name (the names of :attr:`parameter_group_names`)."""
        return {"adapter": self.parameters()}

    def num_parameters(self) -> int:
        """Stored parameters of all modules."""
        return sum(p.numel() for p in self.parameters())

    def frozen_copy(self: SetT) -> SetT:
        """A detached copy whose parameters do not require gradients."""
        out = copy.deepcopy(self)
        for p in out.parameters():
            p.requires_grad_(False)
        return out

    @abstractmethod
    def describe(self) -> list[str]:
        """One human-readable line per group."""


@runtime_checkable
class AdapterSpec(Protocol):
    """A recipe for new adapters of one kind, and that kind's training behaviour (a frozen dataclass)."""

    kind: ClassVar[str]
    #: For every :class:`Phase`, the parameter group (:meth:`AdapterSetBase.parameter_groups`) it trains,
    #: or ``None`` where the kind has no such phase (it then runs no steps in it).
    phase_parameters: ClassVar[Mapping[Phase, str | None]]
    #: The learning rate of this run (its default is the paper's).
    learning_rate: float

    def build(self, view: ModelView, seed: int) -> AdapterSetBase[Any]:
        """Fresh, trainable adapters for the model in ``view``, initialised from ``seed``."""
        ...

    def training_plan(self, adapter_set: Any, view: ModelView) -> PatchPlan:
        """What training ``adapter_set`` changes in the model (strength 1; gradients must reach its parameters)."""
        ...

    @property
    def post_steps(self) -> int:
        """Optimiser steps in :attr:`Phase.POST` after the main ones (0 where the kind has no post-stage)."""
        ...

    def after_step(self, adapter_set: Any, phase: Phase) -> None:
        """What runs after every optimiser step of ``phase`` (COFT's projection; usually nothing)."""
        ...

    def to_json(self) -> dict[str, Any]:
        """The one JSON form of the spec (job files, run keys, file metadata); :meth:`from_json` reverses it."""
        ...

    @classmethod
    def from_json(cls, entry: Mapping[str, Any], where: str) -> Any:
        """The spec a :meth:`to_json` entry describes; :class:`~.errors.ConfigError` naming the field otherwise."""
        ...


def trainable_parameters(spec: AdapterSpec, adapter_set: AdapterSetBase[Any], phase: Phase) -> list[nn.Parameter]:
    """The parameters the optimiser of ``phase`` trains: the group the spec names for it."""
    group = spec.phase_parameters[Phase(phase)]
    if group is None:
        raise UnsupportedOperationError(f"{spec.kind} adapters have no {Phase(phase).value} phase")
    return adapter_set.parameter_groups()[group]


@dataclass(frozen=True)
class AdapterKind:
    """One registry entry: a kind's name, its set and spec types, a line for the docs, its spec node's form."""

    name: str
    adapter_set: type[AdapterSetBase[Any]]
    spec: type
    summary: str
    spec_form: SpecForm | None = None
    #: A small spec that runs every phase the kind trains (the conformance suite trains it on every family).
    example_spec: Callable[[], Any] | None = None


def check_kind(kind: AdapterKind) -> None:
    """Raise :class:`TypeError` unless ``kind`` keeps the contract (the registry calls this at import).

    Statically checkable clauses: names agree, the spec is a frozen dataclass with the protocol's
    members, every :class:`Phase` is answered with a parameter group the set declares (or ``None``;
    :attr:`Phase.MAIN` must train something), and the spec form, if any, builds this kind's spec.
    """
    problems: list[str] = []
    if kind.adapter_set.kind != kind.name or getattr(kind.spec, "kind", None) != kind.name:
        problems.append("the adapter set's and the spec's kind must equal the registry name")
    if not (is_dataclass(kind.spec) and kind.spec.__dataclass_params__.frozen):  # type: ignore[attr-defined]
        problems.append("the spec must be a frozen dataclass")
    for member in ("build", "training_plan", "after_step", "to_json", "from_json", "post_steps", "learning_rate"):
        if not hasattr(kind.spec, member) and member not in getattr(kind.spec, "__dataclass_fields__", {}):
            problems.append(f"the spec has no {member}")
    answers = getattr(kind.spec, "phase_parameters", None)
    if not isinstance(answers, Mapping) or set(answers) != set(Phase):
        problems.append(f"phase_parameters must answer for every phase ({', '.join(p.value for p in Phase)})")
    else:
        for phase, group in answers.items():
            if group is not None and group not in kind.adapter_set.parameter_group_names:
                problems.append(f"phase {phase.value} trains {group!r}, which the adapter set does not declare")
        if answers[Phase.MAIN] is None:
            problems.append("the main phase must train something")
    if kind.spec_form is not None and not callable(kind.spec_form.build):
        problems.append("the spec form has no build function")
    if kind.example_spec is None:
        problems.append("the kind gives no example_spec for the conformance suite")
    elif isinstance(answers, Mapping) and set(answers) == set(Phase):
        example = kind.example_spec()
        if not isinstance(example, kind.spec):
            problems.append("example_spec must return a spec of the kind")
        elif (answers[Phase.POST] is not None) != (example.post_steps > 0):
            problems.append("example_spec must run every phase the kind trains (and no other)")
    if problems:
        raise TypeError(f"adapter kind {kind.name!r} breaks the kind contract: " + "; ".join(problems))
