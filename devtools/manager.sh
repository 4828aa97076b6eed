#!/usr/bin/env bash
# ComfyUI-Manager's command line (comfyui-manager from PyPI, pinned in devtools/manager-requirements.txt)
# for tests/host/test_manager_install.py, in its own folder (.host/manager-site, pip --target) so that
# its dependencies never mix with ComfyUI's environment. Idempotent; the test fails saying why if missing.
set -uo pipefail
PY="${1:-.venv/bin/python}"
SITE=".host/manager-site"
STAMP="$SITE/.requirements"
if [ -d "$SITE/cm_cli" ] && cmp -s devtools/manager-requirements.txt "$STAMP"; then
    exit 0
fi
echo "[manager] installing comfyui-manager into $SITE"
rm -rf "$SITE"
if "$PY" -m pip install --quiet --disable-pip-version-check --target "$SITE" -r devtools/manager-requirements.txt; then
    cp devtools/manager-requirements.txt "$STAMP"
else
    echo "[manager] pip could not install comfyui-manager: the Manager install test will fail saying so"
fi
exit 0
