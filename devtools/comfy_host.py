"""A real ComfyUI, in this process: import it, register the pack, run prompts.

Used by the tests, the benchmarks and the demo. Prompts run through ComfyUI's own
``PromptExecutor`` (validation, caching, progress, errors, interrupts), as ``main.py``'s
worker runs them; only the websocket server is replaced by a recorder.

Which ComfyUI: the folder named by the environment variable ``COMFYUI_DIR`` when it is set
(``make test COMFYUI_DIR=/path/to/ComfyUI PYTHON=/path/to/python``; that interpreter's
environment must run that ComfyUI), otherwise the development host ``.host/ComfyUI`` that
``make host`` builds. One code path serves every ComfyUI version: where versions differ,
the harness detects the feature (never the version number); each ComfyUI behaviour relied
on is named in a comment.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import os
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: The development host built by ``make host`` (``devtools/host.sh``).
BUILT_COMFY_DIR = ROOT / ".host" / "ComfyUI"


def comfy_dir() -> Path:
    """The ComfyUI in use: ``$COMFYUI_DIR`` if set (and not empty), else the built development host."""
    configured = os.environ.get("COMFYUI_DIR", "").strip()
    return Path(configured).expanduser().resolve() if configured else BUILT_COMFY_DIR


COMFY_DIR = comfy_dir()
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


def prepared_base() -> str | None:
    """The base directory ComfyUI was prepared with in this process, or None if it was not."""
    return _prepared.get("base")


def prepare_comfy(base_directory: str | os.PathLike[str], cpu: bool = True) -> None:
    """Make ComfyUI importable with its folders under ``base_directory``; once per process."""
    if _prepared:
        if _prepared["base"] != str(base_directory):
            raise RuntimeError(f"ComfyUI was already prepared with base {_prepared['base']}")
        return
    if not (COMFY_DIR / "main.py").exists():
        hint = "check COMFYUI_DIR" if COMFY_DIR != BUILT_COMFY_DIR else "run `make host`"
        raise RuntimeError(f"no ComfyUI in {COMFY_DIR}: {hint}")
    sys.path.insert(0, str(COMFY_DIR))
    # ComfyUI parses no command line when imported as a library (comfy.options' default), so
    # `args` holds the defaults and is set here, as main.py's command line would set it.
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

    # `init_extra_nodes(init_custom_nodes, init_api_nodes)` loads comfy_extras (every version);
    # custom nodes are registered below instead, from this repository.
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    asyncio.run(_register_pack(nodes, import_pack()))
    _prepared["nodes"] = True


async def _register_pack(nodes: ModuleType, pack: ModuleType) -> None:
    # What ComfyUI's custom-node loader (nodes.load_custom_node) does with a V3 entry point:
    # await `comfy_entrypoint()`, then (newer versions) `await extension.on_load()`, then
    # register each class of `await extension.get_node_list()` under its schema's node_id,
    # with RELATIVE_PYTHON_MODULE "custom_nodes.<module>" and the schema's display name.
    extension = await pack.comfy_entrypoint()
    on_load = getattr(extension, "on_load", None)
    if on_load is not None:  # older loaders never call it; the base class's is a no-op
        await on_load()
    for node_cls in await extension.get_node_list():
        schema = node_cls.GET_SCHEMA()
        nodes.NODE_CLASS_MAPPINGS[schema.node_id] = node_cls
        node_cls.RELATIVE_PYTHON_MODULE = f"custom_nodes.{PACK_MODULE}"
        if schema.display_name:
            nodes.NODE_DISPLAY_NAME_MAPPINGS[schema.node_id] = schema.display_name


class RecordingServer:
    """What ``PromptExecutor`` needs of ComfyUI's server, recording every message it sends.

    The executor and its progress handler use ``client_id``, ``last_node_id``,
    ``last_prompt_id``, ``sockets_metadata`` (feature flags per client: none here),
    ``send_sync`` and ``queue_updated`` (the same in every version with V3 nodes).
    """

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
    #: Validation errors by node id, also when the prompt still ran (ComfyUI runs the outputs
    #: that passed validation and drops the others, as its /prompt route answers node_errors).
    validation_node_errors: dict[str, Any] = field(default_factory=dict)

    def error(self) -> dict[str, Any] | None:
        """The ``execution_error`` message, if any."""
        for event, data in self.status:
            if event == "execution_error":
                return data
        return None

    def node_errors(self, node_id: str) -> list[dict[str, Any]]:
        """ComfyUI's validation errors for ``node_id`` (``[]`` if it passed validation).

        Each is ``{"type", "message", "details", "extra_info": {"input_name", ...}}``. Newer
        ComfyUI also checks V3 combo values against their options here (type
        ``value_not_in_list``), before any node runs; older ones leave that to the node.
        """
        return self.validation_node_errors.get(node_id, {}).get("errors", [])

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
            # What main.py's progress hook (hijack_progress) does, minus the websocket: the node
            # comes from the executing context when the caller names none; Cancel raises
            # InterruptProcessingException here; the progress registry gets the update.
            context = get_executing_context()
            if node_id is None and context is not None:
                node_id = context.node_id
            self.progress.append((node_id, value, total, preview))
            if self.on_progress is not None:
                self.on_progress(node_id, value, total)
            comfy.model_management.throw_exception_if_processing_interrupted()
            get_progress_state().update_progress(node_id, value, total, preview)

        # comfy.utils.ProgressBar calls the global hook set here (every ComfyUI version).
        comfy.utils.set_progress_bar_global_hook(hook)
        # Newer ComfyUI throttles ProgressBar updates (at most one per
        # PROGRESS_THROTTLE_MIN_INTERVAL seconds and PROGRESS_THROTTLE_MIN_PERCENT percent, except
        # the first, the last and those with a preview); older ones send every update. The
        # recorder wants every update, so that tests see each step whatever the machine's speed:
        # where the throttle exists, it is opened.
        for name in ("PROGRESS_THROTTLE_MIN_INTERVAL", "PROGRESS_THROTTLE_MIN_PERCENT"):
            if hasattr(comfy.utils, name):
                setattr(comfy.utils, name, 0)
        self._execution = execution
        # The classic cache (outputs of the last prompt only), as `main.py --cache-classic`.
        # `cache_args` carries every key any version reads: "lru" (LRU cache size), "ram"
        # (older versions poll it after each node; newer ones read it unconditionally in
        # execute_async) and "ram_inactive" (newer versions read it unconditionally in
        # execute_async; a KeyError without it). Extra keys are ignored by versions that do not
        # read them (they use cache_args.get / index only what they know).
        self.executor = execution.PromptExecutor(
            self.server,
            cache_type=execution.CacheType.CLASSIC,
            cache_args={"lru": 0, "ram": 0, "ram_inactive": 0},
        )

    def validate(self, prompt: dict[str, Any]) -> tuple[bool, Any, dict[str, Any]]:
        """ComfyUI's validation of an API prompt without running it: ``(valid, error, node_errors)``."""

        async def check() -> tuple[bool, Any, dict[str, Any]]:
            valid, error, _outputs, node_errors = await self._execution.validate_prompt(str(uuid.uuid4()), prompt, None)
            return valid, error, node_errors

        return asyncio.run(check())

    def run(self, prompt: dict[str, Any]) -> PromptResult:
        """Validate and execute an API-format prompt; never raises for node errors."""
        return asyncio.run(self._run(str(uuid.uuid4()), prompt))

    async def _run(self, prompt_id: str, prompt: dict[str, Any]) -> PromptResult:
        # One event loop for validation, execution and reading the results, as main.py's
        # worker does. `validate_prompt(prompt_id, prompt, partial_execution_list)` is a
        # coroutine returning (valid, error, outputs, node_errors) in every version with V3 nodes.
        valid, error, outputs, node_errors = await self._execution.validate_prompt(prompt_id, prompt, None)
        if not valid:
            return PromptResult(
                False,
                [],
                {},
                validation_error={"error": error, "node_errors": node_errors},
                validation_node_errors=node_errors,
            )
        # `PromptExecutor.execute` is `asyncio.run(execute_async(...))` in every version;
        # awaiting `execute_async` keeps one loop.
        await self.executor.execute_async(prompt, prompt_id, {"client_id": "tests"}, outputs)
        cached = {}
        for node_id in prompt:
            # The output cache's `get(node_id)` returns a CacheEntry(ui, outputs) or None;
            # newer versions made it a coroutine (cache providers may be consulted).
            entry = self.executor.caches.outputs.get(node_id)
            if inspect.isawaitable(entry):
                entry = await entry
            if entry is not None:
                cached[node_id] = entry.outputs
        # After execute_async: `success`, `status_messages` ((event, data) pairs, as the
        # history's status "messages") and `history_result` ({"outputs", "meta"}), every version.
        return PromptResult(
            self.executor.success,
            list(self.executor.status_messages),
            self.executor.history_result,
            cached,
            validation_node_errors=node_errors,
        )
