"""A real ComfyUI server with the pack, started as ``main.py`` in a subprocess, and its HTTP routes."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from devtools.comfy_host import COMFY_DIR, ROOT


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(port: int, path: str, payload: dict | None = None, timeout: float = 10.0):
    """GET (or POST ``payload`` as JSON to) ``path``; the JSON answer."""
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body = response.read()
    return json.loads(body) if body else None


def post_prompt(port: int, prompt: dict) -> dict:
    """POST /prompt; ComfyUI's answer, also when it refuses the whole prompt (HTTP 400)."""
    try:
        return call(port, "/prompt", {"prompt": prompt})
    except urllib.error.HTTPError as refused:
        return json.loads(refused.read())


def wait_for(port: int, prompt_id: str, limit: float = 180.0) -> dict:
    """The history entry of ``prompt_id`` once it completed (successfully or not)."""
    deadline = time.time() + limit
    while time.time() < deadline:
        history = call(port, f"/history/{prompt_id}")
        if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
            return history[prompt_id]
        time.sleep(0.3)
    raise AssertionError(f"prompt {prompt_id} did not finish in {limit} s")


def resident_bytes(pid: int) -> int:
    """The resident memory of process ``pid`` (Linux ``/proc``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def server_base(base: Path, checkpoint: Path) -> Path:
    """A ComfyUI base directory with this pack in custom_nodes/ and ``checkpoint`` in models/checkpoints/."""
    (base / "custom_nodes").mkdir(parents=True)
    (base / "custom_nodes" / "ComfyUI-TapTune").symlink_to(ROOT, target_is_directory=True)
    checkpoints = base / "models" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / checkpoint.name).symlink_to(checkpoint.resolve())
    (base / "models" / "adapters").mkdir(parents=True)
    return base


def wait_until_serving(port: int, process: subprocess.Popen, log_path: Path, seconds: float) -> None:
    """Return once the server on ``port`` answers; fail with its log's tail if it exits or ``seconds`` pass."""
    deadline = time.time() + seconds
    while True:
        try:
            call(port, "/system_stats", timeout=2)
            return
        except OSError:
            if process.poll() is not None or time.time() > deadline:
                raise AssertionError("server did not start:\n" + log_path.read_text()[-3000:]) from None
            time.sleep(1)


@contextlib.contextmanager
def running_server(
    base: Path, comfy_dir: Path = COMFY_DIR, env: dict[str, str] | None = None
) -> Iterator[tuple[int, subprocess.Popen]]:
    """``comfy_dir``'s ``main.py`` on the CPU over ``base`` (``env`` added to the environment); yields ``(port, process)`` once it answers."""
    port = free_port()
    log_path = base / "server.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                str(comfy_dir / "main.py"),
                "--cpu",
                "--listen",
                "127.0.0.1",
                "--port",
                str(port),
                "--base-directory",
                str(base),
                "--database-url",
                f"sqlite:///{base / 'comfyui.db'}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        try:
            wait_until_serving(port, process, log_path, 180)
            yield port, process
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
