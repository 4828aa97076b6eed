"""ComfyUI-TapTune: tap-point adapters and OFT/COFT for SD 1.x, SD 2.x and SDXL, trained in the graph.

ComfyUI finds ``comfy_entrypoint`` and registers the nodes through the V3 schema. Nothing
ComfyUI-specific is imported at package import time, so ``adapter_core`` stays usable
(and testable) as a plain PyTorch library.
"""

from __future__ import annotations

from typing import Any


async def comfy_entrypoint() -> Any:
    """ComfyUI's V3 entry point: registers the ``adapters`` model folder and returns the extension."""
    from .nodes.extension import TapTuneExtension, register_model_folder

    register_model_folder()
    return TapTuneExtension()


#: The front end serves ``web/docs/<NodeID>/en.md`` as each node's help page.
WEB_DIRECTORY = "./web"
