"""Every one of the paper's 20 tap-point pairs, on a stock-loaded SD 1.x checkpoint, against the specification (§1).

Adapter files are written independently (safetensors + json), loaded through the
``TapTuneLoadAdapter`` node, and the patched UNet's output is compared with the base
UNet whose blocks are recomputed by the reference (tests/host/reference.py).
"""

from __future__ import annotations

import comfy.model_management
import pytest
import torch
from comfy.ldm.modules.attention import BasicTransformerBlock
from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock

from taptune.adapter_core import PAPER_PAIRS
from taptune.nodes.load_adapter import TapTuneLoadAdapter

from .reference import adapter_fn, random_tap_tensors, reference_hooks, write_tap_file
from .unet_io import fixed_inputs, raw_output, relative_error, unet_output

METHODS = ["relu", "sig", "silu", "ident", "default"]


def blocks_of(unet, kind):
    cls = BasicTransformerBlock if kind == "transformer" else ResBlock
    return [(path, m) for path, m in unet.named_modules() if type(m) is cls]


def widths(kind, block, din, dout):
    if kind == "transformer":
        d = block.attn1.to_q.in_features
        ctx = block.attn2.to_k.in_features
        return (ctx if din == "attn2c" else d), (ctx if dout == "attn2c" else d)
    pick = {"resi": block.channels, "reso": block.out_channels}
    return pick[din], pick[dout]


@pytest.mark.parametrize("pair", PAPER_PAIRS, ids=[f"{a}-{b}" for a, b in PAPER_PAIRS])
def test_pair_matches_reference(pair, sd15, adapters_dir):
    model = sd15[0]
    din, dout = pair
    kind = "resblock" if din.startswith("res") else "transformer"
    index = PAPER_PAIRS.index(pair)
    method, scale, strength, mid = METHODS[index % len(METHODS)], [1.0, 0.5, 2.0][index % 3], 0.8, 12 + index
    comfy.model_management.load_models_gpu([model])
    unet = model.model.diffusion_model
    g = torch.Generator().manual_seed(100 + index)
    tensors, plan, modules = {}, {}, []
    for path, block in blocks_of(unet, kind):
        d_in, d_out = widths(kind, block, din, dout)
        t = random_tap_tensors(kind, d_in, d_out, mid, g)
        tensors.update({f"{path}.{k}": v for k, v in t.items()})
        plan[path] = [(din, dout, scale * strength, adapter_fn(t, method))]
        modules.append(path)
    assert modules, f"the test model has no {kind} blocks"
    group = {"din": din, "dout": dout, "mid_dim": mid, "method": method, "scale": scale, "modules": modules}
    write_tap_file(adapters_dir / "pair.safetensors", [group], tensors)

    (patched,) = TapTuneLoadAdapter.execute(model, "pair.safetensors", strength).args
    x, sigma, ctx, _ = fixed_inputs(768, seed=index)
    ours = unet_output(patched, x, sigma, ctx)
    base = unet_output(model, x, sigma, ctx)
    with reference_hooks(model, plan):
        expected = raw_output(model, x, sigma, ctx)

    effect = (expected - base).norm()
    assert effect / base.norm() > 1e-3, "the reference adapter must visibly change the output"
    assert relative_error(ours, expected) < 1e-5
    assert float((ours - expected).norm() / effect) < 1e-3  # within 0.1 % of the adapter's own effect
    # The base MODEL is untouched by all of this.
    assert torch.equal(unet_output(model, x, sigma, ctx), base)
