"""How a test accepts a refusal of bad input: the pack's own error, or ComfyUI's validation first.

ComfyUI validates a prompt before it runs a node. Newer versions also check V3 combo values (an
adapter file name, a checkpoint name) against their options there, so a missing file is refused
by ComfyUI's validation (``value_not_in_list`` naming the input) before the pack's node can give
its own message. Both are a clear refusal that names the node and the input; which one a ComfyUI
gives is its choice, and these helpers accept exactly those two and nothing else.
"""

from __future__ import annotations

from typing import Any


def validation_refusal(node_errors: dict[str, Any], node_id: str, input_name: str) -> dict[str, Any] | None:
    """ComfyUI's validation error for ``input_name`` of node ``node_id`` in ``node_errors``, if any."""
    for error in node_errors.get(node_id, {}).get("errors", []):
        if error.get("extra_info", {}).get("input_name") == input_name:
            return error
    return None


def assert_pack_refusal(error: dict[str, Any] | None, node_type: str, input_name: str, expected: str) -> None:
    """``error`` (an ``execution_error`` message) is the pack's own, naming node, input and problem."""
    assert error is not None, "the prompt should have failed with the pack's error"
    assert error["node_type"] == node_type
    message = error["exception_message"]
    assert f"{node_type}: input '{input_name}'" in message, message
    assert expected in message, message
