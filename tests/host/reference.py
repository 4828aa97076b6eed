"""Reference computations written from docs/specification.md, independent of the code under test.

Nothing here imports the pack: adapter files are written with ``safetensors`` and
``json`` only, and the adapted blocks are recomputed position by position from the
table of specification §1.1 (and rotations from §2.1-§2.2).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "default": F.relu,
    "sig": torch.sigmoid,
    "silu": F.silu,
    "ident": lambda h: h,
}


def write_tap_file(path: Any, groups: list[dict[str, Any]], tensors: dict[str, torch.Tensor], **extra: Any) -> None:
    """A ``taptune/1`` tap file, written the way a third party would: safetensors + json."""
    header = {"format": "taptune/1", "kind": "tap", "adapters": groups, **extra}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"taptune": json.dumps(header)})


def random_tap_tensors(
    kind: str, d_in: int, d_out: int, mid: int, generator: torch.Generator, std: float = 0.05
) -> dict[str, torch.Tensor]:
    """Random adapter tensors in the file layout (``tap.down.weight`` ...)."""

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * std

    if kind == "transformer":
        return {
            "tap.down.weight": rnd(mid, d_in),
            "tap.down.bias": rnd(mid),
            "tap.up.weight": rnd(d_out, mid),
            "tap.up.bias": rnd(d_out),
        }
    return {
        "tap.norm.weight": 1.0 + rnd(d_in),
        "tap.norm.bias": rnd(d_in),
        "tap.down.weight": rnd(mid, d_in, 3, 3),
        "tap.down.bias": rnd(mid),
        "tap.up.weight": rnd(d_out, mid, 3, 3),
        "tap.up.bias": rnd(d_out),
    }


def adapter_fn(tensors: dict[str, torch.Tensor], method: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``A(h) = up(act(down(h)))`` (ResBlock form: GroupNorm(32, fp32) -> SiLU -> conv -> act -> conv)."""
    act = ACTIVATIONS[method]
    if "tap.norm.weight" in tensors:

        def conv_adapter(h: torch.Tensor) -> torch.Tensor:
            z = F.group_norm(h.float(), 32, tensors["tap.norm.weight"], tensors["tap.norm.bias"], 1e-5).to(h.dtype)
            z = F.silu(z)
            z = F.conv2d(z, tensors["tap.down.weight"], tensors["tap.down.bias"], padding=1)
            return F.conv2d(act(z), tensors["tap.up.weight"], tensors["tap.up.bias"], padding=1)

        return conv_adapter

    def linear_adapter(h: torch.Tensor) -> torch.Tensor:
        z = act(F.linear(h, tensors["tap.down.weight"], tensors["tap.down.bias"]))
        return F.linear(z, tensors["tap.up.weight"], tensors["tap.up.bias"])

    return linear_adapter


def transformer_reference(block: Any, x: torch.Tensor, ctx: torch.Tensor, taps: list[tuple]) -> torch.Tensor:
    """A BasicTransformerBlock with tap adapters, from the table of specification §1.1.

    ``taps``: ``(din, dout, coefficient, A)``; at each position all reads happen before writes.
    """
    reads: dict[int, torch.Tensor] = {}

    def at(position: str, value: torch.Tensor) -> torch.Tensor:
        for i, (din, _, _, _) in enumerate(taps):
            if din == position:
                reads[i] = value
        for i, (_, dout, coefficient, fn) in enumerate(taps):
            if dout == position:
                value = value + coefficient * fn(reads[i])
        return value

    attn1i = at("attn1i", x)
    attn1o = at("attn1o", block.attn1(block.norm1(attn1i)))
    attn2i = at("attn2i", attn1i + attn1o)
    attn2c = at("attn2c", ctx)
    attn2o = at("attn2o", block.attn2(block.norm2(attn2i), context=attn2c))
    ffni = at("ffni", attn2i + attn2o)
    ffno = at("ffno", block.ff(block.norm3(ffni)))
    return at("transo", ffni + ffno)


def resblock_reference(block: Any, x: torch.Tensor, emb: torch.Tensor, taps: list[tuple]) -> torch.Tensor:
    """A ResBlock with tap adapters: ``resi`` is its input, ``reso`` its output ``skip(x) + F(x, emb)``."""
    reads: dict[int, torch.Tensor] = {}
    for i, (din, _, _, _) in enumerate(taps):
        if din == "resi":
            reads[i] = x
    for i, (_, dout, coefficient, fn) in enumerate(taps):
        if dout == "resi":
            x = x + coefficient * fn(reads[i])
    out = block._forward(x, emb)  # skip(x) + F(x, emb), ComfyUI's own ResBlock computation
    for i, (din, _, _, _) in enumerate(taps):
        if din == "reso":
            reads[i] = out
    for i, (_, dout, coefficient, fn) in enumerate(taps):
        if dout == "reso":
            out = out + coefficient * fn(reads[i])
    return out


@contextmanager
def reference_hooks(model: Any, plan: dict[str, list[tuple]]):
    """Load ``model`` (a ComfyUI MODEL) and replace the outputs of the named blocks of its UNet by
    their reference computation (forward hooks), for as long as the context lasts."""
    import comfy.model_management

    comfy.model_management.load_models_gpu([model])
    unet = model.model.diffusion_model
    handles = []
    for path, taps in plan.items():
        block = unet.get_submodule(path)

        if hasattr(block, "in_layers"):

            def hook(module, args, output, taps=taps):
                return resblock_reference(module, args[0], args[1], taps)

            handles.append(block.register_forward_hook(hook))
        else:

            def hook_kw(module, args, kwargs, output, taps=taps):
                x = args[0]
                ctx = kwargs.get("context", args[1] if len(args) > 1 else None)
                return transformer_reference(module, x, ctx, taps)

            handles.append(block.register_forward_hook(hook_kw, with_kwargs=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def cayley_rotation(S: torch.Tensor) -> torch.Tensor:
    """``R = (I - S)(I + S)^-1`` for one block (specification §2.2), in float64."""
    S = S.double()
    eye = torch.eye(S.shape[-1], dtype=S.dtype)
    return (eye - S) @ torch.linalg.inv(eye + S)


def rotated_weight(W: torch.Tensor, S_blocks: torch.Tensor, shared_r: int | None = None) -> torch.Tensor:
    """``W R^T`` with ``R`` the dense block-diagonal matrix of the blocks (float64)."""
    blocks = [cayley_rotation(S_blocks)] * shared_r if shared_r else [cayley_rotation(s) for s in S_blocks]
    R = torch.block_diag(*blocks)
    return W.double() @ R.T
