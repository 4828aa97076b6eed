"""Adapter state written the way other tools write it, for the import tests.

Only the layout is imitated (key names, shapes, what each tensor holds); the values are random.
"""

from __future__ import annotations

import torch

#: (layer, input width) of each attention projection in a 320-wide SD 1.x block; cross-attention
#: keys and values read the 768-wide text context.
SD15_FIRST_LEVEL_WIDTHS = {
    "attn1": (("to_q", 320), ("to_k", 320), ("to_v", 320), ("to_out", 320)),
    "attn2": (("to_q", 320), ("to_k", 768), ("to_v", 768), ("to_out", 320)),
}


def official_oft_dreambooth_state(
    diffusers_block: str, *, scale: float, seed: int, r: int = 4
) -> dict[str, torch.Tensor]:
    """A state dict as the official OFT DreamBooth script saves it for one transformer block.

    ``diffusers_block`` is the diffusers path of the attention module, e.g.
    ``"down_blocks.0.attentions.0"``; each projection gets a raw ``P`` of shape ``(r, k, k)``
    under ``<block>.transformer_blocks.0.<attn>.processor.<layer>_oft.R``, plus the processor's
    width buffers, which an importer must ignore.
    """
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for attn, layers in SD15_FIRST_LEVEL_WIDTHS.items():
        for layer, width in layers:
            prefix = f"{diffusers_block}.transformer_blocks.0.{attn}.processor.{layer}_oft"
            state[f"{prefix}.R"] = torch.randn(r, width // r, width // r, generator=g) * scale
            state[f"{prefix}.cross_attention_dim"] = torch.tensor(width)
            state[f"{prefix}.hidden_size"] = torch.tensor(320)
    return state
