"""The ``base`` field of an adapter file: which UNet architecture the adapter was made for."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: UNet configuration keys that decide whether an adapter's tensors can fit.
FINGERPRINT_KEYS: tuple[str, ...] = (
    "model_channels",
    "channel_mult",
    "num_res_blocks",
    "transformer_depth",
    "context_dim",
    "in_channels",
    "use_linear_in_transformer",
    "adm_in_channels",
)


class BaseMismatchError(ValueError):
    """An adapter made for another base architecture."""


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


def base_fingerprint(family: str, unet_config: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON-ready fingerprint: the model family name plus the UNet widths that matter."""
    out: dict[str, Any] = {"family": family}
    for key in FINGERPRINT_KEYS:
        if key in unet_config and unet_config[key] is not None:
            out[key] = _plain(unet_config[key])
    return out


def describe_base(base: Mapping[str, Any]) -> str:
    """Short human form, e.g. ``SD15 (model_channels 320, context_dim 768)``."""
    parts = [f"{k} {base[k]}" for k in ("model_channels", "context_dim", "channel_mult") if k in base]
    return (
        f"{base.get('family', 'unknown family')} ({', '.join(parts)})" if parts else str(base.get("family", "unknown"))
    )


def check_base(file_base: Mapping[str, Any] | None, model_base: Mapping[str, Any], what: str) -> None:
    """Raise :class:`BaseMismatchError` when ``file_base`` is given and differs from ``model_base``.

    Only keys present in both are compared, so files from newer versions with extra
    keys still load where the shared keys agree.
    """
    if not file_base:
        return
    differing = [k for k in file_base if k in model_base and _plain(file_base[k]) != _plain(model_base[k])]
    if differing:
        detail = ", ".join(f"{k}: file {file_base[k]!r} vs model {model_base[k]!r}" for k in differing[:4])
        raise BaseMismatchError(
            f"{what} was made for {describe_base(file_base)} but the MODEL is {describe_base(model_base)} ({detail})"
        )
