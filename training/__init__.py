"""In-graph DreamBooth training of TapTune adapters (tap-point or OFT) on a ComfyUI MODEL.

This package owns the loop: data preparation and caching, the prior-preservation
objective, optimisation, checkpoints, previews and cancellation. It talks to ComfyUI
through the MODEL / CLIP / VAE objects it is given and ComfyUI's model management and
sampler; the adapters come from ``adapter_core`` and are installed by ``patching``.
"""
