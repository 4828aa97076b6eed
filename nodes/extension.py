"""The V3 extension object ComfyUI asks for: the list of TapTune nodes."""

from __future__ import annotations

from comfy_api.v0_0_2 import ComfyExtension, io

from .class_images import TapTuneClassImages
from .common import register_model_folder
from .export_job import TapTuneExportTrainingJob
from .image_folder import TapTuneLoadImageFolder
from .image_grid import TapTuneImageGrid
from .load_adapter import TapTuneAdapterInfo, TapTuneLoadAdapter
from .oft_interchange import TapTuneExportOFTAsLoRA, TapTuneImportOFT
from .pocket_model import TapTunePocketModel
from .save_adapter import TapTuneSaveAdapter
from .specs import spec_nodes
from .tap_import import TapTuneImportOfficialAdapters
from .train import TapTuneDreamBoothTrain
from .training_settings import TapTuneTrainingSettings

__all__ = ["TapTuneExtension", "node_classes", "register_model_folder"]


def node_classes() -> list[type[io.ComfyNode]]:
    """Every node of the pack. Node IDs are a public contract: never rename one that has shipped.

    The spec nodes come from the adapter-kind registry (one per kind that declares a spec form).
    """
    return [
        TapTuneLoadAdapter,
        TapTuneAdapterInfo,
        TapTuneImportOfficialAdapters,
        TapTuneImportOFT,
        TapTuneExportOFTAsLoRA,
        *spec_nodes(),
        TapTuneClassImages,
        TapTuneLoadImageFolder,
        TapTuneDreamBoothTrain,
        TapTuneTrainingSettings,
        TapTuneSaveAdapter,
        TapTuneImageGrid,
        TapTuneExportTrainingJob,
        TapTunePocketModel,
    ]


class TapTuneExtension(ComfyExtension):
    """Registers the TapTune nodes."""

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return node_classes()
