"""What an adapter kind is: the typed protocols every kind implements, and their shared skeleton.

An adapter *kind* (``tap``, ``oft``; see ``registry.py``) is one folder under ``adapter_core/``
providing:

* a **config** dataclass (one group's settings) that reads and writes its file-metadata form;
* an **adapter set** (:class:`AdapterSetBase` subclass): the trained modules of one file, keyed
  by module path; it describes what it changes in a model as a :class:`PatchPlan`;
* a **spec** (:class:`AdapterSpec`): the recipe a training run builds a fresh set from, with the
  kind's own training behaviour (trainable parameters per phase, post-stage steps, what runs
  before each forward pass, the paper's learning rate).

``patching/``, ``training/`` and ``nodes/`` only ever use these protocols and the registry.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar, runtime_checkable

import torch
from torch import nn

from .errors import AdapterFileError, UnsupportedOperationError
from .file_format import AdapterFile, split_by_module, unclaimed_tensors
from .json_values import str_list_field
from .model_view import ModelView
from .patch_plan import PatchPlan

#: A group config: a frozen dataclass that converts to and from its file-metadata form.
ConfigT = TypeVar("ConfigT", bound="GroupConfig")
SetT = TypeVar("SetT", bound="AdapterSetBase")
#: Most groups a file may hold (ours hold one or two).
MAX_GROUPS = 1024
#: Most modules a file may adapt, over all its groups (SDXL has 70 transformer blocks of 10 linear
#: layers each; rebuilding a module costs about 0.1 ms, so this also bounds the time a file takes).
MAX_MODULES = 4096


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
            for path, tensors in split_by_module(adapter_file.tensors, modules, cls.marker).items():
                out.members[path] = cls.member_from_tensors(path, tensors, config, view)
            out.groups.append(AdapterGroup(config, modules))
        stray = unclaimed_tensors(adapter_file.tensors, list(out.members), cls.marker)
        if stray:
            raise AdapterFileError(f"tensor {stray[0][:200]} belongs to no module listed in 'adapters'")
        return out

    @classmethod
    @abstractmethod
    def member_from_tensors(
        cls, path: str, tensors: Mapping[str, torch.Tensor], config: ConfigT, view: ModelView | None
    ) -> nn.Module:
        """One module rebuilt from its file tensors (``<marker>.<name>`` keys), fully checked first."""

    @abstractmethod
    def member_tensors(self, member: nn.Module) -> dict[str, torch.Tensor]:
        """A module's file tensors, keyed ``<marker>.<name>``."""

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every file tensor: ``<path>.<marker>.<name>``."""
        return {f"{path}.{name}": t for path, m in self.members.items() for name, t in self.member_tensors(m).items()}

    def to_file(self, base: dict[str, Any] | None = None, **info: Any) -> AdapterFile:
        """The :class:`AdapterFile` to save, with an optional architecture signature and info fields."""
        return AdapterFile(self.kind, [g.to_json() for g in self.groups], self.tensors(), base, dict(info))

    # -- on a model ---------------------------------------------------------------------------------

    @abstractmethod
    def check_fits(self, view: ModelView) -> None:
        """Raise (a :class:`~.errors.TapTuneError`) unless every module fits the model in ``view``."""

    @abstractmethod
    def inference_plan(self, view: ModelView, strength: float) -> PatchPlan:
        """What sampling with this set at ``strength`` changes in the model."""

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
    """A recipe for new adapters of one kind, and that kind's training behaviour."""

    kind: ClassVar[str]
    #: The paper's learning rate for this kind (used when a run gives none).
    learning_rate: float

    def build(self, view: ModelView, seed: int) -> AdapterSetBase[Any]:
        """Fresh, trainable adapters for the model in ``view``, initialised from ``seed``."""
        ...

    def training_plan(self, adapter_set: Any, view: ModelView) -> PatchPlan:
        """What training ``adapter_set`` changes in the model (gradients must reach its parameters)."""
        ...

    @property
    def post_steps(self) -> int:
        """Optimiser steps after the main ones (a post-stage such as OFT's magnitude fitting)."""
        ...

    def trainable(self, adapter_set: Any, phase: str) -> list[nn.Parameter]:
        """The parameters the optimiser of ``phase`` (``main`` or a post-stage) trains."""
        ...

    def before_forward(self, adapter_set: Any, phase: str) -> None:
        """What runs before every training forward pass (COFT's projection, for OFT)."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-ready configuration, recorded in files and checkpoints (and keying resumable runs)."""
        ...


@dataclass(frozen=True)
class AdapterKind:
    """One registry entry: a kind's name, its set and spec types, and a line for the docs."""

    name: str
    adapter_set: type[AdapterSetBase[Any]]
    spec: type
    summary: str
