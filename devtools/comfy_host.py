"""A real ComfyUI, in this process: import it from ``.host/ComfyUI``, register the pack, run prompts.

Used by the tests, the benchmarks and the demo. Prompts run through ComfyUI's own
``PromptExecutor`` (validation, caching, progress, errors, interrupts), as ``main.py``'s
worker runs them; only the websocket server is replaced by a recorder.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
COMFY_DIR = ROOT / ".host" / "ComfyUI"
PACK_MODULE = "taptune"

_prepared: dict[str, Any] = {}


def import_pack(name: str = PACK_MODULE) -> ModuleType:
    """Import this repository as the package ``name`` (the pack's folder has no importable name)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def prepare_comfy(base_directory: str | os.PathLike[str], cpu: bool = True) -> None:
    """Make ComfyUI importable with its folders under ``base_directory``; once per process."""
    if _prepared:
        if _prepared["base"] != str(base_directory):
            raise RuntimeError(f"ComfyUI was already prepared with base {_prepared['base']}")
        return
    if not (COMFY_DIR / "main.py").exists():
        raise RuntimeError(f"no ComfyUI in {COMFY_DIR}: run `make host`")
    sys.path.insert(0, str(COMFY_DIR))
    from comfy.cli_args import args

    # Both must be set before folder_paths and model_management are imported: they read them once.
    args.base_directory = str(base_directory)
    args.cpu = cpu
    import folder_paths  # noqa: F401
    import utils.extra_config  # noqa: F401  (must precede `import nodes`, as in main.py)

    _prepared["base"] = str(base_directory)


def init_nodes() -> None:
    """Load ComfyUI's built-in nodes and register this pack's nodes (through its entrypoint)."""
    if _prepared.get("nodes"):
        return
    import nodes

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    pack = import_pack()
    extension = asyncio.run(pack.comfy_entrypoint())
    for node_cls in asyncio.run(extension.get_node_list()):
        schema = node_cls.GET_SCHEMA()
        nodes.NODE_CLASS_MAPPINGS[schema.node_id] = node_cls
        node_cls.RELATIVE_PYTHON_MODULE = f"custom_nodes.{PACK_MODULE}"
        if schema.display_name:
            nodes.NODE_DISPLAY_NAME_MAPPINGS[schema.node_id] = schema.display_name
    _prepared["nodes"] = True


class RecordingServer:
    """What ``PromptExecutor`` needs of ComfyUI's server, recording every message it sends."""

    def __init__(self) -> None:
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.last_prompt_id: str | None = None
        self.sockets_metadata: dict[str, Any] = {}
        self.messages: list[tuple[Any, Any]] = []

    def send_sync(self, event: Any, data: Any, sid: Any = None) -> None:
        self.messages.append((event, data))

    def queue_updated(self) -> None:
        pass


@dataclass
class PromptResult:
    """The outcome of one prompt."""

    success: bool
    status: list[tuple[str, Any]]
    ui: dict[str, Any]
    outputs: dict[str, Any] = field(default_factory=dict)
    validation_error: Any = None

    def error(self) -> dict[str, Any] | None:
        """The ``execution_error`` message, if any."""
        for event, data in self.status:
            if event == "execution_error":
                return data
        return None

    def output(self, node_id: str, index: int = 0) -> Any:
        """Output ``index`` of node ``node_id`` (the first list item)."""
        return self.outputs[node_id][index][0]


class Host:
    """An in-process ComfyUI: prompts go through its ``PromptExecutor`` as in ``main.py``."""

    def __init__(self) -> None:
        import comfy.model_management
        import comfy.utils
        import execution
        from comfy_execution.progress import get_progress_state
        from comfy_execution.utils import get_executing_context

        self.server = RecordingServer()
        self.progress: list[tuple[Any, int, int, Any]] = []
        #: Called on every progress update (tests use it to press Cancel at a chosen step).
        self.on_progress: Any = None

        def hook(value: int, total: int, preview: Any, prompt_id: Any = None, node_id: Any = None) -> None:
            # What main.py's progress hook does, minus the websocket: check for Cancel, record.
            context = get_executing_context()
            if node_id is None and context is not None:
                node_id = context.node_id
            self.progress.append((node_id, value, total, preview))
            if self.on_progress is not None:
                self.on_progress(node_id, value, total)
            comfy.model_management.throw_exception_if_processing_interrupted()
            get_progress_state().update_progress(node_id, value, total, preview)

        comfy.utils.set_progress_bar_global_hook(hook)
        self._execution = execution
        self.executor = execution.PromptExecutor(
            self.server, cache_type=execution.CacheType.CLASSIC, cache_args={"lru": 0, "ram": 0}
        )

    def run(self, prompt: dict[str, Any]) -> PromptResult:
        """Validate and execute an API-format prompt; never raises for node errors."""
        prompt_id = str(uuid.uuid4())
        valid, error, outputs, node_errors = asyncio.run(self._execution.validate_prompt(prompt_id, prompt, None))
        if not valid:
            return PromptResult(False, [], {}, validation_error={"error": error, "node_errors": node_errors})
        self.executor.execute(prompt, prompt_id, {"client_id": "tests"}, outputs)
        cached = {}
        for node_id in prompt:
            entry = self.executor.caches.outputs.get(node_id)
            if entry is not None:
                cached[node_id] = entry.outputs
        return PromptResult(
            self.executor.success, list(self.executor.status_messages), self.executor.history_result, cached
        )
