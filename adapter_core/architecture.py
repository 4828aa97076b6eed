"""The ``base`` field of an adapter file: the signature of the UNet architecture it was made for.

A signature is the model family's name plus the UNet configuration values that decide whether
an adapter's tensors fit (widths, depths, context size). Loading refuses a file whose recorded
signature disagrees with the MODEL's, naming both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import ArchitectureMismatchError

#: UNet configuration keys that decide whether an adapter's tensors can fit.
SIGNATURE_KEYS: tuple[str, ...] = (
    "model_channels",
    "channel_mult",
    "num_res_blocks",
    "transformer_depth",
    "context_dim",
    "in_channels",
    "use_linear_in_transformer",
    "adm_in_channels",
)


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


def architecture_signature(family: str, unet_config: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON-ready signature: the model family name plus the UNet widths that matter."""
    out: dict[str, Any] = {"family": family}
    for key in SIGNATURE_KEYS:
        if key in unet_config and unet_config[key] is not None:
            out[key] = _plain(unet_config[key])
    return out


def describe_architecture(signature: Mapping[str, Any]) -> str:
    """Short human form, e.g. ``SD15 (model_channels 320, context_dim 768)``."""
    parts = [
        f"{k} {str(signature[k])[:40]}" for k in ("model_channels", "context_dim", "channel_mult") if k in signature
    ]
    family = str(signature.get("family", "unknown family"))[:40]
    return f"{family} ({', '.join(parts)})" if parts else family


def check_architecture(recorded: Mapping[str, Any] | None, model: Mapping[str, Any], what: str) -> None:
    """Raise :class:`ArchitectureMismatchError` when ``recorded`` is given and differs from ``model``.

    Only keys present in both are compared, so files from newer versions with extra
    keys still load where the shared keys agree.
    """
    if not recorded:
        return
    differing = [k for k in recorded if k in model and _plain(recorded[k]) != _plain(model[k])]
    if differing:
        detail = ", ".join(f"{k}: file {str(recorded[k])[:40]} vs model {model[k]!r}" for k in differing[:4])
        raise ArchitectureMismatchError(
            f"{what} was made for {describe_architecture(recorded)} but the MODEL is "
            f"{describe_architecture(model)} ({detail})"
        )
